//! Denoisers by name: the built-in `dit` and `unet` presets, and any denoiser a user
//! registers in their own binary ([`register_denoiser`]). Every command that builds a model
//! from a run config (`train`, `sample`, `eval`, `ablate`, `model-info`, and
//! [`TrainedRun::open`](crate::evaluation::TrainedRun::open)) goes through [`build`], so a
//! registered model works in all of them: a run config names it with `[model] kind =
//! "<name>"` and gives its own fields beside `kind`.
//!
//! Autoencoders have the same story in `lpl-autoencoder` (`register_format`): anything that
//! opens an autoencoder from a path opens a registered format too.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use lpl_denoiser::{Denoiser, Dit, DitConfig, UNet, UNetConfig};
use lpl_torch_ext::GlobalRng;
use tch::{Device, Kind};

use crate::error::{Result, TrainError, invalid};
use crate::run_config::{BuiltinModel, ModelConfig};

/// What a builder gets: its own fields of `[model]` (without `kind`), the data's shape and
/// the device. Weights are initialised from libtorch's generator, seeded by the caller.
pub struct DenoiserSpec<'a> {
    /// The `[model]` table without `kind`.
    pub fields: &'a toml::Table,
    /// `[C, h, w]` of the cache's latents: the model maps C channels to C.
    pub latent_shape: [i64; 3],
    /// Classes of the data (`None`: unconditional data).
    pub classes: Option<i64>,
    /// Where the weights live.
    pub device: Device,
}

/// The error a builder returns (kept as the source of [`TrainError::Model`]).
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

type Builder = Arc<
    dyn Fn(&DenoiserSpec<'_>) -> std::result::Result<Box<dyn Denoiser>, BuildError> + Send + Sync,
>;

fn registry() -> &'static RwLock<BTreeMap<String, Builder>> {
    static REGISTRY: RwLock<BTreeMap<String, Builder>> = RwLock::new(BTreeMap::new());
    &REGISTRY
}

/// The built-in kinds.
pub const BUILTIN_KINDS: [&str; 2] = ["dit", "unet"];

/// Registers `builder` under `kind` (replacing an earlier registration of the same name);
/// the built-in names cannot be taken.
pub fn register_denoiser<F>(kind: &str, builder: F) -> Result<()>
where
    F: Fn(&DenoiserSpec<'_>) -> std::result::Result<Box<dyn Denoiser>, BuildError>
        + Send
        + Sync
        + 'static,
{
    if BUILTIN_KINDS.contains(&kind) || kind.is_empty() {
        return Err(invalid("model.kind", format!("`{kind}` is reserved")));
    }
    let mut map = registry().write().unwrap_or_else(|poisoned| poisoned.into_inner());
    map.insert(kind.to_string(), Arc::new(builder));
    Ok(())
}

/// Every kind a run config may name: the built-ins, then the registered ones.
pub fn kinds() -> Vec<String> {
    let map = registry().read().unwrap_or_else(|poisoned| poisoned.into_inner());
    BUILTIN_KINDS.iter().map(|k| k.to_string()).chain(map.keys().cloned()).collect()
}

fn registered(kind: &str) -> Option<Builder> {
    registry().read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(kind).cloned()
}

/// Checks that `config` names a known kind (and a known preset for the built-ins).
pub fn check(config: &ModelConfig) -> Result<()> {
    match config {
        ModelConfig::Dit(m) => match (&m.pretrained, m.preset.is_empty()) {
            (Some(_), false) => Err(invalid(
                "model.preset",
                "give `preset` or `pretrained` (whose file gives the architecture), not both",
            )),
            (Some(_), true) if m.learn_sigma => Err(invalid(
                "model.learn_sigma",
                "a pretrained model's file says whether it learns sigma: leave it out",
            )),
            (Some(_), true) => Ok(()),
            (None, _) => DitConfig::preset(&m.preset)
                .map(|_| ())
                .map_err(|e| invalid("model.preset", e.to_string())),
        },
        ModelConfig::Unet(m) if m.pretrained.is_some() || m.learn_sigma || m.heads.is_some() => {
            Err(invalid(
                "model",
                "`pretrained`, `heads` and `learn_sigma` are for DiT models (kind = \"dit\")",
            ))
        }
        ModelConfig::Unet(m) => UNetConfig::preset(&m.preset)
            .map(|_| ())
            .map_err(|e| invalid("model.preset", e.to_string())),
        ModelConfig::Registered { kind, .. } if registered(kind).is_none() => Err(invalid(
            "model.kind",
            format!(
                "no denoiser `{kind}` is registered in this program; known: {}",
                kinds().join(", ")
            ),
        )),
        ModelConfig::Registered { .. } => Ok(()),
    }
}

/// Builds the denoiser `config` describes for latents `latent_shape` and `classes`, its
/// weights initialised from libtorch's generator seeded with `seed`.
pub fn build(
    config: &ModelConfig,
    latent_shape: [i64; 3],
    classes: Option<i64>,
    seed: u64,
    device: Device,
) -> Result<Box<dyn Denoiser>> {
    check(config)?;
    let _rng = GlobalRng::seeded(seed as i64);
    match config {
        ModelConfig::Dit(m) => build_dit(m, latent_shape, classes, device),
        ModelConfig::Unet(m) => build_unet(m, latent_shape, classes, device),
        ModelConfig::Registered { kind, fields } => {
            let builder = registered(kind).ok_or_else(|| invalid("model.kind", kind.clone()))?;
            let spec = DenoiserSpec { fields, latent_shape, classes, device };
            builder(&spec).map_err(|source| TrainError::Model { kind: kind.clone(), source })
        }
    }
}

fn build_dit(
    m: &BuiltinModel,
    [c, h, _]: [i64; 3],
    classes: Option<i64>,
    device: Device,
) -> Result<Box<dyn Denoiser>> {
    if let Some(path) = &m.pretrained {
        return pretrained_dit(path, m, c, classes, device);
    }
    let mut d = DitConfig::preset(&m.preset).map_err(|e| invalid("model.preset", e.to_string()))?;
    d.in_channels = c;
    d.sample_size = h;
    if m.learn_sigma {
        d.out_channels = Some(2 * c);
    }
    // unconditional data: one class that is never used (every label is the null class)
    d.num_embeds_ada_norm = Some(classes.unwrap_or(1));
    if let Some(p) = m.class_dropout_prob {
        d.class_dropout_prob = p;
    }
    Ok(Box::new(Dit::new(&d, device, Kind::Float)?))
}

/// A published DiT for latents of `channels` channels and data of `classes` classes (its
/// own architecture; other latent sizes run with the rescaled position embedding).
fn pretrained_dit(
    path: &std::path::Path,
    m: &BuiltinModel,
    channels: i64,
    classes: Option<i64>,
    device: Device,
) -> Result<Box<dyn Denoiser>> {
    let mut dit = Dit::from_pretrained(path, m.heads, device, Kind::Float)?;
    if let Some(p) = m.class_dropout_prob {
        dit.set_class_dropout_prob(p);
    }
    let config = dit.config();
    if config.in_channels != channels {
        return Err(invalid(
            "model.pretrained",
            format!(
                "{} takes {}-channel latents, the data has {channels}",
                path.display(),
                config.in_channels
            ),
        ));
    }
    let model_classes = config.num_embeds_ada_norm.unwrap_or(0);
    if let Some(k) = classes
        && k > model_classes
    {
        return Err(invalid(
            "model.pretrained",
            format!("{} knows {model_classes} classes, the data has {k}", path.display()),
        ));
    }
    Ok(Box::new(dit))
}

fn build_unet(
    m: &BuiltinModel,
    [c, _, _]: [i64; 3],
    classes: Option<i64>,
    device: Device,
) -> Result<Box<dyn Denoiser>> {
    let mut u =
        UNetConfig::preset(&m.preset).map_err(|e| invalid("model.preset", e.to_string()))?;
    u.in_channels = c;
    u.out_channels = c;
    u.num_class_embeds = Some(classes.unwrap_or(1) + 1);
    if let Some(p) = m.class_dropout_prob {
        u.class_dropout_prob = p;
    }
    Ok(Box::new(UNet::new(&u, device, Kind::Float)?))
}
