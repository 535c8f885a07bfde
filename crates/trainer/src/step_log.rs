//! The bookkeeping of the diffusion training loop: per-step terms accumulated on the device
//! (no host synchronisation per step) and `metrics.jsonl`.
//!
//! One semantics for every value of a `metrics.jsonl` line: the mean over the finite steps
//! of its log window (the steps since the previous line; a step's value is itself the mean
//! over its micro-batches). `loss`, `mse`, `grad_norm` (the gradients' total L2 norm before
//! clipping) and, while LPL is active, `lpl` (the weighted LPL term added to the loss),
//! `lpl_kept_fraction` and `lpl_masked_fraction` (per layer); `skipped` counts the window's
//! non-finite steps. After a resume the file holds each step once: lines past the
//! checkpoint resumed from are dropped before training continues.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::{Result, TrainError};

/// The LPL part of one step (0-d f32 tensors, `masked_fraction` `(L,)`).
pub(crate) struct LplTerms {
    pub total: Tensor,
    pub kept_fraction: Tensor,
    pub masked_fraction: Tensor,
}

impl LplTerms {
    /// `self += other * scale` (accumulating micro-batches), or `other * scale` for `None`.
    pub fn accumulate(into: &mut Option<LplTerms>, other: &lpl_loss::LplOutput, scale: f64) {
        let add = |a: Option<&Tensor>, b: &Tensor| {
            let b = b.detach().to_kind(Kind::Float) * scale;
            a.map_or_else(|| b.shallow_clone(), |a| a + &b)
        };
        let prev = into.take();
        *into = Some(LplTerms {
            total: add(prev.as_ref().map(|p| &p.total), &other.total),
            kept_fraction: add(prev.as_ref().map(|p| &p.kept_fraction), &other.kept_fraction),
            masked_fraction: add(prev.as_ref().map(|p| &p.masked_fraction), &other.masked_fraction),
        });
    }
}

/// Counters and window sums, all on the training device.
pub(crate) struct StepCounters {
    /// Steps skipped for a non-finite loss or gradient, this invocation.
    pub skipped: Tensor,
    /// The current run of consecutive skipped steps.
    run: Tensor,
    /// The longest such run so far (the stop criterion, exact even between reads).
    pub longest_run: Tensor,
    window: Window,
}

#[derive(Default)]
struct Window {
    /// Finite steps, and those of them with LPL active.
    steps: Option<Tensor>,
    skipped: Option<Tensor>,
    loss: Option<Tensor>,
    mse: Option<Tensor>,
    grad_norm: Option<Tensor>,
    lpl_steps: Option<Tensor>,
    lpl: Option<Tensor>,
    lpl_kept: Option<Tensor>,
    lpl_masked: Option<Tensor>,
}

/// `sum += value` where `keep` (0-d bool), starting from zero.
fn add_if(sum: &mut Option<Tensor>, value: &Tensor, keep: &Tensor) {
    let v = value.detach().to_kind(Kind::Float).where_scalarother(keep, 0.0);
    *sum = Some(match sum.take() {
        Some(s) => s + v,
        None => v,
    });
}

fn mean(sum: &Option<Tensor>, count: &Option<Tensor>) -> Result<Option<f64>> {
    let (Some(sum), Some(count)) = (sum, count) else { return Ok(None) };
    let n = count.double_value(&[]);
    Ok((n > 0.0).then(|| sum.double_value(&[]) / n))
}

impl StepCounters {
    pub fn new(device: Device) -> Self {
        let zero = || Tensor::zeros([], (Kind::Float, device));
        Self { skipped: zero(), run: zero(), longest_run: zero(), window: Window::default() }
    }

    /// Records one step: `found_inf` (0-d f32, 1 for a skipped step) and its terms.
    pub fn record(
        &mut self,
        found_inf: &Tensor,
        loss: &Tensor,
        mse: &Tensor,
        grad_norm: &Tensor,
        lpl: Option<&LplTerms>,
    ) {
        tch::no_grad(|| {
            self.skipped += found_inf;
            self.run = (&self.run + 1.0) * found_inf;
            self.longest_run = self.longest_run.maximum(&self.run);
            let finite = found_inf.eq(0.0);
            let w = &mut self.window;
            let one = found_inf.ones_like();
            add_if(&mut w.steps, &one, &finite);
            add_if(&mut w.skipped, found_inf, &found_inf.ones_like().to_kind(Kind::Bool));
            add_if(&mut w.loss, loss, &finite);
            add_if(&mut w.mse, mse, &finite);
            add_if(&mut w.grad_norm, grad_norm, &finite);
            if let Some(l) = lpl {
                add_if(&mut w.lpl_steps, &one, &finite);
                add_if(&mut w.lpl, &l.total, &finite);
                add_if(&mut w.lpl_kept, &l.kept_fraction, &finite);
                add_if(&mut w.lpl_masked, &l.masked_fraction, &finite);
            }
        });
    }

    /// The window's means as a `metrics.jsonl` line (host reads), and clears the window.
    /// `loss` is NaN when every step of the window was skipped.
    pub fn take_window(
        &mut self,
        step: usize,
        lr: f64,
        samples_per_sec: f64,
    ) -> Result<(f64, serde_json::Value)> {
        let w = std::mem::take(&mut self.window);
        let loss = mean(&w.loss, &w.steps)?.unwrap_or(f64::NAN);
        let mut line = serde_json::json!({
            "step": step,
            "loss": loss,
            "mse": mean(&w.mse, &w.steps)?.unwrap_or(f64::NAN),
            "grad_norm": mean(&w.grad_norm, &w.steps)?.unwrap_or(f64::NAN),
            "skipped": w.skipped.as_ref().map_or(0.0, |s| s.double_value(&[])),
            "lr": lr,
            "samples_per_sec": samples_per_sec,
        });
        if let Some(lpl) = mean(&w.lpl, &w.lpl_steps)? {
            line["lpl"] = lpl.into();
            line["lpl_kept_fraction"] = mean(&w.lpl_kept, &w.lpl_steps)?.unwrap_or(f64::NAN).into();
            if let (Some(masked), Some(n)) = (&w.lpl_masked, &w.lpl_steps) {
                let per_layer = (masked / n).to_kind(Kind::Double).to_device(Device::Cpu);
                line["lpl_masked_fraction"] = Vec::<f64>::try_from(per_layer)?.into();
            }
        }
        Ok((loss, line))
    }
}

/// `metrics.jsonl` of a run, open for appending, holding only the lines up to `step` (the
/// step training starts or resumes from): a run killed after logging past its last
/// checkpoint would otherwise log those steps twice.
pub(crate) struct MetricsFile {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsFile {
    pub fn open(path: &Path, step: usize) -> Result<Self> {
        let io = |e: std::io::Error| TrainError::Io { path: path.to_path_buf(), source: e };
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(io)?;
            let kept: String = text
                .lines()
                .filter(|l| {
                    let line_step = serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64());
                    line_step.is_some_and(|s| s as usize <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            if kept.len() != text.len() {
                lpl_tensor_io::write_atomically(path, kept.as_bytes())?;
            }
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        Ok(Self { file, path: path.to_path_buf() })
    }

    /// Appends one JSON line.
    pub fn append(&mut self, line: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{line}")
            .map_err(|e| TrainError::Io { path: self.path.clone(), source: e })
    }
}
