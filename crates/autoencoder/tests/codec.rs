//! LatentCodec: exact inverses, presets, statistics from data, serialisation, validation.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use lpl_autoencoder::{InputRange, LatentCodec, LatentNormalization, codec::CODEC_PRESETS};
use tch::{Device, Kind, Tensor};

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

#[test]
fn to_model_and_to_decoder_are_inverse() {
    let z = Tensor::randn([2, 4, 3, 3], (Kind::Double, Device::Cpu));
    for name in CODEC_PRESETS {
        let codec = LatentCodec::preset(name).unwrap();
        let back = codec.to_decoder(&codec.to_model(&z).unwrap()).unwrap();
        // 1e-12: f64 |z| < 6, affine map + inverse, basic ops only (same on any CPU): ~1e-15
        assert!(max_abs(&back, &z) < 1e-12, "{name}");
    }
    let flux = LatentCodec::preset("flux1").unwrap();
    let one = Tensor::ones([1, 1, 1, 1], (Kind::Double, Device::Cpu));
    let m = f64::try_from(flux.to_model(&one).unwrap()).unwrap();
    // 1e-12: the reference's two f64 basic ops on 0.32, correctly rounded on any CPU: ~1e-16
    assert!((m - (1.0 - 0.1159) * 0.3611).abs() < 1e-12);
}

#[test]
fn per_channel_statistics_normalise_the_data() {
    // channel c has mean c and std c + 1
    let base = Tensor::randn([512, 3, 4, 4], (Kind::Double, Device::Cpu));
    let mean = Tensor::from_slice(&[0.0, 1.0, 2.0]).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&[1.0, 2.0, 3.0]).view([1, 3, 1, 1]);
    let z = &base * &std + &mean;
    let codec = LatentCodec::from_latents(InputRange::MinusOneToOne, &z).unwrap();
    let m = codec.to_model(&z).unwrap();
    let per_channel_mean = m.mean_dim(&[0i64, 2, 3][..], false, Kind::Double);
    let per_channel_std = m.std_dim(&[0i64, 2, 3][..], false, false);
    // 1e-10 (x3): f64 stats of 8192 values |x| < 16, any summation order: ~sqrt(n)*eps*|x| ~ 3e-13
    assert!(f64::try_from(per_channel_mean.abs().max()).unwrap() < 1e-10);
    assert!(f64::try_from((per_channel_std - 1.0).abs().max()).unwrap() < 1e-10);
    assert!(max_abs(&codec.to_decoder(&m).unwrap(), &z) < 1e-10);
    // wrong channel count is an error, not a broadcast
    let four = Tensor::zeros([1, 4, 2, 2], (Kind::Double, Device::Cpu));
    assert!(codec.to_model(&four).unwrap_err().to_string().contains("3 channels"));
}

#[test]
fn json_round_trip_and_validation() {
    let codec = LatentCodec::preset("sd3").unwrap();
    assert_eq!(LatentCodec::from_json(&codec.to_json()).unwrap(), codec);
    let bad = LatentCodec {
        input_range: InputRange::ZeroToOne,
        normalization: LatentNormalization::PerChannel {
            mean: vec![0.0, 0.0],
            std: vec![1.0, 0.0],
        },
    };
    assert!(bad.validate().unwrap_err().to_string().contains("`std`"));
    let zero = LatentCodec::affine(InputRange::MinusOneToOne, 0.0, 0.0);
    assert!(zero.validate().unwrap_err().to_string().contains("`scale`"));
    let unknown = LatentCodec::from_json(
        r#"{"input_range":"zero_to_one","normalization":{"kind":"affine","scale":1.0,"shift":0.0},"gain":2}"#,
    );
    assert!(unknown.unwrap_err().to_string().contains("gain"));
    assert!(LatentCodec::preset("sd4").unwrap_err().to_string().contains("sdxl"));
}

#[test]
fn pixel_range_conversions() {
    let px = Tensor::from_slice(&[0.0f32, 0.5, 1.0]).view([1, 1, 1, 3]);
    let kl = LatentCodec::preset("sd").unwrap();
    assert_eq!(
        Vec::<f32>::try_from(kl.pixels_to_input(&px).flatten(0, -1)).unwrap(),
        vec![-1.0, 0.0, 1.0]
    );
    let out = Tensor::from_slice(&[-2.0f32, 0.0, 2.0]).view([1, 1, 1, 3]);
    assert_eq!(
        Vec::<f32>::try_from(kl.output_to_pixels(&out).flatten(0, -1)).unwrap(),
        vec![0.0, 0.5, 1.0]
    );
}
