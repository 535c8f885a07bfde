//! tch really computes and trains on this machine: a tiny conv net fitted on CPU.

use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Gradient descent on a 2-layer conv net regressing a fixed smooth target: every one of 20
/// steps must lower the loss, and the total drop must be substantial.
#[test]
fn tiny_conv_net_loss_strictly_decreases() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let cfg = nn::ConvConfig { padding: 1, ..Default::default() };
    let net = nn::seq()
        .add(nn::conv2d(&root / "conv_in", 1, 8, 3, cfg))
        .add_fn(|x| x.silu())
        .add(nn::conv2d(&root / "conv_out", 8, 1, 3, cfg));
    let x = Tensor::randn([4, 1, 8, 8], (Kind::Float, Device::Cpu));
    // A target the net can represent: a blurred, scaled copy of the input.
    let kernel = Tensor::full([1, 1, 3, 3], 1.0 / 9.0, (Kind::Float, Device::Cpu));
    let target = x.conv2d(&kernel, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1) * 0.5;
    let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
    let mut losses = Vec::new();
    for _ in 0..20 {
        let loss = net.forward(&x).mse_loss(&target, tch::Reduction::Mean);
        opt.backward_step(&loss);
        losses.push(f64::try_from(&loss).unwrap());
    }
    for pair in losses.windows(2) {
        assert!(pair[1] < pair[0], "loss did not decrease: {losses:?}");
    }
    assert!(losses[19] < 0.5 * losses[0], "loss fell too little: {losses:?}");
}
