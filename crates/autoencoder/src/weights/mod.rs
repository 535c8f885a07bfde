//! Reading weights files and loading them into a `VarStore` with every name and shape
//! checked. safetensors are read directly; `.pth` / `.pt` / `.bin` zip state dicts (as written
//! by `torch.save(state_dict)`) by [`pth`], which interprets the pickle without executing it.

pub mod pth;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::Tensor;
use tch::nn::VarStore;

use crate::error::{AutoencoderError, Result};

/// Named tensors read from one file, as stored (dtype of the file).
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    if !path.is_file() {
        return Err(AutoencoderError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    let tensors = match ext {
        "safetensors" => Tensor::read_safetensors(path),
        "pth" | "pt" | "bin" | "ckpt" => return pth::read(path),
        other => {
            return Err(AutoencoderError::Input(format!(
                "{}: unknown weights format `.{other}` (expected .safetensors, .pth, .pt or .bin)",
                path.display()
            )));
        }
    }
    .map_err(|e| AutoencoderError::Torch(format!("{}: {e}", path.display())))?;
    Ok(tensors.into_iter().collect())
}

/// Copies `tensors` into the variables of `vs`, converting each to the variable's dtype and
/// device. Every variable must be present with its exact shape, and every tensor must belong
/// to a variable; the first offender (in key order) is reported with `file`.
pub fn load_into(vs: &VarStore, tensors: &BTreeMap<String, Tensor>, file: &Path) -> Result<()> {
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let file: PathBuf = file.to_path_buf();
    for (key, var) in &variables {
        let src = tensors.get(key).ok_or_else(|| AutoencoderError::MissingTensor {
            file: file.clone(),
            key: key.clone(),
            expected: var.size(),
        })?;
        if src.size() != var.size() {
            return Err(AutoencoderError::ShapeMismatch {
                file: file.clone(),
                key: key.clone(),
                expected: var.size(),
                found: src.size(),
            });
        }
    }
    if let Some(key) = tensors.keys().find(|k| !variables.contains_key(*k)) {
        return Err(AutoencoderError::UnexpectedTensor { file, key: key.clone() });
    }
    tch::no_grad(|| -> Result<()> {
        for (key, var) in &variables {
            let mut var = var.shallow_clone();
            var.f_copy_(&tensors[key].f_to_kind(var.kind())?.f_to_device(var.device())?)?;
        }
        Ok(())
    })
}

/// [`read_tensors`] then [`load_into`].
pub fn load_file(vs: &VarStore, path: &Path) -> Result<()> {
    let tensors = read_tensors(path)?;
    load_into(vs, &tensors, path)
}
