#!/usr/bin/env bash
# The CUDA checks of lpl in one pass, for a GPU machine that has torch 2.11 in its python3
# but no Rust toolchain and no network:
#
#   scripts/gpu-check.sh --prepare   # here: build the binaries, a 10k-latent Fashion-MNIST
#                                    # cache (test split) and a pydeps tarball into target/gpu
#   scripts/gpu-check.sh             # there (target/gpu carried): writes results to $OUT
#
# Checks: `lpl doctor`; the shim's tests on CUDA (bf16 autocast, TF32, allocator peak);
# `lpl train` on CUDA in f32 (TF32) and bf16, MSE and MSE + LPL, for DiT-mini and DiT-B/2 on
# 8x8x4 latents, with sample grids; sampling throughput; the training-step bench (ours vs
# PyTorch eager, f32 and bf16, DiT-mini / S/2 / B/2, peak memory); NCCL: the c10d tests on
# the GPU and the step in a process group of one against none (the engine's overhead).
set -u
cd "$(dirname "$0")/.."
G=target/gpu

if [ "${1:-}" = "--prepare" ]; then
    set -e
    cargo build --release --bin lpl
    cargo bench --no-run -p lpl-trainer --bench train_step 2>&1 | tail -1
    cargo bench --no-run -p lpl-trainer --bench distributed 2>&1 | tail -1
    mkdir -p "$G"
    cp target/release/lpl "$G/lpl"
    cp "$(ls -t target/release/deps/train_step-* | grep -v '\.d$' | head -1)" "$G/train_step"
    cp "$(ls -t target/release/deps/distributed-* | grep -v '\.d$' | head -1)" "$G/distributed"
    cargo test --no-run -p lpl-torch-ext --test c10d 2>&1 | tail -1
    cp "$(ls -t target/debug/deps/c10d-* | grep -v '\.d$' | head -1)" "$G/torch_ext_c10d"
    cargo test --no-run -p lpl-torch-ext --test autocast 2>&1 | tail -1
    cp "$(ls -t target/debug/deps/autocast-* | grep -v '\.d$' | head -1)" "$G/torch_ext_autocast"
    ae=${AE:-runs/ablate-default/ae/autoencoder.safetensors}
    cp "$ae" "$G/ae.safetensors"
    [ -d "$G/cache-test" ] || target/release/lpl cache --ae "$G/ae.safetensors" --split test \
        --pad-to 32 --out "$G/cache-test" --device cpu
    if [ ! -f "$G/pydeps.tar.xz" ]; then # diffusers for the PyTorch column (not in the image)
        site=$(dirname "$(readlink -f "${LIBTORCH:-.libtorch}")") # the torch install's site-packages
        (cd "$site" && tar -cJf - --exclude=__pycache__ diffusers diffusers-*.dist-info \
            importlib_metadata importlib_metadata-*.dist-info) > "$G/pydeps.tar.xz"
    fi
    du -sh "$G"
    exit 0
fi

OUT=${OUT:-/tmp/lpl-gpu-check}
mkdir -p "$OUT"
TORCH=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
export LD_LIBRARY_PATH="$TORCH/lib"
export LIBTORCH="$TORCH"
export LPL_TORCH_PYTHON=$(command -v python3)
export LPL_BENCH_OUT="$OUT"
export RUST_LOG=warn
DEVICE=${DEVICE:-cuda}   # DEVICE=cpu QUICK=1: a dry run of this script on a CPU machine
QUICK=${QUICK:-0}
STAGES=${STAGES:-"doctor tests train sample bench nccl"} # e.g. STAGES=bench for the bench alone
want() { [[ " $STAGES " == *" $1 "* ]]; }
stage() { echo; echo "=== $1 ($(date +%T))"; }
now() { date +%s.%N; }
since() { python3 -c "print(round($(now) - $1, 1))"; }

stage "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__)'

stage "lpl doctor"
$G/lpl doctor 2>&1 | tee "$OUT/doctor.txt"

if want tests; then

stage "lpl-torch-ext tests on CUDA"
timeout 120 $G/torch_ext_autocast --test-threads 1 2>&1 | tail -12
fi

if want train; then
stage "lpl train on CUDA"
rm -rf /tmp/lpl-gpu-runs
run() { # name preset compute steps batch lpl
    # checkpoints stay outside $OUT (DiT-B/2's are GBs); metrics and grids are copied there
    local dir="/tmp/lpl-gpu-runs/$1" cfg="$OUT/$1.toml"
    local lpl=""
    [ "$6" = lpl ] && lpl='[loss.lpl]
norm = "pred_stats"
mask = true
mask_source = "target"
layer_weights = "inverse_upscale"
spatial_reduce = "masked_mean"
distance = "l2"
gate = { kind = "snr", tau = 3.0 }
batch_reduce = "kept"
post_quant_conv = true
weight = 1.0'
    cat > "$cfg" <<CFG
output_dir = "$dir"
autoencoder = "$G/ae.safetensors"
[data]
cache = "$G/cache-test"
[model]
preset = "$2"
class_dropout_prob = 0.1
[diffusion]
schedule_preset = "dit"
parameterization = "eps"
$lpl
[optim]
lr = 1e-3
warmup_steps = 100
[train]
steps = $4
batch_size = $5
log_every = 50
seed = 0
[ema]
decay = 0.999
warmup = true
[precision]
compute = "$3"
[sample]
sampler = { sampler = "ddim", steps = 50 }
guidance = { scale = 2.0 }
count = 100
CFG
    local t0=$(now) steps=$4
    [ "$QUICK" = 1 ] && steps=20
    timeout 150 $G/lpl train --config "$cfg" --device "$DEVICE" --steps $steps > "$OUT/$1.log" 2>&1
    local rc=$?
    local last=$(tail -1 "$dir/metrics.jsonl" 2>/dev/null)
    echo "$1: rc $rc, $(since $t0) s wall; last: $last"
    mkdir -p "$OUT/runs/$1" && cp -r "$dir/metrics.jsonl" "$dir/grids" "$OUT/runs/$1/" 2>/dev/null
    [ $rc -ne 0 ] && tail -5 "$OUT/$1.log"
}
run mini-f32 dit-mini f32 600 128 mse
run mini-bf16 dit-mini bf16 600 128 mse
run mini-bf16-lpl dit-mini bf16 600 128 lpl
if [ "$QUICK" != 1 ]; then
    run b2-f32 dit-b-2 f32 200 256 mse
    run b2-bf16 dit-b-2 bf16 200 256 mse
    run b2-bf16-lpl dit-b-2 bf16 200 256 lpl
fi
ls "$OUT"/runs/*/grids/*.png
fi

if want sample; then
stage "sampling throughput (EMA DiT-mini, DDIM 50, guidance 2, 1000 images)"
t0=$(now)
count=1000
[ "$QUICK" = 1 ] && count=20
timeout 120 $G/lpl sample --run /tmp/lpl-gpu-runs/mini-bf16 --count $count --steps 50 --guidance 2 \
    --out "$OUT/sample-$count.png" --device "$DEVICE" > "$OUT/sample.log" 2>&1
echo "rc $?, $(since $t0) s wall incl. start-up"
fi

if want bench; then
stage "training-step bench"
if ! python3 -c 'import diffusers' 2>/dev/null && [ -f "$G/pydeps.tar.xz" ]; then
    # diffusers and what the CUDA image lacks (importlib_metadata); the rest is the machine's
    mkdir -p /tmp/pydeps && tar -xJf "$G/pydeps.tar.xz" -C /tmp/pydeps
    export PYTHONPATH=/tmp/pydeps
fi
python3 -c 'import diffusers; print("diffusers", diffusers.__version__)' 2>&1 | tail -1
[ "$QUICK" = 1 ] && BENCH_TIMEOUT=1
timeout "${BENCH_TIMEOUT:-300}" $G/train_step --device cuda --steps 10 --precision all 2>&1 | tee "$OUT/bench.txt"
fi
if want nccl; then
stage "NCCL: c10d tests on the GPU, a process group of one against none"
timeout 120 $G/torch_ext_c10d --test-threads 1 2>&1 | tail -8
[ "$QUICK" = 1 ] && DIST="--steps 2 --rounds 1" || DIST="--steps 10 --rounds 3"
for m in "dit-mini --batch 128" "dit-b-2 --batch 64"; do
    timeout 240 $G/distributed --device "$DEVICE" --model $m $DIST 2>&1 | tee -a "$OUT/distributed.txt"
done
fi
[ -d "$OUT/runs" ] && tar -cf "$OUT/runs.tar" -C "$OUT" runs $(cd "$OUT" && ls *.log *.toml *.png 2>/dev/null) && rm -rf "$OUT/runs" "$OUT"/*.log "$OUT"/*.toml "$OUT"/*.png
stage "done"
