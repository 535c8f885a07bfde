//! Run checkpoints: model, EMA and optimiser state plus everything needed to resume exactly
//! (step, data position, t-sampler state, config, codec), in one safetensors file written
//! atomically under `<output_dir>/checkpoints/step-NNNNNNN.safetensors`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lpl_data::BatchCursor;
use tch::Tensor;

use crate::error::{Result, TrainError, invalid};
use crate::run_config::RunConfig;

/// `lpl.kind` of a run checkpoint.
pub const KIND_RUN: &str = "run";

/// What a checkpoint holds besides tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    /// Optimiser steps done.
    pub step: usize,
    /// Where the data stream stands.
    pub cursor: BatchCursor,
    /// The t-sampler's generator state.
    pub time_sampler_state: u64,
    /// AdamW's update count.
    pub adamw_step: i64,
    /// The run config (TOML).
    pub config_toml: String,
    /// The codec of the latents (JSON).
    pub codec_json: String,
    /// The ranks the run trained on (its global batch is `train.batch_size` times this); 1
    /// in checkpoints from before data-parallel training.
    pub world_size: usize,
}

/// The checkpoint directory of a run.
pub fn checkpoint_dir(output_dir: &Path) -> PathBuf {
    output_dir.join("checkpoints")
}

/// Path of the checkpoint at `step`.
pub fn checkpoint_path(output_dir: &Path, step: usize) -> PathBuf {
    checkpoint_dir(output_dir).join(format!("step-{step:07}.safetensors"))
}

/// Checkpoints of a run, oldest first.
pub fn list_checkpoints(output_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(checkpoint_dir(output_dir)) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-") && n.ends_with(".safetensors"))
        })
        .collect();
    files.sort();
    files
}

/// Writes a checkpoint atomically and keeps only the newest `keep` of the run.
pub fn save(
    output_dir: &Path,
    state: &RunState,
    tensors: Vec<(String, Tensor)>,
    keep: usize,
) -> Result<PathBuf> {
    let meta = BTreeMap::from([
        ("lpl.kind".to_string(), KIND_RUN.to_string()),
        ("lpl.step".to_string(), state.step.to_string()),
        ("lpl.cursor".to_string(), format!("{},{}", state.cursor.epoch, state.cursor.position)),
        ("lpl.time_sampler".to_string(), state.time_sampler_state.to_string()),
        ("lpl.adamw_step".to_string(), state.adamw_step.to_string()),
        ("lpl.config".to_string(), state.config_toml.clone()),
        ("lpl.codec".to_string(), state.codec_json.clone()),
        ("lpl.world_size".to_string(), state.world_size.to_string()),
    ]);
    let path = checkpoint_path(output_dir, state.step);
    lpl_tensor_io::save(&tensors, &meta, &path)?;
    let all = list_checkpoints(output_dir);
    if all.len() > keep.max(1) {
        for old in &all[..all.len() - keep.max(1)] {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(path)
}

fn field<'a>(meta: &'a BTreeMap<String, String>, key: &str, path: &Path) -> Result<&'a str> {
    meta.get(key).map(String::as_str).ok_or_else(|| TrainError::ConfigFile {
        path: path.to_path_buf(),
        message: format!("metadata `{key}` missing: not an lpl run checkpoint"),
    })
}

fn number<T: std::str::FromStr>(
    meta: &BTreeMap<String, String>,
    key: &str,
    path: &Path,
) -> Result<T> {
    field(meta, key, path)?.parse().map_err(|_| TrainError::ConfigFile {
        path: path.to_path_buf(),
        message: format!("metadata `{key}` is not a number"),
    })
}

/// Reads a checkpoint: its state and tensors. A truncated or corrupt file is an error naming
/// it.
pub fn load(path: &Path) -> Result<(RunState, BTreeMap<String, Tensor>)> {
    let state = read_state(path)?;
    let tensors = lpl_tensor_io::read_tensors(path)?;
    Ok((state, tensors))
}

/// The newest checkpoint of `output_dir` that reads and verifies (its recorded SHA-256),
/// with its state and tensors. Each newer one that does not is skipped with a warning
/// naming it and why; `Ok(None)` when there is no checkpoint at all, an error naming every
/// skipped file when none is valid.
#[allow(clippy::type_complexity)] // (path, state, tensors): what a resume needs at once
pub fn load_latest_valid(
    output_dir: &Path,
) -> Result<Option<(PathBuf, RunState, BTreeMap<String, Tensor>)>> {
    let all = list_checkpoints(output_dir);
    let mut skipped = Vec::new();
    for path in all.iter().rev() {
        match load(path) {
            Ok((state, tensors)) => {
                for why in &skipped {
                    tracing::warn!("skipped {why}");
                }
                return Ok(Some((path.clone(), state, tensors)));
            }
            Err(e) => skipped.push(format!("{}: {e}", path.display())),
        }
    }
    if skipped.is_empty() {
        return Ok(None);
    }
    Err(invalid(
        "output_dir",
        format!("no checkpoint of {} is valid: {}", output_dir.display(), skipped.join("; ")),
    ))
}

/// Fields of a run config that may change between a run and its resumption: the length of
/// the run and how often it logs and checkpoints. Any other change makes the checkpoints
/// those of another run.
const RESUMABLE_CHANGES: &[&str] = &[
    "train.steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "log.tensorboard",
    "log.profile",
];

/// Checks that the run in `output_dir`, if it has checkpoints, was trained with `config`
/// on `world_size` ranks up to the fields a resumption may change (`train.steps`,
/// `train.log_every`, `train.checkpoint_every`, `train.keep_checkpoints`, `log.*`, and
/// `train.batch_size` when the global batch, per-rank batch x ranks, is the same: the run
/// then trains on as it would have); otherwise the error names the run, each changed field
/// and both values.
pub fn check_same_run(output_dir: &Path, config: &RunConfig, world_size: usize) -> Result<()> {
    let Some(last) = list_checkpoints(output_dir).last().cloned() else { return Ok(()) };
    let state = read_state(&last)?;
    let parse = |text: &str, what: &Path| {
        text.parse::<toml::Table>().map_err(|e| TrainError::ConfigFile {
            path: what.to_path_buf(),
            message: e.to_string(),
        })
    };
    // the stored config as this version writes it (older checkpoints wrote e.g.
    // `schedule_preset` and `[model]` without `kind`): same meaning, same table
    let stored = crate::error::parse_toml::<RunConfig>(&state.config_toml, &last)
        .and_then(|c| c.to_toml())
        .unwrap_or_else(|_| state.config_toml.clone());
    let before = parse(&stored, &last)?;
    let now = parse(&config.to_toml()?, Path::new("<run config>"))?;
    let mut changed = Vec::new();
    diff_tables("", &before, &now, &mut changed);
    changed.retain(|(field, _, _)| !RESUMABLE_CHANGES.contains(&field.as_str()));
    let stored_batch = before
        .get("train")
        .and_then(|t| t.get("batch_size"))
        .and_then(toml::Value::as_integer)
        .and_then(|b| usize::try_from(b).ok());
    // the batch that matters is the global one (per-rank batch x ranks)
    if let Some(stored) = stored_batch
        && state.world_size != world_size
    {
        changed.retain(|(field, _, _)| field != "train.batch_size");
        let now = config.train.batch_size;
        if stored * state.world_size != now * world_size {
            changed.push((
                "global batch = train.batch_size x ranks".to_string(),
                format!("{stored} x {}", state.world_size),
                format!("{now} x {world_size}"),
            ));
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let list: Vec<String> =
        changed.iter().map(|(f, a, b)| format!("`{f}` was {a}, is now {b}")).collect();
    Err(invalid(
        "output_dir",
        format!(
            "{} holds a run trained with another config ({}): delete the directory to redo it with the new one, or restore the old value",
            output_dir.display(),
            list.join("; ")
        ),
    ))
}

/// Dotted paths of the values that differ between two TOML tables, with both values
/// (`(absent)` where one side lacks the key).
fn diff_tables(
    prefix: &str,
    a: &toml::Table,
    b: &toml::Table,
    out: &mut Vec<(String, String, String)>,
) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for key in keys {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match (a.get(key), b.get(key)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                diff_tables(&path, x, y, out)
            }
            (x, y) if x != y => {
                let show =
                    |v: Option<&toml::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
                out.push((path, show(x), show(y)));
            }
            _ => {}
        }
    }
}

/// The state of a checkpoint (its metadata only, no tensors read).
pub fn read_state(path: &Path) -> Result<RunState> {
    let meta = lpl_tensor_io::read_metadata(path)?;
    if field(&meta, "lpl.kind", path)? != KIND_RUN {
        return Err(invalid("checkpoint", format!("{} is not a run checkpoint", path.display())));
    }
    let cursor = field(&meta, "lpl.cursor", path)?;
    let (epoch, position) = cursor.split_once(',').unwrap_or(("", ""));
    let bad_cursor = || TrainError::ConfigFile {
        path: path.to_path_buf(),
        message: format!("bad cursor `{cursor}`"),
    };
    let state = RunState {
        step: number(&meta, "lpl.step", path)?,
        cursor: BatchCursor {
            epoch: epoch.parse().map_err(|_| bad_cursor())?,
            position: position.parse().map_err(|_| bad_cursor())?,
        },
        time_sampler_state: number(&meta, "lpl.time_sampler", path)?,
        adamw_step: number(&meta, "lpl.adamw_step", path)?,
        config_toml: field(&meta, "lpl.config", path)?.to_string(),
        codec_json: field(&meta, "lpl.codec", path)?.to_string(),
        world_size: if meta.contains_key("lpl.world_size") {
            number(&meta, "lpl.world_size", path)?
        } else {
            1
        },
    };
    Ok(state)
}

/// The tensors under `prefix` with it stripped (`model.` -> variable names).
pub fn strip_prefix(tensors: &BTreeMap<String, Tensor>, prefix: &str) -> BTreeMap<String, Tensor> {
    tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.shallow_clone())))
        .collect()
}
