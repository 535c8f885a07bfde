//! Scaled dot-product attention that works wherever libtorch can compute it.
//!
//! libtorch's CPU flash-attention kernel refuses bf16 inputs when `ATEN_CPU_CAPABILITY` is
//! set below the hardware's ("pack_vnni2 is only supported when avx512 is supported"): it
//! decides to pack for AVX-512 VNNI from the CPU it finds, then runs the kernel compiled for
//! the capability it was told. [`scaled_dot_product`] then computes the same attention with
//! the math formulation PyTorch itself falls back to (`_scaled_dot_product_attention_math`),
//! and remembers that for reduced-precision inputs, so the refusal costs one exception per
//! process.

use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Kind, Tensor};

/// Set once the fused kernel refused a bf16/f16 input that the math kernel computed.
static FUSED_REFUSED_HALF: AtomicBool = AtomicBool::new(false);

/// `softmax(q k^T / sqrt(D)) v` for `q`, `k`, `v` of shape `(B, H, N, D)` (no mask, no
/// dropout, not causal): `torch.nn.functional.scaled_dot_product_attention(q, k, v)`.
///
/// Panics, as tch's `Tensor::scaled_dot_product_attention` does, only when neither kernel
/// can compute it (mismatched shapes, say): it serves `Module::forward`, which cannot fail.
pub fn scaled_dot_product(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let half = matches!(q.kind(), Kind::BFloat16 | Kind::Half);
    if half && FUSED_REFUSED_HALF.load(Ordering::Relaxed) {
        return math(q, k, v).unwrap_or_else(|e| panic!("scaled dot-product attention: {e}"));
    }
    let fused =
        Tensor::f_scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, false, None, false);
    match fused {
        Ok(out) => out,
        Err(refused) => {
            let out = math(q, k, v).unwrap_or_else(|e| {
                panic!("scaled dot-product attention: {refused}; math kernel: {e}")
            });
            if half {
                FUSED_REFUSED_HALF.store(true, Ordering::Relaxed);
            }
            out
        }
    }
}

fn math(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor, tch::TchError> {
    let (out, _weights) = Tensor::f_internal_scaled_dot_product_attention_math(
        q,
        k,
        v,
        None::<Tensor>,
        0.0,
        false,
        None::<Tensor>,
        None,
        false,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn equals_the_explicit_formula_in_f32_and_bf16() {
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::arange(2 * 2 * 5 * 4, opts).view([2, 2, 5, 4]).sin();
        let k = Tensor::arange(2 * 2 * 5 * 4, opts).view([2, 2, 5, 4]).cos();
        let v = Tensor::arange(2 * 2 * 5 * 4, opts).view([2, 2, 5, 4]) / 80.0;
        let expected = (q.matmul(&k.transpose(-2, -1)) / 2.0).softmax(-1, Kind::Float).matmul(&v);
        let err = |a: &Tensor| f64::try_from((a.to_kind(Kind::Float) - &expected).abs().max());
        // f32: a few ulps of values < 1
        assert!(err(&scaled_dot_product(&q, &k, &v)).is_ok_and(|e| e < 1e-6));
        let bf = |t: &Tensor| t.to_kind(Kind::BFloat16);
        // bf16 operands and output: 2^-8 relative on values < 1, through two products
        assert!(err(&scaled_dot_product(&bf(&q), &bf(&k), &bf(&v))).is_ok_and(|e| e < 2e-2));
        assert!(err(&math(&q, &k, &v).unwrap_or_else(|e| panic!("{e}"))).is_ok_and(|e| e < 1e-6));
    }
}
