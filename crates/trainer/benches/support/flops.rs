//! Analytic FLOP counts of a training step (2 per multiply-add; matmuls and convolutions
//! only: norms, activations and elementwise ops are under 1% of these models' work) and the
//! measured matmul peak they are set against (model FLOP utilisation, MFU).

use lpl_autoencoder::AutoencoderKlConfig;
use lpl_denoiser::DitConfig;

/// One image through a DiT: patch embedding, per block the adaLN modulation, attention
/// projections (q, k, v, out), attention scores and mixing, the 4x MLP; the final adaLN and
/// projection; the timestep embedder.
pub fn dit_forward(c: &DitConfig) -> f64 {
    let d = (c.num_attention_heads * c.attention_head_dim) as f64;
    let p = c.patch_size as f64;
    let n = (c.sample_size as f64 / p).powi(2);
    let cin = c.in_channels as f64;
    let cout = c.out_channels.unwrap_or(c.in_channels) as f64;
    let block = 2.0 * d * 6.0 * d // adaLN-Zero modulation (once per image)
        + 2.0 * n * 4.0 * d * d // q, k, v, out
        + 2.0 * 2.0 * n * n * d // scores and mixing
        + 2.0 * n * 8.0 * d * d; // MLP d -> 4d -> d
    let embed = 2.0 * n * cin * p * p * d + 2.0 * (256.0 * d + d * d);
    let last = 2.0 * d * 2.0 * d + 2.0 * n * d * p * p * cout;
    c.num_layers as f64 * block + embed + last
}

/// A training step of `batch` images: forward and backward (twice the forward).
pub fn dit_step(c: &DitConfig, batch: i64) -> f64 {
    3.0 * batch as f64 * dit_forward(c)
}

fn conv3(cin: f64, cout: f64, hw: f64) -> f64 {
    2.0 * cin * cout * 9.0 * hw
}

fn resnet(cin: f64, cout: f64, hw: f64) -> f64 {
    conv3(cin, cout, hw)
        + conv3(cout, cout, hw)
        + if cin != cout { 2.0 * cin * cout * hw } else { 0.0 }
}

/// One latent of `hw` positions through a diffusers decoder up to feature map `depth`
/// (`decode_features`: input convolution, mid block with its attention, the first `depth`
/// up blocks with their upsampling convolutions).
pub fn decoder_features(c: &AutoencoderKlConfig, latent_hw: f64, depth: usize) -> f64 {
    let channels: Vec<f64> = c.block_out_channels.iter().rev().map(|&x| x as f64).collect();
    let top = channels[0];
    let mut hw = latent_hw;
    let mut flops = conv3(c.latent_channels as f64, top, hw)
        + 2.0 * resnet(top, top, hw)
        + 2.0 * 4.0 * top * top * hw // attention projections
        + 2.0 * 2.0 * hw * hw * top; // scores and mixing
    let mut prev = top;
    for (i, &out) in channels.iter().enumerate().take(depth) {
        for r in 0..=c.layers_per_block {
            flops += resnet(if r == 0 { prev } else { out }, out, hw);
        }
        prev = out;
        if i + 1 < channels.len() {
            hw *= 4.0;
            flops += conv3(out, out, hw);
        }
    }
    flops
}

/// The LPL branch of a step for `kept` samples: the prediction's features with their
/// backward (3 forwards) and the target's features (1 forward).
pub fn lpl_branch(c: &AutoencoderKlConfig, latent_hw: f64, depth: usize, kept: f64) -> f64 {
    4.0 * kept * decoder_features(c, latent_hw, depth)
}

/// The best of 5 timed f32 (or `kind`) 2048x2048 matmuls on `device`, FLOP/s.
pub fn matmul_peak(device: tch::Device, kind: tch::Kind) -> f64 {
    let n = 2048i64;
    let a = tch::Tensor::randn([n, n], (kind, device));
    let b = tch::Tensor::randn([n, n], (kind, device));
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        super::sync(device);
        let start = std::time::Instant::now();
        let c = a.matmul(&b);
        super::sync(device);
        let _ = c.sum(tch::Kind::Float);
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best
}
