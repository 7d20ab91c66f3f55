//! Importance weights with heavy tails: how far a batch of log-weights ln w = −S − ln q can be
//! trusted, and what independence Metropolis will accept.
//!
//! * [`pareto_k`]: the Pareto shape k̂ of the upper tail of the weights (Vehtari, Simpson,
//!   Gelman, Yao and Gabry, "Pareto smoothed importance sampling", JMLR 25 (2024) 1), fitted
//!   with the empirical-Bayes estimator of Zhang and Stephens (Technometrics 51 (2009) 316).
//!   The weights have finite variance only for k < 1/2; above k ≈ 0.7 importance-sampling
//!   means, the ESS and batch acceptance estimates are unreliable at any practical N.
//! * [`imh_acceptance`]: the stationary acceptance of independence Metropolis with proposal q
//!   and target p ∝ e^{−S}, written as q-expectations, A = E_{q⊗q}[min(w, w′)] / E_q[w], and
//!   estimated from the batch by the ratio of its U-statistic and its mean. Unlike a chain run
//!   through the batch (which starts from a q-draw rather than a p-draw), it weighs the
//!   current state as p does; it is consistent, but still optimistic while the batch misses the
//!   tail that dominates E_q[w] (k̂ tells when).
//! * [`lognormal_acceptance`]: A = 2Φ(−σ/√2) for ln w ~ N(μ, σ²) under q, with σ² the batch
//!   variance of ln w, which stays well estimated when the weights themselves are heavy
//!   tailed. ln w is a sum of many local terms on a large lattice, so this is the large-volume
//!   form; it is pessimistic when ln w has a heavier upper tail than a Gaussian.

/// k̂ above which importance-sampling estimates from the weights are unreliable (Vehtari et
/// al.: the error then falls far more slowly than 1/√N, and a practical N does not suffice).
pub const PARETO_K_MAX: f64 = 0.7;

/// The Pareto shape k̂ of the largest weights of the batch `log_w` (ln w, any common offset):
/// the generalised Pareto distribution fitted to the exceedances of the M = ⌈min(N/5, 3√N)⌉
/// largest weights over the next one, with Zhang and Stephens' estimator and the weakly
/// informative prior of Vehtari et al. (k̂ ← (M k̂ + 5)/(M + 10)). NaN when N gives fewer than
/// five tail points, or a log-weight is NaN or infinite.
pub fn pareto_k(log_w: &[f64]) -> f64 {
    let n = log_w.len();
    if log_w.iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    let tail = (0.2 * n as f64).min(3.0 * (n as f64).sqrt()).ceil() as usize;
    if tail < 5 || tail >= n {
        return f64::NAN;
    }
    let mut sorted = log_w.to_vec();
    sorted.sort_by(f64::total_cmp);
    let max = sorted[n - 1];
    let cutoff = (sorted[n - tail - 1] - max).exp();
    let x: Vec<f64> = sorted[n - tail..].iter().map(|&l| (l - max).exp() - cutoff).collect();
    if x[tail - 1] <= 0.0 {
        // every tail weight equals the cutoff: no tail at all
        return f64::NEG_INFINITY;
    }
    gpd_shape(&x)
}

/// Zhang and Stephens' posterior-mean shape of a generalised Pareto fit to `x` (ascending,
/// ≥ 0, largest > 0), with the prior toward k = 1/2 of weight 10.
fn gpd_shape(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let m = 30 + (n.sqrt() as usize);
    let quartile = x[((n / 4.0 + 0.5) as usize).max(1) - 1].max(f64::MIN_POSITIVE);
    let b: Vec<f64> = (1..=m)
        .map(|j| (1.0 - (m as f64 / (j as f64 - 0.5)).sqrt()) / (3.0 * quartile) + 1.0 / x[x.len() - 1])
        .collect();
    let k_of = |b: f64| x.iter().map(|&xi| (-b * xi).ln_1p()).sum::<f64>() / n;
    let ks: Vec<f64> = b.iter().map(|&bj| k_of(bj)).collect();
    // profile log-likelihood of each candidate, then weights ∝ e^{ℓ_j}, normalised stably
    let ell: Vec<f64> = b.iter().zip(&ks).map(|(&bj, &kj)| n * ((-bj / kj).ln() - kj - 1.0)).collect();
    let top = ell.iter().copied().filter(|v| v.is_finite()).fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return f64::NAN;
    }
    let w: Vec<f64> = ell.iter().map(|&l| if l.is_finite() { (l - top).exp() } else { 0.0 }).collect();
    let total: f64 = w.iter().sum();
    let b_post = b.iter().zip(&w).map(|(bj, wj)| bj * wj).sum::<f64>() / total;
    let k = k_of(b_post);
    (n * k + 10.0 * 0.5) / (n + 10.0)
}

/// The stationary acceptance of independence Metropolis estimated from the batch `log_w`:
/// [Σ_{i≠j} min(w_i, w_j) / (N(N−1))] / [Σ_i w_i / N], in [0, 1]. NaN for fewer than two
/// samples or a NaN/infinite log-weight.
pub fn imh_acceptance(log_w: &[f64]) -> f64 {
    let n = log_w.len();
    if n < 2 || log_w.iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    let mut sorted = log_w.to_vec();
    sorted.sort_by(f64::total_cmp);
    let max = sorted[n - 1];
    let w: Vec<f64> = sorted.iter().map(|&l| (l - max).exp()).collect();
    // in ascending order the k-th weight (0-based) is the smaller one of its n − 1 − k pairs
    // with larger ones: Σ_{i<j} min = Σ_k w_k (n − 1 − k)
    let pairs = crate::sum_iter(w.iter().enumerate().map(|(k, &wk)| wk * (n - 1 - k) as f64));
    let mean = crate::sum(&w) / n as f64;
    (2.0 * pairs / (n * (n - 1)) as f64 / mean).clamp(0.0, 1.0)
}

/// The acceptance of independence Metropolis if ln w were Gaussian under q with the batch's
/// variance σ²: 2Φ(−σ/√2) = erfc(σ/2). NaN for fewer than two samples or a non-finite entry.
pub fn lognormal_acceptance(log_w: &[f64]) -> f64 {
    let n = log_w.len();
    if n < 2 || log_w.iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    let mean = crate::sum(log_w) / n as f64;
    let var = crate::sum_iter(log_w.iter().map(|&l| (l - mean) * (l - mean))) / (n - 1) as f64;
    libm::erfc(0.5 * var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    #[test]
    fn erfc_matches_known_values() {
        use libm::erfc;
        for (x, v) in [(0.0, 1.0), (0.5, 0.4795001221869535), (1.0, 0.15729920705028513), (2.0, 0.004677734981047266), (3.0, 2.209049699858544e-5), (5.0, 1.537_459_794_428_035e-12)] {
            assert!((erfc(x) - v).abs() < 1e-13 * v, "erfc({x}) = {} vs {v}", erfc(x));
        }
    }

    /// Pareto weights w = u^{−k} have tail shape k: k̂ recovers it from 10⁵ samples (a tail of
    /// 949, so the estimator's standard deviation is about (1 + k)/√949 ≈ 0.04–0.07; the test
    /// allows 4 of them).
    #[test]
    fn pareto_k_recovers_the_shape_of_pareto_weights() {
        for (k, seed) in [(0.2, 1), (0.5, 2), (0.8, 3), (1.2, 4)] {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            let lw: Vec<f64> = (0..100_000).map(|_| -k * (1.0 - r.random::<f64>()).ln()).collect();
            let kh = pareto_k(&lw);
            let sd = (1.0 + k) / 949f64.sqrt();
            println!("k = {k}: k̂ = {kh:.3} (z = {:+.2})", (kh - k) / sd);
            assert!((kh - k).abs() < 4.0 * sd, "k = {k}: k̂ = {kh}");
        }
        // light tails (ln w Gaussian with small σ) give k̂ well below 1/2; no tail gives −∞
        let mut r = ChaCha8Rng::seed_from_u64(5);
        let lw: Vec<f64> = (0..10_000).map(|_| 0.3 * r.sample::<f64, _>(StandardNormal)).collect();
        assert!(pareto_k(&lw) < 0.3, "k̂ = {}", pareto_k(&lw));
        assert_eq!(pareto_k(&[1.0; 100]), f64::NEG_INFINITY);
        assert!(pareto_k(&[0.0; 20]).is_nan(), "20 samples give a tail of 4: too few to fit");
        assert!(pareto_k(&[0.0; 25]) == f64::NEG_INFINITY, "25 give 5");
        assert!(pareto_k(&[0.0, f64::NAN, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0]).is_nan());
    }

    /// For Gaussian ln w the three acceptances agree with the closed form 2Φ(−σ/√2) at large N,
    /// the U-statistic equals the brute-force pair sum, and equal weights accept everything.
    #[test]
    fn acceptance_estimates_agree_on_gaussian_log_weights() {
        for (sigma, seed) in [(0.5, 6), (1.5, 7)] {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            let lw: Vec<f64> = (0..40_000).map(|_| 3.0 + sigma * r.sample::<f64, _>(StandardNormal)).collect();
            let exact = libm::erfc(0.5 * sigma);
            let (iw, ln) = (imh_acceptance(&lw), lognormal_acceptance(&lw));
            assert!((iw - exact).abs() < 0.02, "σ = {sigma}: IW {iw} vs {exact}");
            assert!((ln - exact).abs() < 0.01, "σ = {sigma}: log-normal {ln} vs {exact}");
        }
        let lw = [0.3, -1.0, 2.0, 0.7, -0.2];
        let w: Vec<f64> = lw.iter().map(|l: &f64| l.exp()).collect();
        let mut pairs = 0.0;
        for i in 0..5 {
            for j in 0..5 {
                if i != j {
                    pairs += w[i].min(w[j]);
                }
            }
        }
        let brute = pairs / 20.0 / (w.iter().sum::<f64>() / 5.0);
        assert!((imh_acceptance(&lw) - brute).abs() < 1e-14);
        assert_eq!(imh_acceptance(&[2.0; 8]), 1.0);
        assert!(imh_acceptance(&[1.0]).is_nan() && lognormal_acceptance(&[f64::INFINITY, 0.0]).is_nan());
    }
}
