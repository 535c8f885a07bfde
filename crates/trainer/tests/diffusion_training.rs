//! The diffusion training loop on a tiny synthetic latent cache: exact resume (a run of 2N
//! steps equals N steps, a checkpoint, and a resumed run to 2N: bit-identical losses after N
//! and bit-identical final weights), LPL on, init-from, config errors, damaged checkpoints.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lpl_autoencoder::{AutoencoderKl, AutoencoderKlConfig, checkpoint};
use lpl_loss::LplConfig;
use lpl_torch_ext::GlobalRng;
use lpl_trainer::cache_building::{CacheOptions, build_cache};
use lpl_trainer::diffusion_training::{Start, train, train_with_objective};
use lpl_trainer::ema::EmaConfig;
use lpl_trainer::objective::{Loss, MicroBatch, Mse, Objective};
use lpl_trainer::run_checkpoint;
use lpl_trainer::run_config::RunConfig;
use lpl_trainer::training_hooks::{Hook, StepEnd};
use tch::{Device, Kind, Tensor};

/// A tiny AE checkpoint and a cache of 64 smooth 1-channel 16x16 images with 4 classes.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    setup_with(dir, true)
}

/// The test autoencoder (the same weights on every call: seeded) and a cache of it, with or
/// without flipped copies (`cache`, `cache-noflip`).
fn setup_with(dir: &Path, flip: bool) -> (PathBuf, PathBuf) {
    let ae_path = dir.join("ae.safetensors");
    let cache = dir.join(if flip { "cache" } else { "cache-noflip" });
    if cache.join("manifest.json").exists() {
        return (ae_path, cache);
    }
    tch::manual_seed(0);
    let config = AutoencoderKlConfig {
        in_channels: 1,
        out_channels: 1,
        block_out_channels: vec![8, 8, 8],
        norm_num_groups: 4,
        scaling_factor: 1.0,
        ..AutoencoderKlConfig::default()
    };
    let mut ae = AutoencoderKl::new(&config, Device::Cpu, Kind::Float).unwrap();
    checkpoint::save_kl(&ae, &ae_path, &BTreeMap::new()).unwrap();
    lpl_autoencoder::Autoencoder::set_requires_grad(&mut ae, false);
    let coarse = Tensor::rand([64, 1, 4, 4], (Kind::Float, Device::Cpu));
    let images =
        (coarse.upsample_bilinear2d([16, 16], false, None, None) * 255.0).to_kind(Kind::Uint8);
    let labels = Tensor::arange(64, (Kind::Int64, Device::Cpu)).remainder(4);
    let options = CacheOptions {
        pad_to: None,
        shard_size: 40,
        batch: 16,
        flip,
        num_classes: Some(4),
        autoencoder_name: "test".into(),
    };
    build_cache(&ae, &images, Some(&labels), &options, &cache, Device::Cpu).unwrap();
    (ae_path, cache)
}

fn config(dir: &Path, out: &str, steps: usize, lpl: bool) -> RunConfig {
    config_with(dir, out, steps, lpl, "")
}

/// [`config`] with `extra` TOML appended (further sections).
fn config_with(dir: &Path, out: &str, steps: usize, lpl: bool, extra: &str) -> RunConfig {
    let (ae, cache) = setup(dir);
    let lpl = if lpl {
        "[loss.lpl]\nnorm = \"pred_stats\"\nmask = true\nmask_source = \"target\"\nlayer_weights = \"inverse_upscale\"\n\
         spatial_reduce = \"masked_mean\"\ndistance = \"l2\"\ngate = { kind = \"snr\", tau = 0.5 }\n\
         batch_reduce = \"kept\"\npost_quant_conv = true\n"
    } else {
        ""
    };
    let text = format!(
        r#"
output_dir = "{out}"
autoencoder = "{ae}"
[data]
cache = "{cache}"
flip = true
[model]
preset = "dit-tiny"
[diffusion]
schedule = "dit"
parameterization = "v"
[optim]
lr = 1e-3
warmup_steps = 3
[train]
steps = {steps}
batch_size = 8
log_every = 1
checkpoint_every = 3
seed = 5
{lpl}
[sample]
sampler = {{ sampler = "ddim", steps = 4 }}
guidance = {{ scale = 1.5 }}
count = 8
{extra}
"#,
        out = dir.join(out).display(),
        ae = ae.display(),
        cache = cache.display(),
    );
    RunConfig::from_toml(&text, Path::new("test.toml")).unwrap()
}

fn losses(out: &Path) -> BTreeMap<u64, f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// libtorch's generator is process-global: tests that train hold it for their whole run
/// (cargo test threads would otherwise reseed each other's noise), in a fresh directory.
fn isolated(name: &str) -> (GlobalRng, PathBuf) {
    (GlobalRng::lock(), scratch(name))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lpl-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn resume_is_bit_identical_with_lpl_on() {
    let (_rng, dir) = isolated("resume");
    let full = config(&dir, "full", 12, true);
    let outcome = train(&full, Start::Fresh, Device::Cpu).unwrap();
    assert_eq!(outcome.step, 12);
    assert!(outcome.grid.as_ref().is_some_and(|g| g.exists()));
    let half = config(&dir, "split", 6, true);
    train(&half, Start::Fresh, Device::Cpu).unwrap();
    let rest = config(&dir, "split", 12, true);
    train(&rest, Start::Resume, Device::Cpu).unwrap();
    let (a, b) = (losses(&dir.join("full")), losses(&dir.join("split")));
    assert_eq!(a.len(), 12);
    for step in 1..=12 {
        assert_eq!(
            a[&step].to_bits(),
            b[&step].to_bits(),
            "loss at step {step}: {} vs {}",
            a[&step],
            b[&step]
        );
    }
    let (_, wa) =
        run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join("full"), 12)).unwrap();
    let (_, wb) =
        run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join("split"), 12)).unwrap();
    assert_eq!(wa.len(), wb.len());
    for (k, v) in &wa {
        assert!(v.equal(&wb[k]), "{k} differs");
    }
    // the LPL terms were logged
    let last = std::fs::read_to_string(dir.join("full/metrics.jsonl")).unwrap();
    assert!(last.contains("lpl_kept_fraction"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn init_from_and_guard_rails() {
    let (_rng, dir) = isolated("init");
    let pre = config(&dir, "pre", 3, false);
    let outcome = train(&pre, Start::Fresh, Device::Cpu).unwrap();
    // a fresh run refuses a directory with checkpoints
    let err = train(&pre, Start::Fresh, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
    let post = config(&dir, "post", 3, true);
    let post_outcome =
        train(&post, Start::InitFrom(outcome.checkpoint.clone()), Device::Cpu).unwrap();
    assert_eq!(post_outcome.step, 3);
    // a truncated checkpoint is an error naming the file
    let bytes = std::fs::read(&outcome.checkpoint).unwrap();
    let damaged = dir.join("damaged.safetensors");
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let msg = run_checkpoint::load(&damaged).unwrap_err().to_string();
    assert!(msg.contains("damaged.safetensors"), "{msg}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn config_errors_name_the_field() {
    let (_rng, dir) = isolated("config");
    let good = toml::to_string(&config(&dir, "x", 3, false)).unwrap();
    let err =
        |text: String| RunConfig::from_toml(&text, Path::new("run.toml")).unwrap_err().to_string();
    let unknown = err(good.replace("batch_size", "batchsize"));
    assert!(unknown.contains("batchsize") && unknown.contains("run.toml"), "{unknown}");
    assert!(
        err(good.replace("steps = 3", "steps = \"three\"")).contains("invalid type"),
        "wrong type is named"
    );
    assert!(
        err(good.replace("parameterization = \"v\"", "parameterization = \"flow\""))
            .contains("`diffusion.parameterization`")
    );
    assert!(
        err(good.replace("preset = \"dit-tiny\"", "preset = \"vit\"")).contains("`model.preset`")
    );
    let mut missing = config(&dir, "y", 3, false);
    missing.data.cache = dir.join("nope");
    let msg = train(&missing, Start::Fresh, Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("nope") && msg.contains("manifest.json"), "{msg}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn periodic_evaluation_keeps_the_best_checkpoint() {
    let _rng = GlobalRng::lock();
    lpl_test_assets::Asset::EffNetWeights.require();
    let dir = scratch("eval");
    // real images: a folder of 200 smooth grey 16x16 PNGs (its test split: every 20th, 10)
    let real = (Tensor::rand([200, 1, 4, 4], (Kind::Float, Device::Cpu)).upsample_bilinear2d(
        [16, 16],
        false,
        None,
        None,
    ))
    .clamp(0.0, 1.0);
    lpl_data::folder::write_pngs(&real, &dir.join("real"), 0).unwrap();
    let mut c = config(&dir, "run", 9, false);
    c.eval = Some(lpl_trainer::run_config::PeriodicEval {
        every: 3,
        count: 8,
        sampler: lpl_schedulers::SamplerConfig::new(lpl_schedulers::SamplerKind::Ddim, 3),
        guidance: lpl_schedulers::Guidance::new(1.0),
        seed: 0,
        batch: 0,
        data: lpl_data::DatasetConfig {
            dataset: "folder".into(),
            dir: Some(dir.join("real")),
            channels: Some(1),
            ..lpl_data::DatasetConfig::fashion_mnist(None, None)
        },
        effnet: None,
    });
    c.validate().unwrap();
    train(&c, Start::Fresh, Device::Cpu).unwrap();
    let out = dir.join("run");
    let evals: Vec<(u64, f64)> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("eval").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["eval"]["fd"].as_f64().unwrap()))
        .collect();
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 6, 9]);
    let (best_step, best_fd) = evals.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("best.json")).unwrap()).unwrap();
    assert_eq!(best["step"].as_u64(), Some(best_step));
    assert_eq!(best["fd"].as_f64(), Some(best_fd));
    // best.safetensors is that step's checkpoint, byte for byte (when it is still kept)
    let kept = run_checkpoint::checkpoint_path(&out, best_step as usize);
    if kept.exists() {
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            std::fs::read(out.join("best.safetensors")).unwrap()
        );
    }
    let (state, _) = run_checkpoint::load(&out.join("best.safetensors")).unwrap();
    assert_eq!(state.step as u64, best_step);
    // eval.every must be a multiple of checkpoint_every
    let mut bad = c.clone();
    bad.eval.as_mut().unwrap().every = 4;
    let msg = bad.validate().unwrap_err().to_string();
    assert!(msg.contains("eval.every"), "{msg}");
}

#[test]
fn gradient_accumulation_resumes_exactly_and_sees_more_samples() {
    let (_rng, dir) = isolated("accum");
    let with_accum = |out: &str, steps: usize| {
        let mut c = config(&dir, out, steps, false);
        c.train.grad_accum = 2;
        c
    };
    let full = train(&with_accum("full", 6), Start::Fresh, Device::Cpu).unwrap();
    train(&with_accum("split", 3), Start::Fresh, Device::Cpu).unwrap();
    train(&with_accum("split", 6), Start::Resume, Device::Cpu).unwrap();
    let (a, b) = (losses(&dir.join("full")), losses(&dir.join("split")));
    for step in 4..=6 {
        assert_eq!(a[&step].to_bits(), b[&step].to_bits(), "step {step}");
    }
    // two micro-batches of 8 per step: the data cursor advanced by 16 samples per step
    let (state, _) = run_checkpoint::load(&full.checkpoint).unwrap();
    let per_epoch = 64 / 8; // 64 cached samples, batches of 8
    let batches = 6 * 2;
    assert_eq!(state.cursor.epoch as usize, batches / per_epoch);
    assert_eq!(state.cursor.position, (batches % per_epoch) * 8);
    // different from a run without accumulation
    let single = train(&config(&dir, "single", 6, false), Start::Fresh, Device::Cpu).unwrap();
    assert_ne!(losses(&dir.join("single"))[&6].to_bits(), a[&6].to_bits());
    let _ = single;
    let mut bad = config(&dir, "bad", 6, false);
    bad.train.grad_accum = 0;
    assert!(bad.validate().unwrap_err().to_string().contains("train.grad_accum"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bf16_autocast_trains_close_to_f32_with_f32_master_weights() {
    let (_rng, dir) = isolated("bf16");
    let f32_run = config(&dir, "f32", 4, true);
    train(&f32_run, Start::Fresh, Device::Cpu).unwrap();
    let bf16 = config_with(&dir, "bf16", 4, true, "[precision]\ncompute = \"bf16\"\n");
    let outcome = train(&bf16, Start::Fresh, Device::Cpu).unwrap();
    assert_eq!(outcome.skipped_steps, 0);
    let (a, b) = (losses(&dir.join("f32")), losses(&dir.join("bf16")));
    for step in 1..=4u64 {
        let (x, y) = (a[&step], b[&step]);
        assert!(y.is_finite());
        // the same data, noise and t: bf16 products (8 mantissa bits) move the loss by well
        // under 5% on this tiny DiT, but they do move it (the region is really active; at step
        // 1 the adaLN-zero output layer predicts exactly 0 in both, so from step 2); the gap is
        // bf16 operand rounding, the same on any CPU (native bf16 or not: f32 accumulation)
        assert!((x - y).abs() <= 0.05 * x.abs(), "step {step}: f32 {x} vs bf16 {y}");
        if step == 2 {
            assert_ne!(x.to_bits(), y.to_bits(), "bf16 autocast changed nothing");
        }
    }
    let (state, tensors) =
        run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join("bf16"), 4)).unwrap();
    // master weights, EMA and AdamW moments stay f32; the stored config says bf16
    for (name, t) in &tensors {
        assert_eq!(t.kind(), Kind::Float, "{name}");
    }
    assert!(state.config_toml.contains("compute = \"bf16\""), "{}", state.config_toml);
    // the autocast state does not leak out of the training loop
    assert!(!lpl_torch_ext::autocast::state(Device::Cpu).unwrap().0);
    // fp16 is refused by name
    let bad = toml_with_precision(&bf16, "compute = \"fp16\"");
    let err = RunConfig::from_toml(&bad, Path::new("fp16.toml")).unwrap_err().to_string();
    assert!(err.contains("fp16.toml") && err.contains("fp16") && err.contains("bf16"), "{err}");
}

/// `config` as TOML with its `[precision]` body replaced by `body`.
fn toml_with_precision(config: &RunConfig, body: &str) -> String {
    let text = config.to_toml().unwrap();
    let start = text.find("[precision]").unwrap();
    let end = text[start + 1..].find("\n[").map_or(text.len(), |i| start + 1 + i);
    format!("{}[precision]\n{body}\n{}", &text[..start], &text[end..])
}

/// A denoiser whose training-mode forward passes number `bad` return NaN (the graph kept, so
/// backward runs and yields NaN gradients), or, with `finite_loss`, return their exact output
/// through a branch whose backward is NaN (a finite loss with non-finite gradients).
struct NanAt {
    inner: Box<dyn lpl_denoiser::Denoiser>,
    calls: std::cell::Cell<usize>,
    bad: fn(usize) -> bool,
    finite_loss: bool,
}

impl lpl_denoiser::Denoiser for NanAt {
    fn forward_t(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &lpl_denoiser::Conditioning,
        train: bool,
    ) -> lpl_denoiser::Result<Tensor> {
        let out = self.inner.forward_t(x, t, cond, train)?;
        if !train {
            return Ok(out);
        }
        let call = self.calls.get();
        self.calls.set(call + 1);
        Ok(match ((self.bad)(call), self.finite_loss) {
            (false, _) => out,
            (true, false) => out * f64::NAN,
            // forward: out + 0; backward: sqrt's gradient at 0 is 0 / 0 = NaN
            (true, true) => {
                let poison = (&out * 0.0).abs().sqrt() * 0.0;
                out + poison
            }
        })
    }
    fn in_channels(&self) -> i64 {
        self.inner.in_channels()
    }
    fn out_channels(&self) -> i64 {
        self.inner.out_channels()
    }
    fn num_classes(&self) -> Option<i64> {
        self.inner.num_classes()
    }
    fn var_store(&self) -> &tch::nn::VarStore {
        self.inner.var_store()
    }
}

fn nan_model(config: &RunConfig, bad: fn(usize) -> bool) -> NanAt {
    let inner =
        lpl_trainer::diffusion_training::build_model(config, [4, 4, 4], Some(4), Device::Cpu)
            .unwrap();
    NanAt { inner, calls: std::cell::Cell::new(0), bad, finite_loss: false }
}

/// Before the skip decision looked at the gradients, this run trained on NaN gradients: the
/// loss of steps 3 and 4 is finite, their gradients are not.
#[test]
fn a_finite_loss_with_non_finite_gradients_is_skipped_too() {
    let (_rng, dir) = isolated("nonfinite-grad");
    for clip in [None, Some(1.0)] {
        let name = if clip.is_some() { "clip" } else { "noclip" };
        let mut config = config(&dir, name, 5, true);
        config.optim.grad_clip = clip;
        config.train.checkpoint_every = 1;
        config.train.keep_checkpoints = 10;
        let model =
            NanAt { finite_loss: true, ..nan_model(&config, |call| call == 2 || call == 3) };
        let outcome = lpl_trainer::diffusion_training::train_model(
            &config,
            &model,
            Start::Fresh,
            Device::Cpu,
        )
        .unwrap();
        assert_eq!((outcome.step, outcome.skipped_steps), (5, 2), "{name}");
        assert!(outcome.last_loss.is_finite());
        let load = |s| run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join(name), s));
        let ((s2, w2), (s4, w4)) = (load(2).unwrap(), load(4).unwrap());
        assert_eq!((s2.adamw_step, s4.adamw_step), (2, 2), "{name}");
        for (k, a) in &w2 {
            assert!(a.equal(&w4[k]), "{name}: {k} changed during skipped steps");
        }
        let (_, w5) = load(5).unwrap();
        assert!(w5.values().all(|t| t.isfinite().all().int64_value(&[]) == 1), "{name}");
    }
}

#[test]
fn non_finite_steps_are_skipped_on_the_device_and_a_run_of_them_stops_training() {
    let (_rng, dir) = isolated("nonfinite");
    let mut config = config(&dir, "skip", 6, true);
    config.train.checkpoint_every = 1;
    config.train.keep_checkpoints = 10;
    config.train.log_every = 3;
    // steps 3 and 4 (forward calls 2 and 3) produce NaN
    let model = nan_model(&config, |call| call == 2 || call == 3);
    let outcome =
        lpl_trainer::diffusion_training::train_model(&config, &model, Start::Fresh, Device::Cpu)
            .unwrap();
    assert_eq!((outcome.step, outcome.skipped_steps), (6, 2));
    // the skipped steps changed nothing: model, EMA and AdamW state after step 4 are those
    // after step 2, bit for bit, and the update count says 2
    let (s2, w2) =
        run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join("skip"), 2)).unwrap();
    let (s4, w4) =
        run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join("skip"), 4)).unwrap();
    assert_eq!((s2.adamw_step, s4.adamw_step), (2, 2));
    assert_eq!(w2.len(), w4.len());
    for (name, a) in &w2 {
        assert!(a.equal(&w4[name]), "{name} changed during skipped steps");
    }
    let (s6, w6) =
        run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join("skip"), 6)).unwrap();
    assert_eq!(s6.adamw_step, 4);
    assert!(w6.values().all(|t| t.isfinite().all().int64_value(&[]) == 1));
    assert!(
        w6.iter().any(|(k, t)| k.starts_with("model.") && !t.equal(&w4[k])),
        "the finite steps 5 and 6 updated the model"
    );
    // logged losses are those of the finite steps
    assert!(losses(&dir.join("skip")).values().all(|l| l.is_finite()));

    // every step from the third on is NaN: stops once 3 in a row are seen, naming the count
    let mut config = config_with(&dir, "stop", 20, false, "");
    config.train.max_nonfinite = 3;
    let model = nan_model(&config, |call| call >= 2);
    let err =
        lpl_trainer::diffusion_training::train_model(&config, &model, Start::Fresh, Device::Cpu)
            .err()
            .unwrap()
            .to_string();
    assert!(err.contains("3 training steps in a row had a non-finite loss"), "{err}");
    assert!(err.contains("stopped at step 5"), "{err}");
}

/// A run directory remembers its config: resuming it with a longer schedule is fine, with an
/// edited loss or seed it is refused with the fields named (the ablation reuses run
/// directories by name, so an edited variant that kept its name was silently not rerun).
#[test]
fn a_run_directory_refuses_another_config() {
    let (_rng, dir) = isolated("same-run");
    let config = config(&dir, "run", 2, true);
    lpl_trainer::diffusion_training::train(&config, Start::Fresh, Device::Cpu).unwrap();
    let out = &config.output_dir;
    run_checkpoint::check_same_run(out, &config, 1).unwrap();
    let mut longer = config.clone();
    longer.train.steps = 4;
    longer.train.log_every = 2;
    run_checkpoint::check_same_run(out, &longer, 1).unwrap();
    // the same global batch on other ranks trains on as this run would; another does not
    assert_eq!(
        run_checkpoint::read_state(&run_checkpoint::list_checkpoints(out)[0]).unwrap().world_size,
        1
    );
    let batch = config.train.batch_size;
    assert!(batch.is_multiple_of(2), "the test config's batch splits over 2 ranks");
    let mut halves = config.clone();
    halves.train.batch_size = batch / 2;
    run_checkpoint::check_same_run(out, &halves, 2).unwrap();
    let err = run_checkpoint::check_same_run(out, &halves, 1).unwrap_err().to_string();
    assert!(
        err.contains(&format!("`train.batch_size` was {batch}, is now {}", batch / 2)),
        "{err}"
    );
    let err = run_checkpoint::check_same_run(out, &config, 2).unwrap_err().to_string();
    assert!(err.contains(&format!("was {batch} x 1, is now {batch} x 2")), "{err}");
    let mut edited = config.clone();
    edited.train.seed += 1;
    if let Some(lpl) = edited.loss.lpl.as_mut() {
        lpl.weight = 2.0;
    }
    let err = run_checkpoint::check_same_run(out, &edited, 1).unwrap_err().to_string();
    assert!(err.contains(&out.display().to_string()), "{err}");
    let seed = config.train.seed;
    assert!(err.contains(&format!("`train.seed` was {seed}, is now {}", seed + 1)), "{err}");
    assert!(err.contains("`loss.lpl.weight` was 1.0, is now 2.0"), "{err}");
    assert!(!err.contains("train.steps"), "{err}");
    // a directory without checkpoints is anybody's
    run_checkpoint::check_same_run(&dir.join("empty"), &edited, 1).unwrap();
}

/// `metrics.jsonl` after a resume holds each step once (a run killed after logging past its
/// last checkpoint used to log those steps again), and every value of a line is a mean over
/// its log window: with log_every = 2 the two steps' losses average to the line's loss.
#[test]
fn metrics_hold_each_step_once_after_a_resume_and_average_the_window() {
    let (_rng, dir) = isolated("metrics");
    let lines = |out: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let mut config = config(&dir, "m", 4, true);
    config.train.checkpoint_every = 2;
    config.train.log_every = 1;
    train(&config, Start::Fresh, Device::Cpu).unwrap();
    let every_step = lines(&config.output_dir);
    // killed after logging steps 3 and 4 but before checkpoint 4 was written
    std::fs::remove_file(run_checkpoint::checkpoint_path(&config.output_dir, 4)).unwrap();
    train(&config, Start::Resume, Device::Cpu).unwrap();
    let after = lines(&config.output_dir);
    let steps: Vec<u64> = after.iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3, 4], "{after:?}");
    assert_eq!(after[3]["loss"], every_step[3]["loss"], "the resumed step 4 is the same step");
    for v in &after {
        for key in ["loss", "mse", "grad_norm", "lpl", "lpl_kept_fraction"] {
            assert!(v[key].as_f64().is_some_and(f64::is_finite), "{key} in {v}");
        }
        assert_eq!(v["skipped"], 0.0);
    }

    let mut windowed = config_with(&dir, "w", 4, true, "");
    windowed.train.log_every = 2;
    train(&windowed, Start::Fresh, Device::Cpu).unwrap();
    let w = lines(&windowed.output_dir);
    assert_eq!(w.len(), 2);
    for (line, pair) in w.iter().zip([[0, 1], [2, 3]]) {
        for key in ["loss", "mse", "grad_norm", "lpl"] {
            let mean = (every_step[pair[0]][key].as_f64().unwrap()
                + every_step[pair[1]][key].as_f64().unwrap())
                / 2.0;
            let got = line[key].as_f64().unwrap();
            // the same steps (same seeds, same data order); f32 sums of two values
            assert!((got - mean).abs() <= 1e-6 * mean.abs().max(1.0), "{key}: {got} vs {mean}");
        }
    }
}

/// `data.flip` asks for flipped latents; a cache built without them is an error naming the
/// field and the cache (it used to train without flips, silently).
#[test]
fn flip_on_a_cache_without_flips_is_refused() {
    let (_rng, dir) = isolated("flip");
    let mut config = config(&dir, "f", 1, false);
    config.data.cache = setup_with(&dir, false).1;
    config.data.flip = true;
    let err = train(&config, Start::Fresh, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("data.flip") && err.contains("no flipped copies"), "{err}");
    assert!(err.contains(&config.data.cache.display().to_string()), "{err}");
}

/// A user's objective: twice the MSE, logged as `double_mse`.
struct DoubleMse;

impl Objective for DoubleMse {
    fn loss(&self, batch: &MicroBatch<'_>) -> lpl_trainer::Result<Loss> {
        let mse = Mse::default().value(batch)?;
        let double = mse * 2.0;
        Ok(Loss::new(double.shallow_clone(), vec![("double_mse", double.detach())]))
    }
}

/// A hook that records what the loop tells it.
#[derive(Default)]
struct Recorder {
    ends: Vec<(usize, bool, bool)>,
    lines: Vec<serde_json::Value>,
    grids: Vec<(usize, bool)>,
}

impl Hook for Recorder {
    fn after_step(
        &mut self,
        end: &StepEnd<'_>,
        lines: &[serde_json::Value],
    ) -> lpl_trainer::Result<()> {
        self.ends.push((end.step, end.checkpointed, end.checkpoint.is_some_and(|p| p.exists())));
        self.lines.extend(lines.iter().cloned());
        self.grids.extend(end.grid.map(|g| (end.step, g.is_file())));
        Ok(())
    }
}

fn metric_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn objectives_come_from_the_config_or_the_caller_and_hooks_see_every_step() {
    let (_rng, dir) = isolated("objectives");
    // [loss.pixel]: the pixel-space baseline, logged as `pixel`; loss = mse + pixel
    let pixel = config_with(&dir, "pixel", 3, false, "[loss.pixel]\nweight = 0.5\n");
    train(&pixel, Start::Fresh, Device::Cpu).unwrap();
    for line in metric_lines(&dir.join("pixel")) {
        let (loss, mse, px) = (
            line["loss"].as_f64().unwrap(),
            line["mse"].as_f64().unwrap(),
            line["pixel"].as_f64().unwrap(),
        );
        assert!(px > 0.0, "{line}");
        // f32 sums of two terms: a few ulps of the loss (~0.1..10)
        assert!((loss - (mse + px)).abs() <= 1e-5 * loss.abs().max(1.0), "{line}");
    }
    // LPL and pixel together are refused, naming the section
    let mut both = config(&dir, "both", 3, true);
    both.loss.pixel = pixel.loss.pixel.clone();
    let err = train(&both, Start::Fresh, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("`loss`"), "{err}");

    // the caller's objective and hook
    let custom = config_with(&dir, "custom", 4, false, "[log]\ntensorboard = true\n");
    let cache = lpl_data::LatentCache::open(&custom.data.cache).unwrap();
    let model = lpl_trainer::diffusion_training::build_model(
        &custom,
        cache.manifest.latent_shape,
        cache.manifest.num_classes,
        Device::Cpu,
    )
    .unwrap();
    // a model whose weights live elsewhere than the training device is refused, naming both
    // (checked before anything touches the device)
    let err = lpl_trainer::diffusion_training::train_model(
        &custom,
        model.as_ref(),
        Start::Fresh,
        Device::Cuda(0),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("Cpu") && err.contains("Cuda(0)"), "{err}");
    let mut recorder = Recorder::default();
    let outcome = train_with_objective(
        &custom,
        model.as_ref(),
        Start::Fresh,
        Device::Cpu,
        &mut [&mut recorder],
        |_, _| Ok(Box::new(DoubleMse)),
    )
    .unwrap();
    assert_eq!(outcome.step, 4);
    // [sample] without `every`: one grid, at the end, written before the hooks run
    assert_eq!(recorder.grids, [(4, true)]);
    // checkpoint_every = 3 and the last step: the checkpoint exists when the hook runs
    assert_eq!(
        recorder.ends,
        [(1, false, false), (2, false, false), (3, true, true), (4, true, true)]
    );
    // the lines the hook saw are those of metrics.jsonl (but for the printed float
    // round trip of the throughput)
    let without_speed = |lines: &[serde_json::Value]| -> Vec<serde_json::Value> {
        let mut lines = lines.to_vec();
        lines.iter_mut().for_each(|l| drop(l.as_object_mut().unwrap().remove("samples_per_sec")));
        lines
    };
    assert_eq!(without_speed(&recorder.lines), without_speed(&metric_lines(&dir.join("custom"))));
    // [log] tensorboard: one event file with the header, a scalar event per metrics line
    // (tag `double_mse` among them) and the grid as an image
    let tb: Vec<_> = std::fs::read_dir(dir.join("custom/tensorboard")).unwrap().collect();
    assert_eq!(tb.len(), 1);
    let bytes = std::fs::read(tb[0].as_ref().unwrap().path()).unwrap();
    let mut records = 0;
    let mut at = 0;
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 12 + len + 4;
        records += 1;
    }
    assert_eq!(at, bytes.len(), "whole records");
    assert_eq!(records, 1 + 4 + 1, "header, 4 log lines, 1 grid");
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"double_mse") && has(b"grad_norm") && has(b"samples") && has(b"\x89PNG"));
    for line in &recorder.lines {
        let (loss, double) = (line["loss"].as_f64().unwrap(), line["double_mse"].as_f64().unwrap());
        assert_eq!(loss.to_bits(), double.to_bits(), "{line}");
        assert!(line.get("mse").is_none(), "only the objective's own terms: {line}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn presets_with_overrides_one_default_per_section_and_io_errors() {
    let (_rng, dir) = isolated("presets");
    let base = toml::to_string(&config(&dir, "x", 3, false)).unwrap();
    let parse =
        |extra: &str| RunConfig::from_toml(&format!("{base}\n{extra}"), Path::new("run.toml"));
    // a preset and one override
    let c = parse("[loss.lpl]\npreset = \"paper\"\nweight = 2.0\n").unwrap();
    let expected = LplConfig { weight: 2.0, ..LplConfig::preset("paper").unwrap() };
    assert_eq!(c.loss.lpl, Some(expected));
    let c = parse("[loss.lpl]\npreset = \"diffusers\"\n").unwrap();
    assert_eq!(c.loss.lpl, Some(LplConfig::preset("diffusers").unwrap()));
    // an unknown field beside the preset, or an unknown preset, is named
    let err = parse("[loss.lpl]\npreset = \"paper\"\nwieght = 2.0\n").unwrap_err().to_string();
    assert!(err.contains("wieght"), "{err}");
    let err = parse("[loss.lpl]\npreset = \"papr\"\n").unwrap_err().to_string();
    assert!(err.contains("papr") && err.contains("paper"), "{err}");
    // the stored config (checkpoints) round-trips without the preset key
    let c = parse("[loss.lpl]\npreset = \"paper\"\nweight = 2.0\n").unwrap();
    assert_eq!(RunConfig::from_toml(&c.to_toml().unwrap(), Path::new("stored")).unwrap(), c);
    // one default per section: `[ema]` with decay only keeps the default warm-up, as does
    // no `[ema]` at all; a partial `[optim]` keeps the other defaults
    assert!(!base.contains("[ema]") || base.contains("warmup"));
    let no_ema = base.split("[ema]").next().unwrap().to_string();
    let partial = RunConfig::from_toml(&format!("{no_ema}\n[ema]\ndecay = 0.99\n"), Path::new("e"));
    let partial = partial.unwrap();
    assert_eq!(partial.ema, EmaConfig { decay: 0.99, ..EmaConfig::default() });
    assert!(partial.ema.warmup);
    assert_eq!(RunConfig::from_toml(&no_ema, Path::new("e")).unwrap().ema, EmaConfig::default());
    // the forms configs and checkpoints were written in before (`schedule_preset`, `[model]`
    // without `kind`) read as today's
    assert!(base.contains("kind = \"dit\"") && base.contains("schedule = \"dit\""), "{base}");
    let old = base
        .replace("kind = \"dit\"\n", "")
        .replace("schedule = \"dit\"", "schedule_preset = \"dit\"");
    assert_eq!(
        RunConfig::from_toml(&old, Path::new("old")).unwrap(),
        RunConfig::from_toml(&base, Path::new("new")).unwrap()
    );
    // an unknown model kind names the kinds this program knows
    let err =
        RunConfig::from_toml(&base.replace("kind = \"dit\"", "kind = \"nope\""), Path::new("k"))
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("`model.kind`") && err.contains("nope") && err.contains("dit, unet"),
        "{err}"
    );
    // a libtorch error keeps libtorch's message and the original error (downcastable)
    let a = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    let b = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
    let torch = Tensor::f_cat(&[a, b], 0).unwrap_err();
    let message = torch.to_string();
    let err = lpl_trainer::TrainError::from(lpl_denoiser::DenoiserError::from(torch));
    assert_eq!(err.to_string(), message, "no message lost or replaced");
    assert!(matches!(
        err,
        lpl_trainer::TrainError::Denoiser(lpl_denoiser::DenoiserError::Torch(
            tch::TchError::Torch(_)
        ))
    ));
    // a missing file is an I/O error naming it, not an invalid config
    let err = RunConfig::from_file(&dir.join("absent.toml")).unwrap_err();
    assert!(matches!(err, lpl_trainer::TrainError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("absent.toml"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// `[loss.lpl] chunk`: the decoder's graph one chunk of kept samples at a time gives the
/// same step: the first step's loss and gradient norm (before clipping) match the
/// whole-batch step. Tolerances: the same arithmetic on decoder batches of 1 instead of 8
/// (kernel blocking reorders f32 sums, ~1e-7 per feature): 1e-5 relative.
#[test]
fn chunked_lpl_gives_the_same_step() {
    let (_rng, dir) = isolated("chunk");
    let first = |out: &str, chunk: &str| {
        let mut c = config(&dir, out, 1, true);
        if !chunk.is_empty() {
            c = RunConfig::from_toml(
                &toml::to_string(&c)
                    .unwrap()
                    .replace("[loss.lpl]", &format!("[loss.lpl]\n{chunk}")),
                Path::new("chunk.toml"),
            )
            .unwrap();
        }
        train(&c, Start::Fresh, Device::Cpu).unwrap();
        metric_lines(&dir.join(out)).remove(0)
    };
    let whole = first("whole", "");
    let chunked = first("chunked", "chunk = 1");
    for key in ["loss", "grad_norm", "lpl", "mse"] {
        let (a, b) = (whole[key].as_f64().unwrap(), chunked[key].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-5 * a.abs(), "{key}: {a} vs {b}");
    }
    assert!(whole["lpl"].as_f64().unwrap() > 0.0);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `[log] profile = N` (`lpl train --profile N`): libtorch's profiler writes a Chrome trace
/// of the profiled steps that Perfetto opens (a `traceEvents` array of complete events with
/// names, timestamps and durations), naming the denoiser's matmuls and the LPL decoder's
/// convolutions.
#[test]
fn a_profiled_run_writes_a_chrome_trace() {
    let (_rng, dir) = isolated("profile");
    let c = config_with(&dir, "p", 3, true, "[log]\nprofile = 1\n");
    train(&c, Start::Fresh, Device::Cpu).unwrap();
    let path = dir.join("p/profile/trace.json");
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    let names: std::collections::BTreeSet<&str> =
        events.iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(names.iter().any(|n| n.contains("conv")), "{names:?}");
    assert!(
        names.iter().any(|n| ["aten::mm", "aten::addmm", "aten::bmm"].contains(n)),
        "{names:?}"
    );
    let complete = events.iter().filter(|e| e["ph"] == "X").count();
    assert!(complete > 100, "{complete} complete events");
    assert!(events.iter().any(|e| e["ph"] == "X" && e["ts"].is_number() && e["dur"].is_number()));
    // and the operator table beside it: self times that add up, the convolution among them
    let summary = lpl_trainer::profile_summary::ProfileSummary::from_trace(&trace).unwrap();
    let conv = summary.cpu_ops.iter().find(|o| o.name == "aten::convolution").unwrap();
    assert!(conv.calls > 0 && conv.total_ms > 0.0 && conv.self_ms <= conv.total_ms);
    let self_ms = summary.cpu_self_ms();
    assert!(self_ms > 0.0 && summary.cpu_ops.iter().all(|o| o.self_ms <= self_ms));
    let ops = std::fs::read_to_string(dir.join("p/profile/ops.md")).unwrap();
    assert!(ops.contains("| name | calls | self ms | self % | total ms |"), "{ops}");
    assert!(ops.contains(&format!("| `{}` |", summary.cpu_ops[0].name)), "{ops}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Checkpoints record the SHA-256 of their tensors: a byte changed after writing is found
/// on load, naming the file, and `--resume` falls back to the newest checkpoint that
/// verifies, then trains on to the end.
#[test]
fn a_damaged_checkpoint_is_detected_and_resume_falls_back() {
    let (_rng, dir) = isolated("damaged");
    let c = config(&dir, "run", 6, false);
    train(&c, Start::Fresh, Device::Cpu).unwrap();
    let newest = run_checkpoint::checkpoint_path(&dir.join("run"), 6);
    let mut bytes = std::fs::read(&newest).unwrap();
    let last = bytes.len() - 1; // the end of the file is tensor data
    bytes[last] ^= 0x10;
    std::fs::write(&newest, &bytes).unwrap();
    let err = run_checkpoint::load(&newest).unwrap_err().to_string();
    assert!(err.contains("step-0000006") && err.contains("damaged"), "{err}");
    // resume: step 6 is skipped, step 3 taken, and the run reaches step 9
    let longer = config(&dir, "run", 9, false);
    let outcome = train(&longer, Start::Resume, Device::Cpu).unwrap();
    assert_eq!(outcome.step, 9);
    assert!(run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join("run"), 9)).is_ok());
    let steps: Vec<u64> =
        metric_lines(&dir.join("run")).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=9).collect::<Vec<_>>(), "steps 4 to 6 logged once, by the resumed run");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The learned-sigma DiT of the denoiser fixtures (4 -> 8 channels, 10 classes), in the
/// original DiT layout.
fn pretrained_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../denoiser/tests/fixtures/dit_original.pt")
}

/// The variational bound term (bits per dim) of `model` on the first 16 cached latents at
/// fixed timesteps and noise (one evaluation, no gradient).
fn fixed_batch_vb(model: &dyn lpl_denoiser::Denoiser, cache: &Path) -> f64 {
    use lpl_schedulers::learned_variance::split_prediction;
    use lpl_schedulers::{NoiseSchedule, Parameterization, VarianceTables};
    let cache = lpl_data::LatentCache::open(cache).unwrap();
    let batch = cache.gather(&(0..16).collect::<Vec<_>>(), &[]).unwrap();
    let schedule = NoiseSchedule::preset("dit").unwrap();
    let NoiseSchedule::Discrete(d) = &schedule else { unreachable!() };
    let tables = VarianceTables::new(d, Device::Cpu).unwrap();
    let _rng = GlobalRng::seeded(11);
    let z0 = batch.latents;
    let t = Tensor::randint(1000, [16], (Kind::Int64, Device::Cpu));
    let eps = z0.randn_like();
    let z_t = schedule.add_noise(&z0, &eps, &t).unwrap();
    let cond = lpl_denoiser::Conditioning::labels(batch.labels.unwrap());
    let pred = tch::no_grad(|| model.forward(&z_t, &t.to_kind(Kind::Float), &cond)).unwrap();
    let (mean, v) = split_prediction(&pred, 4).unwrap();
    let x0_hat = Parameterization::Eps.to_x0(&schedule, &mean, &z_t, &t).unwrap();
    let vb = tables.vlb_bits_per_dim(&z0, &z_t, &t, &x0_hat, &v.unwrap()).unwrap();
    f64::try_from(vb.mean(Kind::Float)).unwrap()
}

/// Post-training a published learned-sigma DiT (`[model] pretrained`, the original layout)
/// with MSE + LPL: DiT's hybrid objective (the bound `vb` logged beside `mse` and `lpl`),
/// exact resume (bit-identical losses and weights), and the variance is trained: its bound
/// on a fixed batch falls from the pretrained weights' value.
#[test]
fn learned_sigma_post_training_from_a_pretrained_dit() {
    let (_rng, dir) = isolated("learned-sigma");
    let model = format!(
        "[model]\nkind = \"dit\"\npretrained = \"{}\"\nheads = 2\nclass_dropout_prob = 0.1\n",
        pretrained_fixture().display()
    );
    let make = |out: &str, steps: usize| {
        let text = toml::to_string(&config(&dir, out, steps, true))
            .unwrap()
            .replace("parameterization = \"v\"", "parameterization = \"eps\"");
        let text = text.replace("[model]\nkind = \"dit\"\npreset = \"dit-tiny\"\n", &model);
        assert!(text.contains("pretrained"), "{text}");
        RunConfig::from_toml(&text, Path::new("post.toml")).unwrap()
    };
    let full = make("full", 24);
    train(&full, Start::Fresh, Device::Cpu).unwrap();
    train(&make("split", 12), Start::Fresh, Device::Cpu).unwrap();
    train(&make("split", 24), Start::Resume, Device::Cpu).unwrap();
    let (a, b) = (losses(&dir.join("full")), losses(&dir.join("split")));
    assert_eq!(a.len(), 24);
    for step in 1..=24 {
        assert_eq!(a[&step].to_bits(), b[&step].to_bits(), "loss at step {step}");
    }
    let (_, wa) =
        run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join("full"), 24)).unwrap();
    let (_, wb) =
        run_checkpoint::load(&run_checkpoint::checkpoint_path(&dir.join("split"), 24)).unwrap();
    for (k, v) in &wa {
        assert!(v.equal(&wb[k]), "{k} differs after the resume");
    }
    let lines = metric_lines(&dir.join("full"));
    for key in ["vb", "mse", "lpl"] {
        assert!(lines.iter().any(|l| l[key].as_f64().is_some_and(f64::is_finite)), "{key}");
    }
    // the bound on a fixed batch: pretrained weights, then the trained model's
    let cache = setup(&dir).1;
    let model =
        lpl_trainer::diffusion_training::build_model(&full, [4, 4, 4], Some(4), Device::Cpu)
            .unwrap();
    let before = fixed_batch_vb(model.as_ref(), &cache);
    lpl_tensor_io::load_into(
        model.var_store(),
        &run_checkpoint::strip_prefix(&wa, "model."),
        Path::new("full"),
    )
    .unwrap();
    let after = fixed_batch_vb(model.as_ref(), &cache);
    // --init-from a published model points to `[model] pretrained`
    let err =
        train(&config(&dir, "init", 1, false), Start::InitFrom(pretrained_fixture()), Device::Cpu)
            .unwrap_err()
            .to_string();
    assert!(err.contains("[model] pretrained"), "{err}");
    println!("vb on a fixed batch: {before:.4} -> {after:.4} bits/dim");
    assert!(after.is_finite() && after < 0.9 * before, "vb {before} -> {after}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `share` calibration: the weight calibrated at a checkpoint to a share of 0.2 makes the
/// LPL term 20% of the loss on the calibration batches (within 10%: here to rounding, since
/// the term is linear in its weight), measured again through the objective at that weight;
/// a gate that keeps nothing is an error saying so.
#[test]
fn calibrated_weight_gives_the_requested_share() {
    use lpl_trainer::calibration::{CALIBRATION_BATCHES, calibrate, measure_terms};
    let (_rng, dir) = isolated("calibrate");
    let pre = train(&config(&dir, "pre", 3, false), Start::Fresh, Device::Cpu).unwrap();
    drop(_rng);
    let mut probe = config(&dir, "probe", 3, true);
    probe.loss.lpl.as_mut().unwrap().weight = 1.0;
    let c = calibrate(&probe, &pre.checkpoint, 0.2, Device::Cpu).unwrap();
    assert!(c.weight > 0.0 && c.weight.is_finite(), "{c:?}");
    let mut weighted = probe.clone();
    weighted.loss.lpl.as_mut().unwrap().weight = c.weight;
    let (mse, term) =
        measure_terms(&weighted, &pre.checkpoint, CALIBRATION_BATCHES, Device::Cpu).unwrap();
    let share = term / (mse + term);
    assert!((share - 0.2).abs() <= 0.02, "share {share} with weight {}", c.weight);
    assert!((mse - c.mse).abs() <= 1e-6 * c.mse, "the same batches: MSE {mse} vs {}", c.mse);
    // nothing inside the gate: no weight can give a share
    probe.loss.lpl.as_mut().unwrap().gate = lpl_loss::LplGate::Timestep { max: 0.0 };
    let err = calibrate(&probe, &pre.checkpoint, 0.2, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("no sample inside its gate"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
