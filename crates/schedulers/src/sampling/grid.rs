//! Inference time grids, reproducing diffusers' `set_timesteps` of each scheduler exactly
//! (including numpy's rounding and `arange` length rules), so that the same step count and
//! spacing visit the same noise levels.

use serde::{Deserialize, Serialize};

/// How inference timesteps are spread over the N training steps (Lin et al. 2023, table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// `0, r, 2r, ...` (+ offset) with integer stride `r = N / steps`; never visits t = N-1.
    Leading,
    /// `linspace(0, N - 1, steps)`.
    Linspace,
    /// Counting down from N with stride `N / steps`, minus one: always starts at t = N-1.
    Trailing,
}

/// numpy's `arange(start, stop, step)` in f64: length `ceil((stop - start) / step)`.
fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    (0..len).map(|i| start + i as f64 * step).collect()
}

/// numpy's `linspace(start, stop, num)` in f64 (endpoint included exactly).
fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| start + i as f64 * step).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// DDPM / DDIM timesteps (integers, descending).
pub fn ddpm_timesteps(
    n_train: i64,
    steps: usize,
    spacing: TimestepSpacing,
    offset: i64,
) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (n_train - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = n_train / steps as i64;
            (0..steps as i64).rev().map(|i| i * ratio + offset).collect()
        }
        TimestepSpacing::Trailing => trailing(n_train, steps).map(|t| t as i64).collect(),
    }
}

/// Trailing spacing: `round(arange(N, 0, -N / steps)) - 1`.
fn trailing(n_train: i64, steps: usize) -> impl Iterator<Item = f64> {
    np_arange(n_train as f64, 0.0, -(n_train as f64 / steps as f64))
        .into_iter()
        .map(|t| t.round_ties_even() - 1.0)
}

/// Euler / Heun discrete timesteps (f32, possibly fractional for `Linspace`, descending).
pub fn euler_timesteps(
    n_train: i64,
    steps: usize,
    spacing: TimestepSpacing,
    offset: i64,
) -> Vec<f32> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (n_train - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(|t| t as f32)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = n_train / steps as i64;
            (0..steps as i64).rev().map(|i| (i * ratio) as f32 + offset as f32).collect()
        }
        TimestepSpacing::Trailing => trailing(n_train, steps).map(|t| t as f32).collect(),
    }
}

/// DPM-Solver multistep timesteps (integers, descending): `steps + 1` points with the last
/// dropped for `Linspace` and `Leading`.
pub fn dpm_timesteps(
    n_train: i64,
    steps: usize,
    spacing: TimestepSpacing,
    offset: i64,
) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<i64> = np_linspace(0.0, (n_train - 1) as f64, steps + 1)
                .into_iter()
                .rev()
                .map(|t| t.round_ties_even() as i64)
                .collect();
            v.pop();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = n_train / (steps as i64 + 1);
            (1..=steps as i64).rev().map(|i| i * ratio + offset).collect()
        }
        TimestepSpacing::Trailing => trailing(n_train, steps).map(|t| t as i64).collect(),
    }
}

/// numpy's `interp(x, arange(len(table)), table)` (clamped at the ends).
pub fn interp(x: f64, table: &[f32]) -> f64 {
    let last = table.len() - 1;
    if x <= 0.0 {
        return table[0] as f64;
    }
    if x >= last as f64 {
        return table[last] as f64;
    }
    let lo = x.floor() as usize;
    let w = x - lo as f64;
    let (a, b) = (table[lo] as f64, table[lo + 1] as f64);
    if w == 0.0 { a } else { a + (b - a) * w }
}

/// The flow-matching sigma grid of diffusers' `FlowMatchEulerDiscreteScheduler`: `steps`
/// values from 1 down to `shift(1 / N)` spaced linearly, then shifted, then a final 0. (The
/// lower end is shifted twice, as diffusers does.)
pub fn flow_sigmas(n_train: i64, steps: usize, shift: f64) -> Vec<f32> {
    let shift_f32 = |s: f32| -> f32 { (shift as f32) * s / (1.0 + (shift as f32 - 1.0) * s) };
    let sigma_max = shift_f32(1.0) as f64;
    let sigma_min = shift_f32(1.0 / n_train as f32) as f64;
    let n = n_train as f64;
    let mut sigmas: Vec<f32> = np_linspace(sigma_max * n, sigma_min * n, steps)
        .into_iter()
        .map(|t| {
            let s = t / n;
            (shift * s / (1.0 + (shift - 1.0) * s)) as f32
        })
        .collect();
    sigmas.push(0.0);
    sigmas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacings_match_diffusers_conventions() {
        assert_eq!(ddpm_timesteps(1000, 10, TimestepSpacing::Leading, 1)[..3], [901, 801, 701]);
        assert_eq!(ddpm_timesteps(1000, 10, TimestepSpacing::Trailing, 0)[..3], [999, 899, 799]);
        assert_eq!(*ddpm_timesteps(1000, 10, TimestepSpacing::Trailing, 0).last().unwrap(), 99);
        // numpy rounds half to even: linspace(0, 999, 3) = [0, 499.5, 999] -> 500
        assert_eq!(ddpm_timesteps(1000, 3, TimestepSpacing::Linspace, 0), vec![999, 500, 0]);
        assert_eq!(dpm_timesteps(1000, 10, TimestepSpacing::Leading, 0)[..2], [900, 810]);
        assert_eq!(interp(1.5, &[0.0, 2.0, 4.0]), 3.0);
        let flow = flow_sigmas(1000, 4, 1.0);
        assert_eq!(flow.len(), 5);
        assert_eq!(flow[0], 1.0);
        assert_eq!(flow[4], 0.0);
    }
}
