//! The statistics of the report: mean and spread over seeds, and the paired verdict on
//! the sign of an effect (Student's t quantiles from `statrs`).

use statrs::distribution::{ContinuousCDF, StudentsT};

/// `x` with 5 significant digits: fixed-point between 0.01 and 10^6, else scientific (an LPL
/// term can be 1e-4 on one decoder and 6e4 on another).
pub fn significant(x: f64) -> String {
    let a = x.abs();
    if x == 0.0 || !x.is_finite() {
        format!("{x}")
    } else if (0.01..1e6).contains(&a) {
        let decimals = (4 - a.log10().floor() as i64).max(0) as usize;
        format!("{x:.decimals$}")
    } else {
        format!("{x:.4e}")
    }
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// One sentence on the paired difference `lpl - mse` of `metric` over seeds: its sign, the
/// relative change, and whether a two-sided paired t-test at 95% finds it significant.
pub fn verdict(mse: &[f64], lpl: &[f64], metric: &str) -> String {
    verdict_of("LPL", mse, lpl, metric)
}

/// [`verdict`] for an arm called `name` in the sentence (`LPL`, `pixel`).
pub fn verdict_of(name: &str, mse: &[f64], lpl: &[f64], metric: &str) -> String {
    let diffs: Vec<f64> = lpl.iter().zip(mse).map(|(l, m)| l - m).collect();
    let (d, sd) = mean_std(&diffs);
    let (m, _) = mean_std(mse);
    let direction = if d < 0.0 { "lower (better)" } else { "higher (worse)" };
    let change = format!("{metric} {:.2} -> {:.2} ({:+.1}%)", m, m + d, d / m * 100.0);
    if diffs.len() < 2 {
        return format!("{name} {direction}: {change}, one seed: no spread estimate, inconclusive");
    }
    let t = d / (sd / (diffs.len() as f64).sqrt()).max(1e-12);
    let better = diffs.iter().filter(|x| **x < 0.0).count();
    let critical = t_critical_95(diffs.len() - 1);
    let strength = if t.abs() >= critical {
        format!("significant at 95% (paired t-test, |t| >= {critical:.2})")
    } else {
        format!("within the seed-to-seed spread: not significant at 95% (|t| < {critical:.2})")
    };
    format!(
        "{name} {direction}: {change}; paired difference {d:+.2} +- {sd:.2} over {} seeds (t = {t:.1}), {strength}; {name} better in {better} of {} seeds",
        diffs.len(),
        diffs.len()
    )
}

/// The power the minimal detectable effect is stated at (the usual 80%).
pub const MDE_POWER: f64 = 0.8;

/// The minimal detectable effect of a two-sided paired t-test at 95% with [`MDE_POWER`]
/// power, for `n` paired differences with sample standard deviation `sd`:
/// `(t_{0.975, n-1} + t_{power, n-1}) sd / sqrt(n)` (the effect at which the test rejects
/// with that probability, the noncentral t approximated by a shifted central one, as power
/// tables for small samples do). Infinite with fewer than 2 pairs.
pub fn minimal_detectable_effect(sd: f64, n: usize) -> f64 {
    if n < 2 {
        return f64::INFINITY;
    }
    let df = (n - 1) as f64;
    match StudentsT::new(0.0, 1.0, df) {
        Ok(t) => (t.inverse_cdf(0.975) + t.inverse_cdf(MDE_POWER)) * sd / (n as f64).sqrt(),
        Err(_) => f64::INFINITY,
    }
}

/// The sentence of the report on what a run could have seen: the minimal detectable
/// paired difference of `metric` from the measured spread of the paired differences,
/// absolute and as a percentage of the MSE arm's mean.
pub fn power_statement(mse: &[f64], lpl: &[f64], metric: &str) -> String {
    let diffs: Vec<f64> = lpl.iter().zip(mse).map(|(l, m)| l - m).collect();
    let (_, sd) = mean_std(&diffs);
    let (m, _) = mean_std(mse);
    let mde = minimal_detectable_effect(sd, diffs.len());
    if !mde.is_finite() {
        return format!(
            "with {} seed(s) there is no spread estimate: no effect size is detectable",
            diffs.len()
        );
    }
    format!(
        "this run could have seen a change of {metric} of {mde:.2} ({:.1}% of the MSE arm's {m:.2}) with {:.0}% power at 95% (paired over {} seeds, spread of the differences {sd:.2})",
        mde / m.abs() * 100.0,
        MDE_POWER * 100.0,
        diffs.len()
    )
}

/// Two-sided 95% critical value of Student's t with `df` degrees of freedom (the 0.975
/// quantile); infinite for `df = 0`.
pub fn t_critical_95(df: usize) -> f64 {
    match StudentsT::new(0.0, 1.0, df as f64) {
        Ok(t) if df > 0 => t.inverse_cdf(0.975),
        _ => f64::INFINITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five significant digits whatever the scale: an LPL term of 1.2e-4 (TAEF2, channel-L2
    /// normalisation) and one of 58,296 (pred_stats) are both readable.
    #[test]
    fn significant_keeps_five_digits_at_every_scale() {
        assert_eq!(significant(0.5), "0.50000");
        assert_eq!(significant(58_296.516_81), "58297");
        assert_eq!(significant(831.008_6), "831.01");
        assert_eq!(significant(1.234_56e-4), "1.2346e-4");
        assert_eq!(significant(-0.012_345_6), "-0.012346");
        assert_eq!(significant(2.5e7), "2.5000e7");
        assert_eq!(significant(0.0), "0");
    }

    #[test]
    fn verdicts_state_sign_and_spread() {
        let v = verdict(&[10.0, 11.0, 12.0], &[9.0, 10.1, 11.0], "FD");
        assert!(v.contains("lower (better)") && v.contains("significant at 95%"), "{v}");
        assert!(!v.contains("not significant"), "{v}");
        // t = 3.6 on 3 seeds is below the 4.30 of 2 degrees of freedom
        let v = verdict(&[10.0, 11.0, 12.0], &[10.6, 12.3, 12.6], "FD");
        assert!(v.contains("higher (worse)") && v.contains("not significant"), "{v}");
        let v = verdict(&[10.0, 11.0, 12.0], &[11.0, 10.0, 12.5], "FD");
        assert!(v.contains("higher (worse)") && v.contains("not significant"), "{v}");
        assert!(verdict(&[10.0], &[9.0], "FD").contains("inconclusive"));
    }

    #[test]
    fn t_quantiles_match_the_published_table() {
        // two-sided 95% critical values of Student's t (e.g. NIST/SEMATECH e-Handbook,
        // table 1.3.6.7.2), printed to 3 decimals: within 5e-4 of the exact quantile
        for (df, t) in [
            (1, 12.706),
            (2, 4.303),
            (3, 3.182),
            (5, 2.571),
            (10, 2.228),
            (11, 2.201),
            (12, 2.179),
            (15, 2.131),
            (16, 2.120),
            (20, 2.086),
            (30, 2.042),
            (100, 1.984),
        ] {
            assert!((t_critical_95(df) - t).abs() < 5e-4, "df {df}: {}", t_critical_95(df));
        }
        assert!(t_critical_95(0).is_infinite());
        // the hand table this replaces said 2.1 for df 11..=20: too lenient below df 17
        assert!(t_critical_95(11) > 2.1 && t_critical_95(16) > 2.1 && t_critical_95(17) < 2.11);
    }

    #[test]
    fn minimal_detectable_effect_by_hand() {
        // 3 seeds, sd of the differences 1.0: with 2 degrees of freedom t has the closed
        // form t_p = (2p - 1) / sqrt(2 p (1 - p)): t_0.975 = 4.30265, t_0.8 = 1.06066;
        // (4.30265 + 1.06066) / sqrt(3) = 3.09651
        assert!((minimal_detectable_effect(1.0, 3) - 3.09651).abs() < 1e-4);
        // 10 seeds, sd 2.5: t_{0.975, 9} = 2.2622, t_{0.8, 9} = 0.8830 (Student's t table);
        // (2.2622 + 0.8830) * 2.5 / sqrt(10) = 2.4865
        assert!((minimal_detectable_effect(2.5, 10) - 2.4865).abs() < 1e-3);
        assert!(minimal_detectable_effect(1.0, 1).is_infinite());
        // the sentence: differences 1, 2, 3 (sd 1) on an MSE mean of 50: 3.10, 6.2%
        let s = power_statement(&[50.0, 50.0, 50.0], &[51.0, 52.0, 53.0], "FD");
        assert!(s.contains("change of FD of 3.10 (6.2% of the MSE arm's 50.00)"), "{s}");
        assert!(power_statement(&[50.0], &[51.0], "FD").contains("no spread estimate"));
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(m, 5.0);
        // sum of squared deviations 32 over n - 1 = 7
        assert!((s - (32.0f64 / 7.0).sqrt()).abs() < 1e-15);
        assert_eq!(mean_std(&[3.0]), (3.0, 0.0));
        assert!(mean_std(&[]).0.is_nan());
    }
}
