//! DiT: parity with diffusers' DiTTransformer2DModel (random init, `save_pretrained`;
//! fixtures/make_fixtures.py; max abs error <= 1e-4 in f32), loading errors, published
//! parameter counts, label dropout and classifier-free guidance.
//!
//! Parity tolerance 1e-4 abs (DiT and UNet), for any x86-64 CPU:
//! - |out| <= 2.3, ~12 layers of K <= 576 at ~sqrt(K)*eps = 3e-6 rel each, any order: <3e-5;
//! - t = 999 turns a 1-ulp (Sleef/MKL) exp of a frequency into 6e-5 rad; after 3 linears <~1e-5.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lpl_denoiser::{Conditioning, Denoiser, DenoiserError, Dit, DitConfig, parameter_count};
use lpl_schedulers::{Branch, Guidance};
use lpl_torch_ext::GlobalRng;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn golden() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("diffusers_denoisers.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn matches_diffusers_dit() {
    let _rng = GlobalRng::lock();
    let g = golden();
    let dit =
        Dit::from_diffusers_dir(&fixtures().join("dit_small"), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(
        dit.config().shared_conditioning,
        Some(false),
        "diffusers stores one embedder per block"
    );
    let cond = Conditioning::labels(g["dit/labels"].shallow_clone());
    let out = dit.forward(&g["dit/x"], &g["dit/t"], &cond).unwrap();
    let err = f64::try_from((out - &g["dit/out"]).abs().max()).unwrap();
    println!("DiT vs diffusers: max abs error {err:.2e}");
    assert!(err <= 1e-4, "{err}");
}

/// A model built for 8x8 latents run on 4x4, 12x12 and 16x16: diffusers rescales the position
/// grid to the training grid. Tolerance as at the training size (1e-4 absolute on outputs of
/// magnitude ~1: f32 attention and MLP sums in another order); the position grid itself is
/// computed in f32 as diffusers does, so it agrees to the last bit of its inputs.
#[test]
fn matches_diffusers_dit_at_other_sizes() {
    let _rng = GlobalRng::lock();
    let g = golden();
    let dit =
        Dit::from_diffusers_dir(&fixtures().join("dit_small"), Device::Cpu, Kind::Float).unwrap();
    let cond = Conditioning::labels(g["dit/labels"].narrow(0, 0, 2));
    for size in [4, 12, 16] {
        let x = &g[&format!("dit/x_{size}")];
        let out = dit.forward(x, &g["dit/t"].narrow(0, 0, 2), &cond).unwrap();
        let expected = &g[&format!("dit/out_{size}")];
        let err = f64::try_from((out - expected).abs().max()).unwrap();
        println!("{size}x{size}: max abs error {err:.2e}");
        assert!(err <= 1e-4, "{size}x{size}: {err}");
    }
}

#[test]
fn loading_names_missing_and_misshaped_keys() {
    let _rng = GlobalRng::lock();
    let dir = std::env::temp_dir().join(format!("lpl-dit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join("dit_small/config.json"), dir.join("config.json")).unwrap();
    let src = fixtures().join("dit_small/diffusion_pytorch_model.safetensors");
    type Edit = dyn Fn(&mut Vec<(String, Tensor)>);
    let write = |edit: &Edit| {
        let mut t = Tensor::read_safetensors(&src).unwrap();
        edit(&mut t);
        let refs: Vec<(&str, Tensor)> =
            t.iter().map(|(k, v)| (k.as_str(), v.shallow_clone())).collect();
        Tensor::write_safetensors(&refs, dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    };
    write(&|t| t.retain(|(k, _)| k != "proj_out_2.bias"));
    let msg = Dit::from_diffusers_dir(&dir, Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(msg.contains("missing tensor `proj_out_2.bias`") && msg.contains("[16]"), "{msg}");
    write(&|t| {
        let e = t.iter_mut().find(|(k, _)| k == "transformer_blocks.1.attn1.to_k.weight").unwrap();
        e.1 = Tensor::zeros([32, 16], (Kind::Float, Device::Cpu));
    });
    let err = Dit::from_diffusers_dir(&dir, Device::Cpu, Kind::Float).unwrap_err();
    assert!(matches!(err, DenoiserError::Weights(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("transformer_blocks.1.attn1.to_k.weight")
            && msg.contains("[32, 16]")
            && msg.contains("[32, 32]"),
        "{msg}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn preset_parameter_counts_match_the_paper() {
    let _rng = GlobalRng::lock();
    // Peebles & Xie, table 1 (with learned sigma: 8 output channels): S/2 33M, B/2 130M,
    // XL/2 675M; within 1%. Built on the meta device? libtorch has none in tch: count
    // analytically from the shapes instead of allocating 675M floats.
    for (name, published) in [("dit-s-2", 33.0e6), ("dit-b-2", 130.0e6), ("dit-xl-2", 675.0e6)] {
        let mut c = DitConfig::preset(name).unwrap();
        c.out_channels = Some(8);
        let count = lpl_denoiser::dit::parameter_count_of(&c) as f64;
        assert!((count / published - 1.0).abs() < 0.01, "{name}: {count} vs {published}");
    }
    // the analytic count equals the real one
    let c = DitConfig::preset("dit-tiny").unwrap();
    let dit = Dit::new(&c, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(parameter_count(dit.var_store()), lpl_denoiser::dit::parameter_count_of(&c));
}

#[test]
fn label_dropout_rate_is_observed() {
    let _rng = GlobalRng::seeded(0);
    let dit = Dit::new(&DitConfig::preset("dit-tiny").unwrap(), Device::Cpu, Kind::Float).unwrap();
    let labels = Tensor::full([200_000], 3, (Kind::Int64, Device::Cpu));
    let dropped = dit.drop_labels(&labels);
    let null = f64::try_from(dropped.eq(10).to_kind(Kind::Double).mean(Kind::Double)).unwrap();
    // 0.1 +- 3 standard errors (sqrt(0.09 / 200000) = 0.00067)
    assert!((null - 0.1).abs() < 0.002, "{null}");
    assert!(bool::try_from(dropped.eq(3).logical_or(&dropped.eq(10)).all()).unwrap());
}

#[test]
fn null_class_and_guidance_work_together() {
    let _rng = GlobalRng::seeded(1);
    let dit = Dit::new(&DitConfig::preset("dit-tiny").unwrap(), Device::Cpu, Kind::Float).unwrap();
    // give the model non-zero output so that classes matter
    tch::no_grad(|| {
        for (name, t) in dit.var_store().variables() {
            if name.starts_with("proj_out") || name.contains("norm1.linear") {
                let _ = t.shallow_clone().normal_(0.0, 0.05);
            }
        }
    });
    let x = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[100.0f32, 100.0]);
    let labels = Tensor::from_slice(&[2i64, 5]);
    let cond = dit.forward(&x, &t, &Conditioning::labels(labels.shallow_clone())).unwrap();
    let uncond = dit.forward(&x, &t, &Conditioning::none()).unwrap();
    let explicit_null =
        dit.forward(&x, &t, &Conditioning::labels(Tensor::from_slice(&[10i64, 10]))).unwrap();
    assert!(uncond.equal(&explicit_null), "no labels means the null class");
    assert!(f64::try_from((&cond - &uncond).abs().max()).unwrap() > 1e-4);
    // one batched call of 2B (labels then the null class) equals the two calls of B
    let g = Guidance::new(4.0);
    let mut calls = Vec::new();
    let mut model = g.wrap(|x: &Tensor, t: &Tensor, branch: Branch| {
        calls.push((branch, x.size()[0]));
        let c = match branch {
            Branch::Conditional => Conditioning::labels(labels.shallow_clone()),
            Branch::Both => Conditioning::labels(Tensor::cat(&[&labels, &labels.full_like(10)], 0)),
        };
        Ok(dit.forward(x, t, &c)?)
    });
    let guided = model(&x, &t).unwrap();
    drop(model);
    assert_eq!(calls, [(Branch::Both, 4)], "one call of 2B rows");
    let expected = &uncond + (&cond - &uncond) * 4.0;
    // 1e-5: the same weights on the same rows; a batch of 4 instead of 2 may take other
    // matmul blockings (f32 sums of ~100 terms of size ~1 reordered: ~1e-6), 1e-5 is slack
    let err = f64::try_from((guided - expected).abs().max()).unwrap();
    assert!(err < 1e-5, "{err}");
}

#[test]
fn bad_inputs_are_errors() {
    let _rng = GlobalRng::lock();
    let dit = Dit::new(&DitConfig::preset("dit-tiny").unwrap(), Device::Cpu, Kind::Float).unwrap();
    let x = Tensor::zeros([1, 4, 7, 8], (Kind::Float, Device::Cpu));
    assert!(
        dit.forward(&x, &Tensor::zeros([1], (Kind::Float, Device::Cpu)), &Conditioning::none())
            .is_err()
    );
    let x = Tensor::zeros([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    // labels out of range are refused where they enter, naming the range
    let msg = Conditioning::class_labels(Tensor::from_slice(&[11i64]), 10).unwrap_err().to_string();
    assert!(msg.contains("[0, 10]"), "{msg}");
    assert!(Conditioning::class_labels(Tensor::from_slice(&[0i64, 10]), 10).is_ok());
    assert!(Conditioning::class_labels(Tensor::from_slice(&[-1i64]), 10).is_err());
    // and a forward pass given them unchecked still fails (libtorch's lookup on the CPU)
    let bad = Conditioning::labels(Tensor::from_slice(&[11i64]));
    assert!(dit.forward(&x, &Tensor::zeros([1], (Kind::Float, Device::Cpu)), &bad).is_err());
    assert!(DitConfig::preset("dit-m-2").unwrap_err().to_string().contains("dit-b-2"));
}

#[test]
fn matches_diffusers_unet() {
    let _rng = GlobalRng::lock();
    let g = golden();
    let unet = lpl_denoiser::UNet::from_diffusers_dir(
        &fixtures().join("unet_small"),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let cond = Conditioning::labels(g["unet/labels"].shallow_clone());
    let out = unet.forward(&g["unet/x"], &g["unet/t"], &cond).unwrap();
    let err = f64::try_from((out - &g["unet/out"]).abs().max()).unwrap();
    println!("UNet vs diffusers: max abs error {err:.2e}");
    assert!(err <= 1e-4, "{err}");
    assert_eq!(unet.num_classes(), Some(10));
}

#[test]
fn initialisation_is_reproducible_from_the_seed() {
    let _rng = GlobalRng::lock();
    let init = || {
        tch::manual_seed(7);
        let dit =
            Dit::new(&DitConfig::preset("dit-tiny").unwrap(), Device::Cpu, Kind::Float).unwrap();
        let mut v: Vec<(String, Tensor)> = dit.var_store().variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let (a, b) = (init(), init());
    for ((k, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{k}");
    }
}

/// The same learned-sigma DiT (4 -> 8 channels) in the layouts pretrained DiTs come in
/// (`fixtures/make_pretrained_fixtures.py`): the Hub's pipeline folder (`transformer/`, the
/// older `Transformer2DModel` config with its extra fields, weights as a pickled zip `.bin`)
/// and the original repository's state dict (`blocks.N.attn.qkv`, `x_embedder`,
/// `final_layer`, ...). Both load and give diffusers' output; tolerance as in
/// `matches_diffusers_dit` (the same kernels in another graph: 1e-4 absolute on outputs ~1).
#[test]
fn pretrained_layouts_load_and_match_diffusers() {
    let _rng = GlobalRng::lock();
    let g: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("pretrained_dit.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let cond = Conditioning::labels(g["labels"].shallow_clone());
    let hub =
        Dit::from_diffusers_dir(&fixtures().join("hub_dit"), Device::Cpu, Kind::Float).unwrap();
    let original =
        Dit::from_original(&fixtures().join("dit_original.pt"), Some(2), Device::Cpu, Kind::Float)
            .unwrap();
    assert_eq!(original.config().out_channels(), 8, "learned sigma");
    assert_eq!(original.config().sample_size, 8);
    assert_eq!(original.config().num_embeds_ada_norm, Some(10));
    for (name, model) in [("hub folder", &hub), ("original state dict", &original)] {
        let out = model.forward(&g["x"], &g["t"], &cond).unwrap();
        assert_eq!(out.size(), [3, 8, 8, 8], "{name}");
        let err = f64::try_from((out - &g["out"]).abs().max()).unwrap();
        assert!(err <= 1e-4, "{name}: {err}");
    }
    // the head count is not in the shapes: without it, DiT's convention (64 a head) is
    // refused for a hidden size of 32, naming the file
    let msg =
        Dit::from_original(&fixtures().join("dit_original.pt"), None, Device::Cpu, Kind::Float)
            .unwrap_err()
            .to_string();
    assert!(msg.contains("dit_original.pt") && msg.contains("attention heads"), "{msg}");
}

/// A Transformer2DModel config that is not a DiT (cross-attention) is refused by name.
#[test]
fn transformer_2d_configs_that_are_not_dits_are_refused() {
    let dir = std::env::temp_dir().join(format!("lpl-dit-t2d-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(fixtures().join("hub_dit/transformer/config.json")).unwrap();
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        text.replace("\"cross_attention_dim\": null", "\"cross_attention_dim\": 768"),
    )
    .unwrap();
    let msg = lpl_denoiser::DitConfig::from_file(&path).unwrap_err().to_string();
    assert!(msg.contains("config.json") && msg.contains("`cross_attention_dim` = 768"), "{msg}");
    std::fs::write(
        &path,
        text.replace("\"upcast_attention\"", "\"frobnicate\": 1, \"upcast_attention\""),
    )
    .unwrap();
    let msg = lpl_denoiser::DitConfig::from_file(&path).unwrap_err().to_string();
    assert!(msg.contains("unknown field `frobnicate`"), "{msg}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// An original-layout state dict with a key missing or one too many is refused naming the
/// file and the key.
#[test]
fn original_layout_errors_name_the_file_and_key() {
    let _rng = GlobalRng::lock();
    let dir = std::env::temp_dir().join(format!("lpl-dit-orig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tensors = lpl_tensor_io::read_tensors(&fixtures().join("dit_original.pt")).unwrap();
    type Edit = dyn Fn(&mut Vec<(String, Tensor)>);
    let write = |name: &str, edit: &Edit| {
        let mut t: Vec<(String, Tensor)> =
            tensors.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
        edit(&mut t);
        let path = dir.join(name);
        lpl_tensor_io::save(&t, &Default::default(), &path).unwrap();
        path
    };
    let missing =
        write("missing.safetensors", &|t| t.retain(|(k, _)| k != "blocks.1.mlp.fc2.bias"));
    let msg =
        Dit::from_original(&missing, Some(2), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(
        msg.contains("missing.safetensors") && msg.contains("`blocks.1.mlp.fc2.bias`"),
        "{msg}"
    );
    let extra = write("extra.safetensors", &|t| {
        t.push(("blocks.0.attn.rope.freqs".into(), Tensor::zeros([4], (Kind::Float, Device::Cpu))))
    });
    let msg =
        Dit::from_original(&extra, Some(2), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(msg.contains("extra.safetensors") && msg.contains("blocks.0.attn.rope.freqs"), "{msg}");
    std::fs::remove_dir_all(dir).unwrap();
}
