//! Self-describing autoencoder files and opening any supported autoencoder from a path.
//!
//! Our checkpoints are safetensors whose metadata holds `lpl.kind = "autoencoder_kl"`, the
//! model config (`lpl.config`, diffusers' config.json fields) and the codec (`lpl.codec`).

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::autoencoder::Autoencoder;
use crate::codec::LatentCodec;
use crate::error::{AutoencoderError, Result, invalid};
use crate::kl::{AutoencoderKl, AutoencoderKlConfig};
use crate::taesd::{Taesd, find_pair};

/// Metadata key naming the kind of file.
pub const KIND_KEY: &str = "lpl.kind";
/// `KIND_KEY` value of an AutoencoderKL checkpoint.
pub const KIND_KL: &str = "autoencoder_kl";

/// Writes `ae` (weights, config, codec and any `extra` metadata) atomically to `path`.
pub fn save_kl(ae: &AutoencoderKl, path: &Path, extra: &BTreeMap<String, String>) -> Result<()> {
    let mut meta = extra.clone();
    meta.insert(KIND_KEY.into(), KIND_KL.into());
    meta.insert(
        "lpl.config".into(),
        serde_json::to_string(ae.config()).map_err(|e| invalid("config", e.to_string()))?,
    );
    meta.insert("lpl.codec".into(), ae.codec().to_json());
    let mut tensors: Vec<(String, Tensor)> = ae.var_store().variables().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    lpl_tensor_io::save(&tensors, &meta, path)?;
    Ok(())
}

fn meta_field<'a>(meta: &'a BTreeMap<String, String>, key: &str, path: &Path) -> Result<&'a str> {
    meta.get(key).map(String::as_str).ok_or_else(|| AutoencoderError::ConfigFile {
        path: path.to_path_buf(),
        message: format!("metadata key `{key}` is missing: not an lpl autoencoder checkpoint"),
    })
}

/// Loads a checkpoint written by [`save_kl`], weights converted to `kind`.
pub fn load_kl(path: &Path, device: Device, kind: Kind) -> Result<AutoencoderKl> {
    let meta = lpl_tensor_io::read_metadata(path)?;
    let found = meta_field(&meta, KIND_KEY, path)?;
    if found != KIND_KL {
        return Err(AutoencoderError::ConfigFile {
            path: path.to_path_buf(),
            message: format!("holds a `{found}`, not an autoencoder"),
        });
    }
    let config: AutoencoderKlConfig =
        serde_json::from_str(meta_field(&meta, "lpl.config", path)?).map_err(|e| {
            AutoencoderError::ConfigFile { path: path.to_path_buf(), message: e.to_string() }
        })?;
    let codec = LatentCodec::from_json(meta_field(&meta, "lpl.codec", path)?)?;
    let mut ae = AutoencoderKl::new(&config, device, kind)?;
    ae.set_codec(codec);
    lpl_tensor_io::load_file(ae.var_store(), path)?;
    Ok(ae)
}

/// Opens a registered format: `None` when `path` is not one of its files, else the
/// autoencoder or the error opening it.
pub type FormatOpener =
    dyn Fn(&Path, Device, Kind) -> Option<Result<Box<dyn Autoencoder>>> + Send + Sync;

fn formats() -> &'static std::sync::RwLock<Vec<(String, std::sync::Arc<FormatOpener>)>> {
    static FORMATS: std::sync::RwLock<Vec<(String, std::sync::Arc<FormatOpener>)>> =
        std::sync::RwLock::new(Vec::new());
    &FORMATS
}

/// Registers a user's autoencoder format under `name` (replacing an earlier one of that
/// name): [`open`], and so every command and config that takes an autoencoder path, asks
/// the registered formats first, in registration order. The opener returns `None` for a
/// path that is not its format (decide by extension or a marker file, cheaply).
pub fn register_format<F>(name: &str, opener: F)
where
    F: Fn(&Path, Device, Kind) -> Option<Result<Box<dyn Autoencoder>>> + Send + Sync + 'static,
{
    let mut list = formats().write().unwrap_or_else(|poisoned| poisoned.into_inner());
    list.retain(|(n, _)| n != name);
    list.push((name.to_string(), std::sync::Arc::new(opener)));
}

/// Opens an autoencoder from `path`: a registered format ([`register_format`]), a diffusers
/// `vae/` folder (config.json), a folder with a TAESD `<name>_encoder` / `<name>_decoder`
/// pair, or a checkpoint of ours.
pub fn open(path: &Path, device: Device, kind: Kind) -> Result<Box<dyn Autoencoder>> {
    let registered: Vec<_> = formats()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .map(|(_, f)| f.clone())
        .collect();
    for opener in registered {
        if let Some(opened) = opener(path, device, kind) {
            return opened;
        }
    }
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(Box::new(AutoencoderKl::from_diffusers_dir(path, device, kind)?));
        }
        if find_pair(path).is_ok() {
            return Ok(Box::new(Taesd::from_dir(path, device, kind)?));
        }
    } else if path.is_file() {
        return Ok(Box::new(load_kl(path, device, kind)?));
    }
    Err(invalid(
        "ae",
        format!(
            "{} is neither a diffusers VAE folder (config.json), a folder with a TAESD encoder/decoder pair, \
             nor an lpl autoencoder checkpoint (.safetensors)",
            path.display()
        ),
    ))
}
