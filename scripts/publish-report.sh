#!/usr/bin/env bash
# Copies an ablation's report into the repository's docs: report.md/.html, results.csv/.json,
# the plots and the first seed's sample grids, flattened into one directory (report.md's
# links rewritten to match; report.html has every image inlined already).
#
#   scripts/publish-report.sh runs/ablate-default docs/ablation-default
set -euo pipefail
run=${1:?usage: publish-report.sh RUN_DIR DOCS_DIR}
out=${2:?usage: publish-report.sh RUN_DIR DOCS_DIR}
mkdir -p "$out"
rm -f "$out"/*.png
cp "$run"/report.html "$run"/results.csv "$run"/results.json "$out"/
cp "$run"/plots/*.png "$out"/
md=$(cat "$run"/report.md)
md=${md//](plots\//](}
for grid in "$run"/*/seed0/*/samples.png; do
  rel=${grid#"$run"/}                      # eps/seed0/mse/samples.png
  param=${rel%%/*}
  arm=$(basename "$(dirname "$rel")")
  cp "$grid" "$out/samples-$param-$arm.png"
  md=${md//"]($rel)"/"](samples-$param-$arm.png)"}
done
printf '%s\n' "$md" > "$out"/report.md
echo "published $run -> $out"
