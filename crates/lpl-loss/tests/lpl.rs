//! The latent perceptual loss: parity of the `diffusers` preset with a PyTorch
//! re-implementation of the diffusers port's `get_loss` (fixtures/make_fixtures.py), the
//! pieces of the `paper` preset, gating and gradients, TAEF2 and a user-defined autoencoder.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lpl_autoencoder::{
    Autoencoder, AutoencoderKl, FeatureLayer, InputRange, LatentCodec, LatentDistribution, Taesd,
};
use lpl_loss::{LatentPerceptualLoss, LplConfig, LplError, LplGate, Normalization};
use lpl_schedulers::{NoiseSchedule, Parameterization};
use lpl_torch_ext::GlobalRng;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn frozen_vae() -> AutoencoderKl {
    let mut vae =
        AutoencoderKl::from_diffusers_dir(&fixtures().join("vae_lpl"), Device::Cpu, Kind::Float)
            .unwrap();
    vae.set_requires_grad(false);
    vae
}

fn golden() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("diffusers_lpl.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    max_rel_floored(a, b, 0.0)
}

/// Max of `|a - b| / max(|b|, floor * max|b|)`: relative, except for entries of `b` near 0.
fn max_rel_floored(a: &Tensor, b: &Tensor, floor: f64) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let floor = (f64::try_from(b.abs().max()).unwrap() * floor).max(1e-12);
    f64::try_from(((&a - &b).abs() / b.abs().clamp_min(floor)).max()).unwrap()
}

fn all_kept(mut config: LplConfig) -> LplConfig {
    config.gate = LplGate::All;
    config
}

/// Tolerances (the bounds), for any x86-64 CPU (oneDNN/MKL/Sleef: reordered sums, 1-ulp
/// exp/sqrt; features then <~1e-5 rel off after ~25 layers; observed here ~1e-6):
/// - values rel 1e-4: losses 2e-3..7e-3, means of >= 4096 (x - y)^2 terms, |x - y| ~ |x|: ~1e-6;
/// - grad rel 1e-3 with |g| floored at 5% of max|g| (some are 3e-4 max): noise <~1e-5 max -> 2e-4;
/// - the masks' thresholds q -+ 2 std lie ~4 std out: a 1e-5 shift flips a pixel with p ~1e-3.
#[test]
fn diffusers_preset_matches_the_port() {
    let _rng = GlobalRng::lock();
    let g = golden();
    let vae = frozen_vae();
    let config = all_kept(LplConfig::preset("diffusers").unwrap());
    let lpl = LatentPerceptualLoss::new(&vae, vae.codec().clone(), config).unwrap();
    let masked: Vec<Option<i64>> = lpl.plan().iter().map(|p| p.mask_down).collect();
    assert_eq!(masked, vec![None, None, Some(2), Some(1), Some(1)], "layers 2, 3, 4 are masked");
    let x0_hat = g["input"].copy().set_requires_grad(true);
    let schedule = NoiseSchedule::preset("sd15").unwrap();
    let t = Tensor::from_slice(&[10i64, 20, 30]);
    let out = lpl.loss(&x0_hat, &g["target"], &t, &schedule, Parameterization::Eps).unwrap();
    // ours carries the 1 / n_layers factor per layer, the port applies it to the sum
    let e_layers = max_rel(&out.per_sample_layer.transpose(0, 1), &(&g["per_layer"] / 5.0));
    let e_sample = max_rel(&out.per_sample, &g["per_sample"]);
    let e_total = max_rel(&out.total, &g["per_sample"].mean(Kind::Float));
    (out.total * 3.0).backward(); // total is the mean over the 3 kept samples
    let e_grad = max_rel_floored(&x0_hat.grad(), &g["grad"], 0.05);
    println!(
        "diffusers preset: per layer {e_layers:.1e}, per sample {e_sample:.1e}, total {e_total:.1e}, grad {e_grad:.1e}"
    );
    assert!(
        e_layers < 1e-4 && e_sample < 1e-4 && e_total < 1e-4,
        "{e_layers} {e_sample} {e_total}"
    );
    assert!(e_grad < 1e-3, "gradient relative error {e_grad}");
    assert!(
        vae.var_store().trainable_variables().iter().all(|p| !p.grad().defined()),
        "decoder weights got gradient"
    );
}

#[test]
fn paper_preset_layer_weights_and_masks() {
    let _rng = GlobalRng::lock();
    let vae = frozen_vae();
    let lpl =
        LatentPerceptualLoss::new(&vae, vae.codec().clone(), LplConfig::preset("paper").unwrap())
            .unwrap();
    let weights: Vec<f64> = lpl.plan().iter().map(|p| p.weight).collect();
    assert_eq!(weights, vec![1.0, 0.5, 0.25, 0.125, 0.125]);
    let upscale: Vec<i64> = lpl.plan().iter().map(|p| p.layer.upscale).collect();
    assert_eq!(upscale, vec![1, 2, 4, 8, 8]);
    let mut shallow = LplConfig::preset("paper").unwrap();
    shallow.depth = Some(1);
    let lpl = LatentPerceptualLoss::new(&vae, vae.codec().clone(), shallow).unwrap();
    assert_eq!(lpl.plan().len(), 2);
}

#[test]
fn identical_latents_give_zero_loss_and_zero_gradient() {
    let _rng = GlobalRng::lock();
    let vae = frozen_vae();
    for preset in ["paper", "diffusers"] {
        let lpl = LatentPerceptualLoss::new(
            &vae,
            vae.codec().clone(),
            all_kept(LplConfig::preset(preset).unwrap()),
        )
        .unwrap();
        let z0 = golden()["target"].shallow_clone();
        let x0_hat = z0.copy().set_requires_grad(true);
        let t = Tensor::from_slice(&[0i64, 0, 0]);
        let out = lpl
            .loss(&x0_hat, &z0, &t, &NoiseSchedule::preset("sd15").unwrap(), Parameterization::Eps)
            .unwrap();
        out.total.backward();
        assert_eq!(f64::try_from(&out.total).unwrap(), 0.0, "{preset}");
        assert_eq!(f64::try_from(x0_hat.grad().abs().max()).unwrap(), 0.0, "{preset}");
    }
}

#[test]
fn samples_outside_the_gate_get_exactly_zero_gradient() {
    let _rng = GlobalRng::lock();
    let vae = frozen_vae();
    let lpl =
        LatentPerceptualLoss::new(&vae, vae.codec().clone(), LplConfig::preset("paper").unwrap())
            .unwrap();
    let g = golden();
    let schedule = NoiseSchedule::preset("sd15").unwrap();
    // SNR(t) >= 3 holds for t = 50 and 150, not for 600
    let t = Tensor::from_slice(&[50i64, 600, 150]);
    let x0_hat = g["input"].copy().set_requires_grad(true);
    let out = lpl.loss(&x0_hat, &g["target"], &t, &schedule, Parameterization::Eps).unwrap();
    out.total.backward();
    let grad = x0_hat.grad();
    assert_eq!(f64::try_from(grad.get(1).abs().max()).unwrap(), 0.0);
    assert!(f64::try_from(grad.get(0).abs().max()).unwrap() > 0.0);
    // 1e-6: 2/3 as a host f64 division rounded to f32 (same on any CPU): off by < 3e-8
    assert!((f64::try_from(&out.kept_fraction).unwrap() - 2.0 / 3.0).abs() < 1e-6);
    assert_eq!(f64::try_from(out.per_sample.get(1)).unwrap(), 0.0);
    // nothing kept: zero loss, the decoder is not run, backward still works
    let none = Tensor::from_slice(&[700i64, 800, 900]);
    let x0_hat = g["input"].copy().set_requires_grad(true);
    let out = lpl.loss(&x0_hat, &g["target"], &none, &schedule, Parameterization::Eps).unwrap();
    out.total.backward();
    assert_eq!(f64::try_from(&out.total).unwrap(), 0.0);
    assert_eq!(f64::try_from(&out.kept_fraction).unwrap(), 0.0);
    assert_eq!(f64::try_from(x0_hat.grad().abs().max()).unwrap(), 0.0);
}

#[test]
fn a_trainable_decoder_is_refused() {
    let _rng = GlobalRng::lock();
    let vae =
        AutoencoderKl::from_diffusers_dir(&fixtures().join("vae_lpl"), Device::Cpu, Kind::Float)
            .unwrap();
    let err =
        LatentPerceptualLoss::new(&vae, vae.codec().clone(), LplConfig::preset("paper").unwrap());
    assert!(matches!(err, Err(LplError::TrainableDecoder(n)) if n > 0));
}

#[test]
fn invalid_configs_name_the_field() {
    let _rng = GlobalRng::lock();
    let vae = frozen_vae();
    let mut c = LplConfig::preset("paper").unwrap();
    c.depth = Some(9);
    let err = LatentPerceptualLoss::new(&vae, vae.codec().clone(), c).err().unwrap().to_string();
    assert!(err.contains("`depth`"), "{err}");
    let text = toml::to_string(&LplConfig::preset("paper").unwrap())
        .unwrap()
        .replace("quantile", "quantil");
    assert!(toml::from_str::<LplConfig>(&text).unwrap_err().to_string().contains("quantil"));
    let mut c = LplConfig::preset("paper").unwrap();
    c.quantile = 0.7;
    assert!(c.validate().unwrap_err().to_string().contains("`quantile`"));
}

#[test]
fn works_with_taef2() {
    let _rng = GlobalRng::lock();
    let dir = lpl_test_assets::Asset::Taef2.require();
    let mut taef2 = Taesd::from_dir(&dir, Device::Cpu, Kind::Float).unwrap();
    taef2.set_requires_grad(false);
    let lpl = LatentPerceptualLoss::new(
        &taef2,
        taef2.codec().clone(),
        all_kept(LplConfig::preset("paper").unwrap()),
    )
    .unwrap();
    let masked: Vec<Option<i64>> = lpl.plan().iter().map(|p| p.mask_down).collect();
    assert_eq!(masked, vec![None, None, Some(2), Some(1)]);
    tch::manual_seed(0);
    let z0 = Tensor::randn([2, 32, 4, 4], (Kind::Float, Device::Cpu));
    let x0_hat = (&z0 + Tensor::randn([2, 32, 4, 4], (Kind::Float, Device::Cpu)) * 0.2)
        .set_requires_grad(true);
    let t = Tensor::from_slice(&[0i64, 0]);
    let out = lpl
        .loss(&x0_hat, &z0, &t, &NoiseSchedule::preset("sd15").unwrap(), Parameterization::Eps)
        .unwrap();
    out.total.backward();
    let total = f64::try_from(&out.total).unwrap();
    assert!(total.is_finite() && total > 0.0, "{total}");
    assert!(f64::try_from(x0_hat.grad().abs().sum(Kind::Float)).unwrap() > 0.0);
    // TAESD's decoder stages recomputed one at a time give the same value and gradient.
    // Tolerances: chunks of 1 instead of a batch of 2 change the convolution kernels' blocking,
    // ~1e-6 relative per feature after TAEF2's 20-odd layers (measured 4e-6 on the loss with
    // AVX-512 kernels, 2.2e-5 with ATen's portable ones); the loss squares differences that are
    // about 20% of the features (x0_hat = z0 + 0.2 noise), which amplifies those errors about
    // tenfold: 1e-4 on the value and on the gradient (floored by its largest entry).
    let recomputing = LatentPerceptualLoss::new(
        &taef2,
        taef2.codec().clone(),
        LplConfig { chunk: Some(1), recompute: true, ..lpl.config().clone() },
    )
    .unwrap();
    let schedule = NoiseSchedule::preset("sd15").unwrap();
    let (again, grad) =
        recomputing.value_and_grad(&x0_hat, &z0, &t, &schedule, Parameterization::Eps, 1).unwrap();
    let rel = |a: &Tensor, b: &Tensor| {
        f64::try_from((a - b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap()
    };
    let (value_err, grad_err) = (rel(&again.total, &out.total), rel(&grad, &x0_hat.grad()));
    println!("TAEF2 recomputed: value {value_err:e}, gradient {grad_err:e}");
    assert!(value_err < 1e-4, "value {value_err:e}");
    assert!(grad_err < 1e-4, "gradient {grad_err:e}");
}

/// A user's own autoencoder: a 2-layer convolutional decoder with one upsampling stage.
struct Toy {
    vs: nn::VarStore,
    conv_in: nn::Conv2D,
    up: nn::Conv2D,
    codec: LatentCodec,
}

impl Toy {
    fn new() -> Self {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let cfg = nn::ConvConfig { padding: 1, ..Default::default() };
        let conv_in = nn::conv2d(vs.root() / "conv_in", 2, 8, 3, cfg);
        let up = nn::conv2d(vs.root() / "up", 8, 8, 3, cfg);
        vs.freeze();
        Self { vs, conv_in, up, codec: LatentCodec::affine(InputRange::MinusOneToOne, 1.0, 0.0) }
    }
}

impl Autoencoder for Toy {
    fn image_channels(&self) -> i64 {
        1
    }
    fn latent_channels(&self) -> i64 {
        2
    }
    fn downsample_factor(&self) -> i64 {
        2
    }
    fn codec(&self) -> &LatentCodec {
        &self.codec
    }
    fn encode(&self, images: &Tensor) -> lpl_autoencoder::Result<LatentDistribution> {
        Ok(LatentDistribution {
            mean: images.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None).repeat([1, 2, 1, 1]),
            logvar: None,
        })
    }
    fn decode(&self, z: &Tensor) -> lpl_autoencoder::Result<Tensor> {
        Ok(self.decode_features(z, 1, true)?[1].mean_dim(1, true, Kind::Float))
    }
    fn feature_layers(&self) -> Vec<FeatureLayer> {
        vec![
            FeatureLayer { name: "mid".into(), channels: 8, upscale: 1 },
            FeatureLayer { name: "up".into(), channels: 8, upscale: 2 },
        ]
    }
    fn decode_features(
        &self,
        z: &Tensor,
        depth: usize,
        _post: bool,
    ) -> lpl_autoencoder::Result<Vec<Tensor>> {
        let mid = self.conv_in.forward(z).relu();
        let mut out = vec![mid.shallow_clone()];
        if depth >= 1 {
            let (_, _, h, w) = mid.size4().unwrap();
            out.push(self.up.forward(&mid.upsample_nearest2d([2 * h, 2 * w], None, None)));
        }
        Ok(out)
    }
    fn parameters(&self) -> Vec<Tensor> {
        self.vs.trainable_variables()
    }
    fn named_weights(&self) -> Vec<(String, Tensor)> {
        self.vs.variables().into_iter().collect()
    }
}

#[test]
fn works_with_a_user_defined_autoencoder() {
    let _rng = GlobalRng::lock();
    let toy = Toy::new();
    for norm in
        [Normalization::PredStats, Normalization::TargetChannelL2, Normalization::SeparateStats]
    {
        let mut config = all_kept(LplConfig::preset("paper").unwrap());
        config.norm = norm;
        let lpl = LatentPerceptualLoss::new(&toy, toy.codec.clone(), config).unwrap();
        assert_eq!(
            lpl.plan().iter().map(|p| p.mask_down).collect::<Vec<_>>(),
            vec![Some(2), Some(1)]
        );
        let z0 = Tensor::randn([3, 2, 8, 8], (Kind::Float, Device::Cpu));
        let x0_hat = (&z0 * 0.5).set_requires_grad(true);
        let out = lpl
            .loss(
                &x0_hat,
                &z0,
                &Tensor::from_slice(&[0i64, 1, 2]),
                &NoiseSchedule::preset("dit").unwrap(),
                Parameterization::Eps,
            )
            .unwrap();
        out.total.backward();
        assert!(f64::try_from(&out.total).unwrap() > 0.0, "{norm:?}");
        assert!(toy.vs.trainable_variables().iter().all(|p| !p.grad().defined()));
        assert_eq!(out.per_layer.size(), vec![2]);
    }
}

/// `value_and_grad` in chunks of 1 and 2 kept samples, keeping each chunk's decoder graph or
/// recomputing it piece by piece (`recompute`; the layer terms a few channels at a time
/// where they decompose over channels), gives the loss, the per-sample and per-layer
/// terms and the gradient of the whole-batch `loss` + backward, for both presets, with the
/// SNR gate, min-SNR weighting and either batch reduction. Recomputation runs the same
/// kernels on the same shapes, the stage gradients summed in another order. Tolerances: the chunks
/// run the same per-sample arithmetic on batches of 1 or 2 instead of 3, so only
/// batch-size-dependent kernel choices (convolution blocking) reorder f32 sums: ~1e-7 per
/// feature, ~1e-6 on the losses (means of thousands of terms); 1e-5 relative on values and
/// 1e-4 on the gradient (floored at 5% of its largest entry) leave a margin of 10.
#[test]
fn chunked_gradient_equals_the_whole_batch_gradient() {
    let _rng = GlobalRng::lock();
    let vae = frozen_vae();
    let g = golden();
    let schedule = NoiseSchedule::preset("sd15").unwrap();
    let paper = LplConfig::preset("paper").unwrap();
    let cases = [
        ("paper, all kept".to_string(), all_kept(paper.clone())),
        ("diffusers, all kept".to_string(), all_kept(LplConfig::preset("diffusers").unwrap())),
        (
            "paper, SNR gate, min-SNR, batch mean".to_string(),
            LplConfig {
                min_snr_gamma: Some(5.0),
                batch_reduce: lpl_loss::BatchReduce::Batch,
                ..paper
            },
        ),
    ];
    for (name, config) in cases {
        let lpl = LatentPerceptualLoss::new(&vae, vae.codec().clone(), config).unwrap();
        // t = 50 and 150 pass the SNR gate, 600 does not
        let t = Tensor::from_slice(&[50i64, 600, 150]);
        let x0_hat = g["input"].copy().set_requires_grad(true);
        let whole = lpl.loss(&x0_hat, &g["target"], &t, &schedule, Parameterization::Eps).unwrap();
        whole.total.backward();
        let reference = x0_hat.grad();
        // per_sample is L(b) before min-SNR weighting, whatever the weighting (it was
        // weighted in place by mistake when min_snr_gamma was set)
        let plain = LatentPerceptualLoss::new(
            &vae,
            vae.codec().clone(),
            LplConfig { min_snr_gamma: None, ..lpl.config().clone() },
        )
        .unwrap();
        let unweighted =
            plain.loss(&g["input"], &g["target"], &t, &schedule, Parameterization::Eps);
        assert!(unweighted.unwrap().per_sample.equal(&whole.per_sample), "{name}: per_sample");
        let recomputing = || {
            LatentPerceptualLoss::new(
                &vae,
                vae.codec().clone(),
                LplConfig { chunk: Some(1), recompute: true, ..lpl.config().clone() },
            )
            .unwrap()
        };
        // the layer terms 3 channels at a time (the fixture's maps have 8 or 16: uneven
        // chunks), as the default 32 splits the SD decoder's 256 and 512
        let by_channels = recomputing().with_term_channel_chunk(3);
        let recomputing = recomputing();
        for (chunk, loss, how) in [
            (1, &lpl, "graph kept"),
            (2, &lpl, "graph kept"),
            (1, &recomputing, "recomputed"),
            (2, &recomputing, "recomputed"),
            (2, &by_channels, "recomputed, 3 channels at a time"),
        ] {
            let (out, grad) = loss
                .value_and_grad(
                    &g["input"],
                    &g["target"],
                    &t,
                    &schedule,
                    Parameterization::Eps,
                    chunk,
                )
                .unwrap();
            let what = format!("{name}, chunk {chunk}, {how}");
            assert!(max_rel(&out.total, &whole.total) < 1e-5, "{what}: total");
            assert!(max_rel_floored(&out.per_sample, &whole.per_sample, 1e-3) < 1e-5, "{what}");
            assert!(max_rel_floored(&out.per_layer, &whole.per_layer, 1e-3) < 1e-5, "{what}");
            assert!(max_rel_floored(&out.masked_fraction, &whole.masked_fraction, 1e-3) < 1e-5);
            assert!(out.kept_fraction.equal(&whole.kept_fraction), "{what}: kept");
            let err = max_rel_floored(&grad, &reference, 0.05);
            assert!(err < 1e-4, "{what}: gradient {err:e}");
            assert!(!grad.requires_grad() && !out.total.requires_grad(), "{what}: detached");
        }
    }
}
