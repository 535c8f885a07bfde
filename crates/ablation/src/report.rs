//! The ablation's report: `results.json` and `results.csv` (every arm and seed),
//! `report.md` and a self-contained `report.html` (images inlined, opens offline) with the
//! table (mean +- std over seeds, relative change, per-seed values, a paired verdict on the
//! sign of the effect, the command reproducing each row), spectrum plots per
//! parameterisation, loss curves, and sample grids.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use lpl_metrics::{LinePlot, Series};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use lpl_trainer::calibration::Calibration;

use crate::config::AblationConfig;
use crate::control::{Control, control_flags};
use crate::driver::{ArmResult, Ceiling};
use crate::error::{AblationError, Result};
use crate::provenance::Provenance;
use crate::stats::{MDE_POWER, mean_std, power_statement, significant, verdict_of};

/// What a report shows besides the arms' results: the autoencoder's ceiling and the weight
/// calibrations `(parameterisation, arm, calibration)`.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Reconstructions of the real evaluation images against them.
    pub ceiling: Option<Ceiling>,
    /// The calibrated weights.
    pub calibrations: Vec<(String, String, Calibration)>,
}

/// A section of the report below the main table: a title, paragraphs, a table.
#[derive(Debug, Clone, Default)]
struct Section {
    title: String,
    text: Vec<String>,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Section {
    fn markdown(&self) -> String {
        let mut md = format!("\n## {}\n\n", self.title);
        for t in &self.text {
            md += &format!("{t}\n\n");
        }
        if !self.header.is_empty() {
            md += &format!(
                "| {} |\n|{}\n",
                self.header.join(" | "),
                "---|".repeat(self.header.len())
            );
            for r in &self.rows {
                md += &format!("| {} |\n", r.join(" | "));
            }
        }
        md
    }

    fn html(&self) -> String {
        let mut h = format!("<h2>{}</h2>\n", html_escape(&self.title));
        for t in &self.text {
            let _ = writeln!(h, "<p>{}</p>", html_escape(t));
        }
        if !self.header.is_empty() {
            h += "<table><tr>";
            for c in &self.header {
                let _ = write!(h, "<th>{}</th>", html_escape(c));
            }
            h += "</tr>\n";
            for r in &self.rows {
                h += "<tr>";
                for c in r {
                    let _ = write!(h, "<td>{}</td>", html_escape(c));
                }
                h += "</tr>\n";
            }
            h += "</table>\n";
        }
        h
    }
}

/// The provenance part of a report: the invocation's own, as (field, value) lines, and one
/// warning per arm that was made differently (another commit, machine, thread count or
/// input), so a reader sees at the top which numbers are comparable.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvenanceSummary {
    /// (field, value) of the current invocation.
    pub fields: Vec<(String, String)>,
    /// `"<parameterisation> seed <s> <arm>: <field>: ours vs theirs; ..."`, one per arm.
    pub warnings: Vec<String>,
    /// The same, one line per distinct difference with the arms it concerns (`every arm
    /// (N)` when it concerns all): what the report shows.
    pub grouped: Vec<String>,
}

/// One line per distinct difference in `per_arm` `(arm, difference)`, naming its arms, or
/// `every arm (N)` when it concerns all `total` of them: a report re-rendered at a later
/// commit names the commit once, not once per arm.
fn group_warnings(per_arm: &[(String, String)], total: usize) -> Vec<String> {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (what, difference) in per_arm {
        match groups.iter_mut().find(|(d, _)| d == difference) {
            Some((_, arms)) => arms.push(what),
            None => groups.push((difference, vec![what])),
        }
    }
    groups
        .into_iter()
        .map(|(difference, arms)| {
            if arms.len() == total && total > 1 {
                format!("every arm ({total}): {difference}")
            } else {
                format!("{}: {difference}", arms.join(", "))
            }
        })
        .collect()
}

impl ProvenanceSummary {
    /// Compares every arm's recorded provenance with `current`.
    pub fn new(current: &Provenance, results: &[ArmResult]) -> Self {
        let mut fields = vec![
            ("commit".to_string(), current.commit.clone()),
            (
                "uncommitted changes".to_string(),
                current
                    .dirty
                    .map_or("unknown".to_string(), |d| if d { "yes" } else { "no" }.into()),
            ),
            ("libtorch".to_string(), current.libtorch.clone()),
            ("CPU".to_string(), current.cpu.clone()),
            ("ATen CPU capability".to_string(), current.aten_cpu_capability.clone()),
            ("MKL".to_string(), current.mkl.clone()),
            ("threads".to_string(), current.threads.to_string()),
            ("device".to_string(), current.device.clone()),
        ];
        fields.extend(current.inputs.iter().map(|(k, v)| (format!("sha256 {k}"), v.clone())));
        let per_arm: Vec<(String, String)> = results
            .iter()
            .filter_map(|r| {
                let what = format!("{} seed {} {}", r.parameterization, r.seed, r.arm);
                match &r.provenance {
                    None => Some((what, "evaluated before provenance was recorded".to_string())),
                    Some(p) => {
                        let d = current.differences(p);
                        (!d.is_empty()).then(|| (what, format!("{} (now vs then)", d.join("; "))))
                    }
                }
            })
            .collect();
        let warnings = per_arm.iter().map(|(what, d)| format!("{what}: {d}")).collect();
        let grouped = group_warnings(&per_arm, results.len());
        Self { fields, warnings, grouped }
    }

    fn markdown(&self) -> (String, String) {
        let mut top = String::new();
        if !self.warnings.is_empty() {
            top += "> **Provenance differs**: these results were made differently from this \
                    invocation, so they may differ from a rerun here by more than seed noise:\n";
            for w in &self.grouped {
                let _ = writeln!(top, "> - {w}");
            }
            top += "\n";
        }
        let mut end = String::from("\n## Provenance\n\n| | |\n|---|---|\n");
        for (k, v) in &self.fields {
            let _ = writeln!(end, "| {k} | `{v}` |");
        }
        (top, end)
    }

    fn html(&self) -> (String, String) {
        let mut top = String::new();
        if !self.warnings.is_empty() {
            top += "<div id=\"provenance-warning\" style=\"border:2px solid #a11;padding:8px\"><b>Provenance differs</b>: these results were made differently from this invocation, so they may differ from a rerun here by more than seed noise:<ul>";
            for w in &self.grouped {
                let _ = write!(top, "<li>{}</li>", html_escape(w));
            }
            top += "</ul></div>\n";
        }
        let mut end = String::from("<h2>Provenance</h2><table id=\"provenance\">");
        for (k, v) in &self.fields {
            let _ = write!(
                end,
                "<tr><td>{}</td><td><code>{}</code></td></tr>",
                html_escape(k),
                html_escape(v)
            );
        }
        end += "</table>\n";
        (top, end)
    }
}

/// One row of the table: an LPL variant against MSE for one parameterisation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// eps, v or flow.
    pub parameterization: String,
    /// The LPL variant.
    pub arm: String,
    /// Seeds present in both arms, in order.
    pub seeds: Vec<u64>,
    /// Per-seed FD of the MSE arm.
    pub fd_mse: Vec<f64>,
    /// Per-seed FD of the LPL arm.
    pub fd_lpl: Vec<f64>,
    /// Mean and std of precision, recall, high-band spectrum error: (MSE, LPL).
    pub precision: ((f64, f64), (f64, f64)),
    /// See `precision`.
    pub recall: ((f64, f64), (f64, f64)),
    /// See `precision`.
    pub spectrum_high: ((f64, f64), (f64, f64)),
    /// One sentence on the sign of the FD change and whether it exceeds the seed spread.
    pub verdict: String,
    /// The minimal detectable effect the seed-to-seed spread allows.
    pub power: String,
    /// The command reproducing this row.
    pub command: String,
}

fn rows(config: &AblationConfig, command: &str, results: &[ArmResult]) -> Vec<Row> {
    let mut out = Vec::new();
    for p in &config.parameterizations {
        let name = p.to_string();
        let of = |arm: &str| -> Vec<&ArmResult> {
            results.iter().filter(|r| r.parameterization == name && r.arm == arm).collect()
        };
        let mse = of("mse");
        for arm in config.arms().into_iter().filter(|a| a != "mse") {
            let lpl = of(&arm);
            let seeds: Vec<u64> =
                mse.iter().map(|r| r.seed).filter(|s| lpl.iter().any(|r| r.seed == *s)).collect();
            let pick = |set: &[&ArmResult], f: fn(&ArmResult) -> f64| -> Vec<f64> {
                seeds
                    .iter()
                    .filter_map(|s| set.iter().find(|r| r.seed == *s).map(|r| f(r)))
                    .collect()
            };
            let both =
                |f: fn(&ArmResult) -> f64| (mean_std(&pick(&mse, f)), mean_std(&pick(&lpl, f)));
            let (fd_mse, fd_lpl) = (pick(&mse, |r| r.metrics.fd), pick(&lpl, |r| r.metrics.fd));
            let metric = mse.first().map_or("FD".to_string(), |r| r.metrics.metric.clone());
            out.push(Row {
                parameterization: name.clone(),
                arm: arm.clone(),
                verdict: verdict_of(
                    if arm == "pixel" { "pixel" } else { "LPL" },
                    &fd_mse,
                    &fd_lpl,
                    &metric,
                ),
                power: power_statement(&fd_mse, &fd_lpl, &metric),
                seeds: seeds.clone(),
                fd_mse,
                fd_lpl,
                precision: both(|r| r.metrics.precision),
                recall: both(|r| r.metrics.recall),
                spectrum_high: both(|r| r.metrics.spectrum_high),
                command: format!("{command} --only {name}"),
            });
        }
    }
    out
}

/// Mean spectrum over seeds of one arm (radius 1..=R).
fn mean_spectrum(results: &[&ArmResult], real: bool) -> Vec<(f64, f64)> {
    let Some(first) = results.first() else { return Vec::new() };
    let len = first.spectrum.len();
    (1..len)
        .map(|r| {
            let v: Vec<f64> = results
                .iter()
                .filter_map(|a| {
                    if real { a.real_spectrum.get(r) } else { a.spectrum.get(r) }.copied()
                })
                .collect();
            (r as f64, mean_std(&v).0)
        })
        .collect()
}

/// Reads `(step, key)` pairs of a run's `metrics.jsonl`.
fn curve(run: &Path, key: &str, offset: f64) -> Vec<(f64, f64)> {
    let Ok(text) = std::fs::read_to_string(run.join("metrics.jsonl")) else { return Vec::new() };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_f64()? + offset, v[key].as_f64()?)))
        .collect()
}

/// Writes the spectrum and loss-curve plots; returns (title, path relative to `out`).
fn plots(
    config: &AblationConfig,
    results: &[ArmResult],
    ceiling: Option<&Ceiling>,
) -> Result<Vec<(String, PathBuf)>> {
    let out = &config.output_dir;
    let dir = out.join("plots");
    std::fs::create_dir_all(&dir)
        .map_err(|e| AblationError::Io { path: dir.clone(), source: e })?;
    let mut made = Vec::new();
    for p in &config.parameterizations {
        let name = p.to_string();
        let arm_results = |arm: &str| -> Vec<&ArmResult> {
            results.iter().filter(|r| r.parameterization == name && r.arm == arm).collect()
        };
        let mut series =
            vec![Series { name: "real".into(), points: mean_spectrum(&arm_results("mse"), true) }];
        if let Some(c) = ceiling {
            series.push(Series {
                name: "autoencoder reconstructions".into(),
                points: (1..c.spectrum.len()).map(|r| (r as f64, c.spectrum[r])).collect(),
            });
        }
        for arm in config.arms() {
            series.push(Series {
                name: arm.clone(),
                points: mean_spectrum(&arm_results(&arm), false),
            });
        }
        if series[0].points.is_empty() {
            continue;
        }
        let plot = LinePlot {
            title: format!("{name}: radially averaged power spectrum (mean over seeds)"),
            x_label: "spatial frequency (radius)".into(),
            y_label: "power".into(),
            log_y: true,
            series,
        };
        let rel =
            PathBuf::from("plots").join(format!("{}-spectrum-{name}.png", config.report_name));
        plot.save_png(&out.join(&rel))?;
        made.push((format!("{name}: power spectra"), rel));
        // loss curves: pre-training, then each arm's first seed (diffusion MSE term)
        let pre = out.join(&name).join("pretrain");
        let offset = config.pretrain_steps as f64;
        let mut series =
            vec![Series { name: "pre-training (MSE)".into(), points: curve(&pre, "mse", 0.0) }];
        if let Some(seed) = config.seeds.first() {
            for arm in config.arms() {
                let run = out.join(&name).join(format!("seed{seed}")).join(&arm);
                series.push(Series {
                    name: format!("{arm}: MSE term"),
                    points: curve(&run, "mse", offset),
                });
                if arm == "pixel" {
                    series.push(Series {
                        name: format!("{arm}: pixel term"),
                        points: curve(&run, "pixel", offset),
                    });
                } else if arm != "mse" {
                    series.push(Series {
                        name: format!("{arm}: LPL term"),
                        points: curve(&run, "lpl", offset),
                    });
                }
            }
        }
        series.retain(|s| !s.points.is_empty());
        if series.is_empty() {
            continue;
        }
        let plot = LinePlot {
            title: format!(
                "{name}: training loss (seed {})",
                config.seeds.first().copied().unwrap_or(0)
            ),
            x_label: "step".into(),
            y_label: "loss".into(),
            log_y: true,
            series,
        };
        let rel = PathBuf::from("plots").join(format!("{}-loss-{name}.png", config.report_name));
        plot.save_png(&out.join(&rel))?;
        made.push((format!("{name}: loss curves"), rel));
    }
    Ok(made)
}

/// Mean over the high band (radii above half the largest, the DC term left out, as the
/// spectrum error's) of `log10(a / b)`, signed: below 0 when `a` carries less power.
fn high_band_log_ratio(a: &[f64], b: &[f64]) -> f64 {
    let floor = 1e-12;
    let ratios: Vec<f64> =
        a.iter().zip(b).skip(1).map(|(x, y)| x.max(floor).log10() - y.max(floor).log10()).collect();
    let high = &ratios[ratios.len() / 2..];
    if high.is_empty() { 0.0 } else { high.iter().sum::<f64>() / high.len() as f64 }
}

/// Whether the generated images' high band is the decoder's to improve: compared with the
/// reconstructions' (what the decoder renders from real latents) as well as with the real
/// images'. The ratios are [`high_band_log_ratio`]s (samples to reconstructions, samples to
/// real images, reconstructions to real images); the errors are the unsigned high-band
/// spectrum errors against the real images. Within 0.05 (12% of power) two spectra are
/// taken to match.
fn ceiling_verdict(
    gen_vs_rec: f64,
    gen_vs_real: f64,
    rec_vs_real: f64,
    rec_error: f64,
    gen_error: f64,
) -> String {
    const MATCH: f64 = 0.05;
    let x = |r: f64| format!("{:.2}x", 10f64.powf(r));
    let numbers = format!(
        "the samples carry {} the reconstructions' high-band power and {} the real images'; the reconstructions carry {} the real images' (high-band spectrum error against the real images: reconstructions {rec_error:.3}, samples {gen_error:.3}, mean over arms)",
        x(gen_vs_rec),
        x(gen_vs_real),
        x(rec_vs_real)
    );
    let reading = if gen_vs_rec.abs() <= MATCH {
        "the samples' high band is what the decoder renders, so what separates it from the real images is the autoencoder's, and no denoiser loss can close it"
    } else if gen_vs_real >= -MATCH {
        "the samples are not short of high-frequency power against the real images; the decoder renders a different amount from real latents, so moving towards it would not bring them closer to the data"
    } else if gen_vs_rec > MATCH {
        "the samples carry less high-frequency power than the real images but more than the decoder renders from real latents: the shortfall is the autoencoder's"
    } else {
        "the samples lack high-frequency power that the decoder renders from real latents: a denoiser loss could close that part of the gap"
    };
    format!("In the high band {numbers}: {reading}.")
}

fn pm(v: (f64, f64)) -> String {
    format!("{:.3} +- {:.3}", v.0, v.1)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// `results.csv`: one line per arm and seed.
fn csv(results: &[ArmResult]) -> String {
    let mut csv = String::from(
        "parameterization,seed,arm,metric,fd,precision,recall,density,coverage,spectrum_low,spectrum_high,control_lpl,control_lpl_own,control_mse,weight,run\n",
    );
    let opt = |v: Option<f64>, digits: usize| v.map_or(String::new(), |x| format!("{x:.digits$}"));
    for r in results {
        let m = &r.metrics;
        let _ = writeln!(
            csv,
            "{},{},{},{},{:.6},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{},{},{},{}",
            r.parameterization,
            r.seed,
            r.arm,
            m.metric,
            m.fd,
            m.precision,
            m.recall,
            m.density,
            m.coverage,
            m.spectrum_low,
            m.spectrum_high,
            opt(r.control.as_ref().map(|c| c.lpl), 6),
            opt(r.control.as_ref().map(|c| c.measured_as(&r.arm)), 6),
            opt(r.control.as_ref().map(|c| c.mse), 6),
            opt(r.weight, 6),
            r.run.display()
        );
    }
    csv
}

/// Writes every report file into the ablation's output directory and prints the table.
pub fn write_report(
    config: &AblationConfig,
    command: &str,
    provenance: &Provenance,
    results: &[ArmResult],
    extras: &Extras,
) -> Result<()> {
    let out = &config.output_dir;
    let mut rows = rows(config, command, results);
    let summary = ProvenanceSummary::new(provenance, results);
    let control_rows: Vec<(String, u64, String, Control)> = results
        .iter()
        .filter_map(|r| {
            r.control.clone().map(|c| (r.parameterization.clone(), r.seed, r.arm.clone(), c))
        })
        .collect();
    let flagged = control_flags(&control_rows);
    // a verdict whose arm failed the control says so where it is read, not only below
    for r in &mut rows {
        let seeds: Vec<String> = flagged
            .iter()
            .filter(|f| f.parameterization == r.parameterization && f.arm == r.arm)
            .map(|f| f.seed.to_string())
            .collect();
        if !seeds.is_empty() {
            r.verdict += &format!(
                " (the positive control FAILED in seed{} {}: this arm cannot speak for LPL)",
                if seeds.len() > 1 { "s" } else { "" },
                seeds.join(", ")
            );
        }
    }
    let flags: Vec<String> = flagged.iter().map(|f| f.to_string()).collect();
    let json = serde_json::json!({
        "command": command,
        "provenance": provenance,
        "provenance_warnings": summary.warnings,
        "config": config,
        "protocol": protocol_text(config),
        "rows": rows,
        "results": results,
        "control_flags": flags,
        "ceiling": extras.ceiling,
        "calibrations": extras.calibrations.iter().map(|(p, a, c)| serde_json::json!({"parameterization": p, "arm": a, "calibration": c})).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&json)
        .map_err(|e| AblationError::Io { path: out.join("results.json"), source: e.into() })?;
    let name = &config.report_name;
    let suffix = name.strip_prefix("report").unwrap_or(name);
    lpl_tensor_io::write_atomically(&out.join(format!("results{suffix}.json")), text.as_bytes())?;
    lpl_tensor_io::write_atomically(
        &out.join(format!("results{suffix}.csv")),
        csv(results).as_bytes(),
    )?;
    let figures = plots(config, results, extras.ceiling.as_ref())?;
    let metric = results.first().map_or("FD".to_string(), |r| r.metrics.metric.clone());
    let setup = format!(
        "{metric}: Frechet distance in EfficientNet-Lite0 ImageNet features between {n} generated and {n} real test images (lower is better). \
         Sampling: EMA weights, {} steps ({}), guidance {}, noise seed {}. Each parameterisation is pre-trained once with MSE for {} steps; \
         every arm continues that checkpoint for {} steps with the same data order and seeds {:?}. Precision / recall: k = 3 in the same features. \
         High-band spectrum error: mean |log10 power| difference to the real images above half the maximum radius (lower is better).",
        config.eval_steps,
        "DDIM, Euler for flow",
        config.eval_guidance,
        config.eval_seed,
        config.pretrain_steps,
        config.continuation_steps,
        config.seeds,
        n = config.eval_count,
    );
    let header = [
        "parameterisation",
        "arm",
        &format!("{metric} MSE"),
        &format!("{metric} arm"),
        "change",
        "per-seed MSE",
        "per-seed arm",
        "precision MSE / arm",
        "recall MSE / arm",
        "high-band spectrum err MSE / arm",
    ];
    let cells = |r: &Row| -> Vec<String> {
        let ((m, ms), (l, ls)) = (mean_std(&r.fd_mse), mean_std(&r.fd_lpl));
        let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
        vec![
            r.parameterization.clone(),
            r.arm.clone(),
            format!("{m:.2} +- {ms:.2}"),
            format!("{l:.2} +- {ls:.2}"),
            format!("{:+.1}%", (l - m) / m * 100.0),
            fmt(&r.fd_mse),
            fmt(&r.fd_lpl),
            format!("{} / {}", pm(r.precision.0), pm(r.precision.1)),
            format!("{} / {}", pm(r.recall.0), pm(r.recall.1)),
            format!("{} / {}", pm(r.spectrum_high.0), pm(r.spectrum_high.1)),
        ]
    };
    let (md_top, md_end) = summary.markdown();
    let mut md =
        format!("# MSE vs MSE + LPL\n\n{md_top}Reproduce everything: `{command}`\n\n{setup}\n\n");
    md += &format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len()));
    for r in &rows {
        md += &format!("| {} |\n", cells(r).join(" | "));
    }
    md += "\n## What the numbers say\n\n";
    for r in &rows {
        let _ = writeln!(
            md,
            "- **{} / {}**: {}; {}. Reproduce: `{}`",
            r.parameterization, r.arm, r.verdict, r.power, r.command
        );
    }
    let sections = sections(config, results, extras, &flags);
    for section in &sections {
        md += &section.markdown();
    }
    md += "\n## Figures\n\n";
    for (title, path) in &figures {
        let _ = writeln!(md, "![{title}]({})", path.display());
    }
    md += "\nSample grids (first seed, one row per class order): ";
    md += &grids(config)
        .iter()
        .map(|(t, p)| format!("[{t}]({})", p.display()))
        .collect::<Vec<_>>()
        .join(", ");
    md += "\n";
    md += &md_end;
    lpl_tensor_io::write_atomically(
        &out.join(format!("{}.md", config.report_name)),
        md.as_bytes(),
    )?;
    let preamble = Preamble { command, setup: &setup, provenance: summary.html() };
    let page = html(config, &preamble, &header, &rows, &cells, &figures, &sections)?;
    lpl_tensor_io::write_atomically(
        &out.join(format!("{}.html", config.report_name)),
        page.as_bytes(),
    )?;
    println!("{md}");
    Ok(())
}

/// The pre-registered protocol, as the report states it before any number.
fn protocol_text(config: &AblationConfig) -> String {
    format!(
        "Decided before the runs: the deciding metric is FD-EffNet of the EMA model's samples against the real test images; \
         precision, recall (k = 3) and the high-band spectrum error are secondary. Each arm is compared with the MSE arm of the same \
         pre-trained checkpoint and seed; the test is a two-sided paired t-test over the {} seed(s) at 95%, and the minimal detectable \
         effect is stated at {:.0}% power from the measured spread of the paired differences. Every arm that ran is reported, not the best. \
         The positive control (held-out LPL of the EMA model on {} test-split latents at times inside the gate) must be lower for every \
         LPL arm than for the MSE arm of its seed, or the run is flagged as unable to speak for LPL.",
        config.seeds.len(),
        MDE_POWER * 100.0,
        crate::control::CONTROL_COUNT.min(config.eval_count as i64)
    )
}

/// The report's sections below the main table: the protocol, the positive control, the
/// autoencoder's ceiling, the weight calibrations.
fn sections(
    config: &AblationConfig,
    results: &[ArmResult],
    extras: &Extras,
    flags: &[String],
) -> Vec<Section> {
    let mut out = vec![Section {
        title: "Protocol (pre-registered)".into(),
        text: vec![protocol_text(config)],
        ..Section::default()
    }];
    // every arm under the configured LPL, then under each variant's own where it has one
    let measures: Vec<String> = std::iter::once("[lpl]".to_string())
        .chain(config.variants.iter().filter(|v| v.changes_the_measure()).map(|v| v.name.clone()))
        .collect();
    let mut control = Section {
        title: "Positive control: held-out LPL and MSE".into(),
        header: [
            "parameterisation",
            "arm",
            "LPL measured with",
            "held-out LPL",
            "held-out MSE",
            "per-seed LPL",
        ]
        .map(String::from)
        .to_vec(),
        ..Section::default()
    };
    for p in &config.parameterizations {
        let name = p.to_string();
        for measure in &measures {
            for arm in config.arms() {
                let of: Vec<(u64, f64, f64)> = results
                    .iter()
                    .filter(|r| r.parameterization == name && r.arm == arm)
                    .filter_map(|r| {
                        let c = r.control.as_ref()?;
                        let lpl =
                            if measure == "[lpl]" { c.lpl } else { *c.by_variant.get(measure)? };
                        Some((r.seed, lpl, c.mse))
                    })
                    .collect();
                if of.is_empty() {
                    continue;
                }
                let lpl: Vec<f64> = of.iter().map(|o| o.1).collect();
                let mse: Vec<f64> = of.iter().map(|o| o.2).collect();
                let (l, ls) = mean_std(&lpl);
                let (m, ms) = mean_std(&mse);
                control.rows.push(vec![
                    name.clone(),
                    arm.clone(),
                    measure.clone(),
                    format!("{} +- {}", significant(l), significant(ls)),
                    format!("{m:.5} +- {ms:.5}"),
                    of.iter()
                        .map(|(s, l, _)| format!("{s}: {}", significant(*l)))
                        .collect::<Vec<_>>()
                        .join(", "),
                ]);
            }
        }
    }
    if measures.len() > 1 {
        control.text.push(format!(
            "`[lpl]` is the configured LPL; {} {} what LPL measures, so every arm is also measured with {}, on a held-out set inside {} gate, and each LPL arm is judged by its own measure.",
            measures[1..].iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
            if measures.len() > 2 { "change" } else { "changes" },
            if measures.len() > 2 { "theirs" } else { "its" },
            if measures.len() > 2 { "their" } else { "its" },
        ));
    }
    control.text.push(if flags.is_empty() {
        "Every LPL arm ends with a lower held-out LPL than the MSE arm of its seed: the LPL arms optimised what LPL measures.".into()
    } else {
        format!("FLAGGED ({}): {}", flags.len(), flags.join(" | "))
    });
    out.push(control);
    if let Some(c) = &extras.ceiling {
        let m = &c.metrics;
        let arms_mean = |f: fn(&ArmResult) -> f64| -> f64 {
            mean_std(&results.iter().map(f).collect::<Vec<_>>()).0
        };
        let generated_high = arms_mean(|r| r.metrics.spectrum_high);
        let all: Vec<&ArmResult> = results.iter().collect();
        let generated: Vec<f64> = std::iter::once(0.0)
            .chain(mean_spectrum(&all, false).into_iter().map(|(_, v)| v))
            .collect();
        let verdict = ceiling_verdict(
            high_band_log_ratio(&generated, &c.spectrum),
            high_band_log_ratio(&generated, &c.real_spectrum),
            high_band_log_ratio(&c.spectrum, &c.real_spectrum),
            m.spectrum_high,
            generated_high,
        );
        out.push(Section {
            title: "The autoencoder's ceiling".into(),
            text: vec![
                format!(
                    "The autoencoder's reconstructions of the {} real evaluation images, compared with them as the samples are: no denoiser can beat its decoder. FD {:.2} (mean FD of the arms {:.2}).",
                    c.count,
                    m.fd,
                    arms_mean(|r| r.metrics.fd)
                ),
                verdict,
            ],
            header: ["images", "FD", "precision", "recall", "spectrum err low / high"]
                .map(String::from)
                .to_vec(),
            rows: vec![vec![
                "reconstructions".into(),
                format!("{:.2}", m.fd),
                format!("{:.3}", m.precision),
                format!("{:.3}", m.recall),
                format!("{:.3} / {:.3}", m.spectrum_low, m.spectrum_high),
            ]],
        });
    }
    if !extras.calibrations.is_empty() {
        out.push(Section {
            title: "Weight calibration at the fork".into(),
            text: vec![format!(
                "Weights given as a share of the loss are calibrated on the first {} training batches of the pre-trained checkpoint: w = share / (1 - share) * MSE / term, the term measured at weight 1.",
                extras.calibrations.first().map_or(0, |(_, _, c)| c.batches)
            )],
            header: ["parameterisation", "arm", "share", "MSE", "term at weight 1", "weight"]
                .map(String::from)
                .to_vec(),
            rows: extras
                .calibrations
                .iter()
                .map(|(p, a, c)| {
                    vec![
                        p.clone(),
                        a.clone(),
                        format!("{}", c.share),
                        format!("{:.5}", c.mse),
                        significant(c.term),
                        significant(c.weight),
                    ]
                })
                .collect(),
        });
    }
    out
}

/// The first seed's sample grid of every arm: (title, path relative to the output dir).
fn grids(config: &AblationConfig) -> Vec<(String, PathBuf)> {
    let Some(seed) = config.seeds.first() else { return Vec::new() };
    config
        .parameterizations
        .iter()
        .flat_map(|p| {
            config.arms().into_iter().map(move |arm| {
                (
                    format!("{p} {arm}"),
                    PathBuf::from(p.to_string())
                        .join(format!("seed{seed}"))
                        .join(&arm)
                        .join("samples.png"),
                )
            })
        })
        .filter(|(_, p)| config.output_dir.join(p).is_file())
        .collect()
}

fn inline_png(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| format!("data:image/png;base64,{}", BASE64.encode(b)))
}

/// The text above and below the HTML report's table.
struct Preamble<'a> {
    command: &'a str,
    setup: &'a str,
    /// (warning at the top, provenance table at the end).
    provenance: (String, String),
}

fn html(
    config: &AblationConfig,
    preamble: &Preamble<'_>,
    header: &[&str],
    rows: &[Row],
    cells: &dyn Fn(&Row) -> Vec<String>,
    figures: &[(String, PathBuf)],
    sections: &[Section],
) -> Result<String> {
    let mut h = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>lpl: MSE vs MSE + LPL</title><style>\
         body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}\
         table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
         th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}code{background:#f6f6f6;padding:1px 4px}\
         .better{color:#16702e;font-weight:600}.worse{color:#a11;font-weight:600}\
         figure{display:inline-block;margin:8px;vertical-align:top}figcaption{font-size:13px;text-align:center}\
         img{border:1px solid #ddd}</style></head><body>\n<h1>MSE vs MSE + LPL</h1>\n",
    );
    h += &preamble.provenance.0;
    let _ = writeln!(
        h,
        "<p>Reproduce everything: <code>{}</code></p><p>{}</p>",
        html_escape(preamble.command),
        html_escape(preamble.setup)
    );
    h += "<table id=\"results\"><tr>";
    for c in header {
        let _ = write!(h, "<th>{}</th>", html_escape(c));
    }
    h += "</tr>\n";
    for r in rows {
        h += "<tr>";
        for (i, c) in cells(r).iter().enumerate() {
            let class = if i == 4 {
                if c.starts_with('-') { " class=\"better\"" } else { " class=\"worse\"" }
            } else {
                ""
            };
            let _ = write!(h, "<td{class}>{}</td>", html_escape(c));
        }
        h += "</tr>\n";
    }
    h += "</table>\n<h2>What the numbers say</h2><ul>\n";
    for r in rows {
        let _ = writeln!(
            h,
            "<li><b>{} / {}</b>: {}; {}. Reproduce: <code>{}</code></li>",
            html_escape(&r.parameterization),
            html_escape(&r.arm),
            html_escape(&r.verdict),
            html_escape(&r.power),
            html_escape(&r.command)
        );
    }
    h += "</ul>\n";
    for section in sections {
        h += &section.html();
    }
    h += "<h2>Figures</h2>\n";
    for (title, path) in figures {
        if let Some(src) = inline_png(&config.output_dir.join(path)) {
            let _ = writeln!(
                h,
                "<figure><img class=\"plot\" src=\"{src}\" width=\"720\" alt=\"{0}\"><figcaption>{0}</figcaption></figure>",
                html_escape(title)
            );
        }
    }
    h += "\n<h2>Samples (first seed)</h2>\n";
    for (title, path) in grids(config) {
        if let Some(src) = inline_png(&config.output_dir.join(&path)) {
            let _ = writeln!(
                h,
                "<figure><img class=\"grid\" src=\"{src}\" width=\"360\" style=\"image-rendering:pixelated\" alt=\"{0}\"><figcaption>{0}</figcaption></figure>",
                html_escape(&title)
            );
        }
    }
    h += &preamble.provenance.1;
    h += "\n</body></html>\n";
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The high band is the upper half of radii 1..=R, DC left out; the ratio is signed.
    #[test]
    fn high_band_ratio_is_signed_and_skips_dc() {
        // radii 0..=4: DC, then two low and two high radii
        let real = [1e6, 1.0, 1.0, 1.0, 1.0];
        let half = [1.0, 1.0, 1.0, 0.1, 0.1]; // a tenth of the power in the high band
        assert!((high_band_log_ratio(&half, &real) + 1.0).abs() < 1e-12);
        assert!((high_band_log_ratio(&real, &half) - 1.0).abs() < 1e-12);
        assert_eq!(high_band_log_ratio(&real, &real), 0.0);
    }

    /// Arms sharing a difference share a line; all of them are named as every arm.
    #[test]
    fn provenance_warnings_are_grouped_by_difference() {
        let arm = |a: &str, d: &str| (a.to_string(), d.to_string());
        let commit = "commit: b vs a (now vs then)";
        let all = [arm("v seed 0 mse", commit), arm("v seed 0 lpl", commit)];
        assert_eq!(group_warnings(&all, 2), vec![format!("every arm (2): {commit}")]);
        let some = [arm("v seed 0 mse", commit), arm("v seed 1 lpl", "threads: 2 vs 97")];
        assert_eq!(
            group_warnings(&some, 3),
            vec![format!("v seed 0 mse: {commit}"), "v seed 1 lpl: threads: 2 vs 97".to_string()]
        );
        assert_eq!(group_warnings(&[arm("eps seed 0 lpl", commit)], 1).len(), 1);
        assert!(group_warnings(&[], 4).is_empty());
    }

    /// The verdict reads the samples' power against both the reconstructions and the real
    /// images, not the sizes of the unsigned errors: emoji-TAEF2's reconstructions err more
    /// than the samples (1.34x the real power) while the samples are near the real level.
    #[test]
    fn the_ceiling_verdict_compares_with_the_decoder_and_the_data() {
        // near the data, below the decoder: no deficit to close
        let v = ceiling_verdict(-0.136, -0.009, 0.127, 0.126, 0.083);
        assert!(v.contains("0.73x the reconstructions'"), "{v}");
        assert!(v.contains("not short of high-frequency power"), "{v}");
        // at the decoder's level: the autoencoder's gap
        let v = ceiling_verdict(0.02, -0.48, -0.5, 0.3, 0.31);
        assert!(v.contains("no denoiser loss can close it"), "{v}");
        // below both: a deficit the decoder could render
        let v = ceiling_verdict(-0.3, -0.4, -0.1, 0.1, 0.4);
        assert!(v.contains("a denoiser loss could close that part"), "{v}");
        // below the data, above the decoder: the autoencoder's shortfall
        let v = ceiling_verdict(0.2, -0.3, -0.5, 0.5, 0.3);
        assert!(v.contains("the shortfall is the autoencoder's"), "{v}");
    }
}
