//! The bookkeeping of the diffusion training loop: per-step terms accumulated on the device
//! (no host synchronisation per step) and `metrics.jsonl`.
//!
//! One semantics for every value of a `metrics.jsonl` line: the mean over the finite steps
//! of its log window (the steps since the previous line; a step's value is itself the mean
//! over its micro-batches). `loss`, `grad_norm` (the gradients' total L2 norm before
//! clipping) and the objective's named terms (`mse`; while LPL is active `lpl`, the
//! weighted LPL term added to the loss, `lpl_kept_fraction` and `lpl_masked_fraction` per
//! layer; `pixel`), each averaged over the finite steps that have it (null when all of them
//! were skipped); `skipped` counts the window's non-finite steps. After a resume the file holds each step once: lines past the
//! checkpoint resumed from are dropped before training continues.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::{Result, TrainError};

/// The named terms of one step (each the mean over its micro-batches: accumulated with
/// weight `1 / grad_accum`), detached, on the device.
#[derive(Default)]
pub(crate) struct StepTerms(pub BTreeMap<&'static str, Tensor>);

impl StepTerms {
    /// `self[name] += value * scale` for every term of one micro-batch.
    pub fn accumulate(&mut self, terms: &[(&'static str, Tensor)], scale: f64) {
        for (name, value) in terms {
            let v = value.detach().to_kind(Kind::Float) * scale;
            let sum = match self.0.remove(name) {
                Some(s) => s + v,
                None => v,
            };
            self.0.insert(name, sum);
        }
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
    /// Finite steps.
    steps: Option<Tensor>,
    skipped: Option<Tensor>,
    loss: Option<Tensor>,
    grad_norm: Option<Tensor>,
    /// Per term: (sum over the finite steps that have it, number of those steps).
    terms: BTreeMap<&'static str, (Option<Tensor>, Option<Tensor>)>,
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

/// A term's window mean: a number for 0-d terms, a list for `(L,)` ones; `None` if every
/// step of the window that had it was skipped.
fn term_mean(sum: &Option<Tensor>, count: &Option<Tensor>) -> Result<Option<serde_json::Value>> {
    let (Some(sum), Some(count)) = (sum, count) else { return Ok(None) };
    if count.double_value(&[]) <= 0.0 {
        return Ok(None);
    }
    let m = (sum / count).to_kind(Kind::Double).to_device(Device::Cpu);
    Ok(Some(if m.dim() == 0 {
        m.double_value(&[]).into()
    } else {
        Vec::<f64>::try_from(m.flatten(0, -1))?.into()
    }))
}

impl StepCounters {
    pub fn new(device: Device) -> Self {
        let zero = || Tensor::zeros([], (Kind::Float, device));
        Self { skipped: zero(), run: zero(), longest_run: zero(), window: Window::default() }
    }

    /// Records one step: `found_inf` (0-d f32, 1 for a skipped step), its loss, the
    /// gradients' norm and its named terms.
    pub fn record(
        &mut self,
        found_inf: &Tensor,
        loss: &Tensor,
        grad_norm: &Tensor,
        terms: &StepTerms,
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
            add_if(&mut w.grad_norm, grad_norm, &finite);
            for (name, value) in &terms.0 {
                let (sum, count) = w.terms.entry(name).or_default();
                add_if(count, &one, &finite);
                add_if(sum, value, &finite);
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
            "grad_norm": mean(&w.grad_norm, &w.steps)?.unwrap_or(f64::NAN),
            "skipped": w.skipped.as_ref().map_or(0.0, |s| s.double_value(&[])),
            "lr": lr,
            "samples_per_sec": samples_per_sec,
        });
        for (name, (sum, count)) in &w.terms {
            // NaN (null in JSON) when every step that had the term was skipped
            line[*name] = term_mean(sum, count)?.unwrap_or_else(|| f64::NAN.into());
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
