//! Precision and recall of generative models (Kynkaanniemi et al. 2019) and density and
//! coverage (Naeem et al. 2020), on feature vectors, with k-nearest-neighbour balls.
//!
//! A set's manifold is the union of balls around its points, each with the radius of the
//! distance to that point's k-th nearest other point of the set. Precision: the fraction of
//! fake points inside the real manifold; recall: the fraction of real points inside the fake
//! manifold; density: the mean number of real balls a fake point falls in, divided by k;
//! coverage: the fraction of real balls that hold at least one fake point. A point on a ball's
//! boundary counts as inside.

use tch::{Kind, Tensor};

use crate::frechet::StatsError;

/// The four numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prdc {
    /// Fake points inside the real manifold.
    pub precision: f64,
    /// Real points inside the fake manifold.
    pub recall: f64,
    /// Real-ball memberships of fake points per fake point, divided by k (can exceed 1).
    pub density: f64,
    /// Real balls holding at least one fake point.
    pub coverage: f64,
}

/// Radii `(N,)`: distance of each point to its k-th nearest other point of `d` `(N, N)`.
fn radii(d: &Tensor, k: i64) -> Tensor {
    // the smallest value of each row is the point itself (0): take the (k + 1)-th
    d.kthvalue(k + 1, 1, false).0
}

/// Precision, recall, density and coverage of `fake` `(M, D)` against `real` `(N, D)` with
/// `k` neighbours (3 in the papers). Needs more than `k` points in each set.
pub fn prdc(real: &Tensor, fake: &Tensor, k: i64) -> Result<Prdc, StatsError> {
    let (n, m) = (real.size()[0], fake.size()[0]);
    if real.dim() != 2 || fake.dim() != 2 || real.size()[1] != fake.size()[1] {
        return Err(StatsError::Input(format!(
            "features must be (N, D) and (M, D), got {:?} and {:?}",
            real.size(),
            fake.size()
        )));
    }
    if k < 1 || n <= k || m <= k {
        return Err(StatsError::Input(format!(
            "k = {k} needs more than k points per set, got {n} and {m}"
        )));
    }
    let real = real.to_kind(Kind::Double);
    let fake = fake.to_kind(Kind::Double);
    let r_real = radii(&Tensor::cdist(&real, &real, 2.0, None), k); // (N,)
    let r_fake = radii(&Tensor::cdist(&fake, &fake, 2.0, None), k); // (M,)
    let d_rf = Tensor::cdist(&real, &fake, 2.0, None); // (N, M)
    let in_real_balls = d_rf.le_tensor(&r_real.unsqueeze(1)); // (N, M): fake j in ball of real i
    let in_fake_balls = d_rf.le_tensor(&r_fake.unsqueeze(0)); // real i in ball of fake j
    let mean =
        |t: Tensor| f64::try_from(t.to_kind(Kind::Double).mean(Kind::Double)).unwrap_or(f64::NAN);
    Ok(Prdc {
        precision: mean(in_real_balls.any_dim(0, false)),
        recall: mean(in_fake_balls.any_dim(1, false)),
        density: f64::try_from(in_real_balls.to_kind(Kind::Double).sum(Kind::Double))
            .unwrap_or(f64::NAN)
            / (k * m) as f64,
        coverage: mean(in_real_balls.any_dim(1, false)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lpl_torch_ext::GlobalRng;
    use tch::Device;

    fn points(v: &[f64]) -> Tensor {
        Tensor::from_slice(v).view([-1, 1])
    }

    #[test]
    fn hand_computed_one_dimensional_case() {
        let _rng = GlobalRng::lock();
        // real 0, 1, 2, 3 (k = 1 radii all 1); fake 0.5 and 10 (radii 9.5)
        let p = prdc(&points(&[0.0, 1.0, 2.0, 3.0]), &points(&[0.5, 10.0]), 1).unwrap();
        // exact equality: dyadic points, so every f64 distance and radius is exact on any kernel
        assert_eq!(p.precision, 0.5); // 0.5 is inside, 10 is not
        assert_eq!(p.recall, 1.0); // the ball around 0.5 of radius 9.5 holds every real point
        assert_eq!(p.density, 1.0); // 0.5 lies in the balls of 0 and 1: (2 + 0) / (1 * 2)
        assert_eq!(p.coverage, 0.5); // the balls of 0 and 1 hold a fake point, 2 and 3 do not
    }

    #[test]
    fn identical_and_disjoint_sets() {
        let _rng = GlobalRng::lock();
        let a = Tensor::randn([200, 8], (Kind::Double, Device::Cpu));
        let same = prdc(&a, &a, 3).unwrap();
        assert_eq!((same.precision, same.recall, same.coverage), (1.0, 1.0, 1.0));
        let far = prdc(&a, &(&a + 100.0), 3).unwrap();
        assert_eq!((far.precision, far.recall, far.density, far.coverage), (0.0, 0.0, 0.0, 0.0));
        assert!(prdc(&a, &a.narrow(0, 0, 3), 3).is_err());
    }
}
