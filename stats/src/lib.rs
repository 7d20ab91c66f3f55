//! `latflow-stats`: statistical analysis of Monte Carlo time series.
//!
//! * [`gamma_method`], [`gamma_method_derived`]: Wolff's Γ-method (U. Wolff, "Monte Carlo
//!   errors with less errors", hep-lat/0306017) for one replica, with automatic windowing.
//! * [`jackknife`], [`jackknife_weighted`]: blocked leave-one-bin-out jackknife of derived
//!   quantities, optionally with reweighting factors given as log-weights.
//! * [`autocorrelation`]: the normalised autocorrelation function.
//! * [`log_sum_exp`], [`ess_per_sample`], [`log_z_estimate`]: reweighting helpers in log space.
//!
//! Conventions: "time" is the Monte Carlo sample index, so autocorrelation times and windows
//! are in units of samples; errors are one standard deviation in the units of the estimate;
//! logarithms are natural. Sums over samples are compensated (Neumaier), so series of 10⁶
//! samples and more lose no significant accuracy. Only `std` is used.

use std::fmt;

/// Default `S_τ` of Wolff's automatic windowing (his recommended value).
pub const S_TAU_DEFAULT: f64 = 1.5;

/// Result of Wolff's Γ-method for a primary observable (or a derived function of primaries).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GammaResult {
    /// Estimate: the sample mean, or `f` at the primary means for a derived quantity.
    pub mean: f64,
    /// Error of `mean`, `√(C_W/N)`, in the units of `mean`.
    pub error: f64,
    /// Integrated autocorrelation time in samples (`0.5` for uncorrelated data).
    pub tau_int: f64,
    /// Error of `tau_int`, `τ_int √((4W+2)/N)`, in samples.
    pub tau_int_error: f64,
    /// Summation window `W` in samples (`0` for constant data or `S_τ = 0`).
    pub window: usize,
    /// Number of samples `N`.
    pub n: usize,
}

/// Result of a (weighted) jackknife analysis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JackknifeResult {
    /// `f` evaluated at the (weighted) means of all binned samples; not bias corrected.
    pub mean: f64,
    /// Jackknife error `√((M−1)/M Σ_k (f_k − f̄)²)` over the `M` leave-one-bin-out estimates.
    pub error: f64,
    /// Jackknife bias estimate `(M−1)(f̄ − mean)`; the bias-corrected estimate is `mean − bias`.
    pub bias: f64,
    /// Number of bins `M`.
    pub n_bins: usize,
}

/// Errors of the analysis routines.
#[derive(Debug, Clone, PartialEq)]
pub enum StatsError {
    /// Fewer than `need` samples were given (`n` of them).
    TooFewSamples { n: usize, need: usize },
    /// A NaN or infinite input value; `index` is its sample (row) index, the smallest one when
    /// several series (or series and log-weights) are given.
    NonFinite { index: usize },
    /// The Γ-method's variance estimate `C_W` is zero or negative (Wolff's "Gamma
    /// pathological"): the data are too few or too strongly anticorrelated.
    /// Exactly constant data are *not* an error.
    ZeroVariance,
    /// A series (or the log-weights) has `got` samples where `expected` were required.
    LengthMismatch { expected: usize, got: usize },
    /// The automatic windowing criterion was not met for any `W ≤ N/2`. This cannot happen for
    /// finite data and `0 < S_τ < ∞` (the criterion always holds once `W > N/e²`), so it is a
    /// defensive error only.
    NoWindow,
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooFewSamples { n, need } => {
                write!(f, "too few samples: got {n}, need at least {need}")
            }
            Self::NonFinite { index } => {
                write!(
                    f,
                    "non-finite value (NaN or infinite) at sample index {index}"
                )
            }
            Self::ZeroVariance => write!(
                f,
                "estimated variance of the mean is not positive (Γ-method C_W <= 0): \
                 too few or pathologically anticorrelated samples"
            ),
            Self::LengthMismatch { expected, got } => {
                write!(f, "length mismatch: expected {expected} samples, got {got}")
            }
            Self::NoWindow => write!(
                f,
                "automatic windowing found no window W <= N/2 satisfying Wolff's criterion"
            ),
        }
    }
}

impl std::error::Error for StatsError {}

// ---------------------------------------------------------------------------------------------
// Γ-method
// ---------------------------------------------------------------------------------------------

mod weights;
pub use weights::{imh_acceptance, lognormal_acceptance, pareto_k, PARETO_K_MAX};

/// Γ-method on one series (single replica), following Wolff (hep-lat/0306017).
///
/// With `Γ(t) = 1/(N−t) Σ_{i<N−t} (a_i − ā)(a_{i+t} − ā)`, the window `W` is the first
/// `W ≥ 1` with `exp(−W/τ) − τ/√(WN) < 0`, where `τ = S_τ / ln((2τ_int(W)+1)/(2τ_int(W)−1))`
/// and `τ_int(W) = ½ + Σ_{t=1}^{W} Γ(t)/Γ(0)` (if `τ_int(W) ≤ ½`, `τ` is tiny and `W` is
/// accepted). Then `C_W = Γ(0) + 2 Σ_{t=1}^{W} Γ(t)`, all `Γ(t)` are bias corrected by
/// `+C_W/N`, `C_W` is recomputed, and `error = √(C_W/N)`, `τ_int = C_W/(2Γ(0))`,
/// `δτ_int = τ_int √((4W+2)/N)`. `Γ(t)` is computed only up to `W` (cost `O(N·W)`).
/// `s_tau = 0` means "assume no autocorrelation" (`W = 0`).
///
/// Exactly constant data give `error = 0`, `tau_int = 0.5`, `window = 0`.
///
/// # Errors
/// [`StatsError::TooFewSamples`] for `N < 2`, [`StatsError::NonFinite`] for NaN/infinite
/// data, [`StatsError::ZeroVariance`] if `C_W ≤ 0`, [`StatsError::NoWindow`] (see there).
///
/// # Panics
/// If `s_tau` is negative or not finite.
pub fn gamma_method(data: &[f64], s_tau: f64) -> Result<GammaResult, StatsError> {
    check_s_tau(s_tau);
    let n = data.len();
    if n < 2 {
        return Err(StatsError::TooFewSamples { n, need: 2 });
    }
    check_finite(data)?;
    if is_constant(data) {
        return Ok(constant_result(data[0], n));
    }
    let mean = mean(data);
    let dev: Vec<f64> = data.iter().map(|&x| x - mean).collect();
    gamma_analysis(&dev, mean, s_tau)
}

/// Γ-method for a derived quantity `f(a_1..a_k)` of `k` primary series of equal length `N`
/// (single replica), as in Wolff's `UWerr`.
///
/// `f` receives the `k` primary means. Its gradient at the means is taken by central finite
/// differences with step `h_α = σ_α/(2√N)` (`σ_α` the standard deviation of series `α`, divisor
/// `N`; a constant series gets zero derivative), and the projected series
/// `Σ_α f_α (a_α(t) − ā_α)` is analysed exactly as in [`gamma_method`].
/// `mean = f(ā_1..ā_k)` with *no* bias correction (the bias is `O(1/N)`, well below the error;
/// use [`jackknife`] for a bias estimate). If `f` or its numerical gradient is not finite at
/// the means, the non-finite values propagate into the result (`error`, `tau_int` NaN)
/// instead of producing an error.
///
/// # Errors
/// As [`gamma_method`]; [`StatsError::LengthMismatch`] if the series differ in length; an
/// empty `series` counts as zero samples.
///
/// # Panics
/// If `s_tau` is negative or not finite.
pub fn gamma_method_derived(
    series: &[&[f64]],
    f: impl Fn(&[f64]) -> f64,
    s_tau: f64,
) -> Result<GammaResult, StatsError> {
    check_s_tau(s_tau);
    let n = common_len(series)?;
    if n < 2 {
        return Err(StatsError::TooFewSamples { n, need: 2 });
    }
    check_rows_finite(series, None)?;

    let means: Vec<f64> = series.iter().map(|s| mean(s)).collect();
    let value = f(&means);
    let sqrt_n = (n as f64).sqrt();

    let mut projected = vec![0.0; n];
    let mut dev = vec![0.0; n];
    let mut probe = means.clone();
    for (alpha, (s, &m)) in series.iter().zip(&means).enumerate() {
        for (d, &x) in dev.iter_mut().zip(s.iter()) {
            *d = x - m;
        }
        let sigma = (dot(&dev, &dev) / n as f64).sqrt();
        let h = sigma / (2.0 * sqrt_n);
        let (up, down) = (m + h, m - h);
        let step = up - down; // the step actually realised in floating point
        if step == 0.0 {
            continue; // constant series (or step below resolution): zero derivative
        }
        probe[alpha] = up;
        let f_up = f(&probe);
        probe[alpha] = down;
        let f_down = f(&probe);
        probe[alpha] = m;
        let grad = (f_up - f_down) / step;
        if grad == 0.0 {
            continue;
        }
        for (p, &d) in projected.iter_mut().zip(&dev) {
            *p += grad * d;
        }
    }
    gamma_analysis(&projected, value, s_tau)
}

/// Normalised autocorrelation function `ρ(t) = Γ(t)/Γ(0)` for `t = 0..=t_max`, with `Γ(t)` as
/// in [`gamma_method`] (no bias correction), computed directly in `O(N·t_max)`.
///
/// Returns `min(t_max, N−1) + 1` values with `ρ(0) = 1`; empty for empty data. Exactly
/// constant data give `ρ(t) = 0` for `t ≥ 1`; non-finite data give NaN for `t ≥ 1`.
pub fn autocorrelation(data: &[f64], t_max: usize) -> Vec<f64> {
    let n = data.len();
    if n == 0 {
        return Vec::new();
    }
    let t_max = t_max.min(n - 1);
    let mut rho = vec![0.0; t_max + 1];
    rho[0] = 1.0;
    if is_constant(data) {
        return rho;
    }
    let mean = mean(data);
    let dev: Vec<f64> = data.iter().map(|&x| x - mean).collect();
    let gamma0 = dot(&dev, &dev) / n as f64;
    for (t, r) in rho.iter_mut().enumerate().skip(1) {
        *r = lagged_gamma(&dev, t) / gamma0;
    }
    rho
}

fn check_s_tau(s_tau: f64) {
    assert!(
        s_tau.is_finite() && s_tau >= 0.0,
        "S_tau must be finite and non-negative, got {s_tau}"
    );
}

fn constant_result(mean: f64, n: usize) -> GammaResult {
    GammaResult {
        mean,
        error: 0.0,
        tau_int: 0.5,
        tau_int_error: 0.0,
        window: 0,
        n,
    }
}

/// `Γ(t)` of a centred series.
fn lagged_gamma(dev: &[f64], t: usize) -> f64 {
    let n = dev.len();
    dot(&dev[..n - t], &dev[t..]) / (n - t) as f64
}

/// The Γ-method proper on a centred series `dev`, reporting `mean` as the estimate.
fn gamma_analysis(dev: &[f64], mean: f64, s_tau: f64) -> Result<GammaResult, StatsError> {
    let n = dev.len();
    let nf = n as f64;
    let gamma0 = dot(dev, dev) / nf;
    if gamma0 == 0.0 {
        return Ok(constant_result(mean, n));
    }
    if !gamma0.is_finite() {
        // Only reachable through a non-finite derived gradient (or overflow): propagate.
        return Ok(GammaResult {
            mean,
            error: f64::NAN,
            tau_int: f64::NAN,
            tau_int_error: f64::NAN,
            window: 0,
            n,
        });
    }

    let mut gamma = vec![gamma0];
    let window = if s_tau == 0.0 {
        0
    } else {
        find_window(dev, s_tau, &mut gamma)?
    };
    gamma.truncate(window + 1);

    let c_w = integrated(&gamma);
    if c_w <= 0.0 {
        return Err(StatsError::ZeroVariance);
    }
    // Bias correction of Γ(t) for the subtracted sample mean.
    let shift = c_w / nf;
    for g in &mut gamma {
        *g += shift;
    }
    let c_w = integrated(&gamma);
    let tau_int = c_w / (2.0 * gamma[0]);
    Ok(GammaResult {
        mean,
        error: (c_w / nf).sqrt(),
        tau_int,
        tau_int_error: tau_int * ((4 * window + 2) as f64 / nf).sqrt(),
        window,
        n,
    })
}

/// `C_W = Γ(0) + 2 Σ_{t=1}^{W} Γ(t)` for `gamma = [Γ(0), …, Γ(W)]`.
fn integrated(gamma: &[f64]) -> f64 {
    gamma[0] + 2.0 * sum(&gamma[1..])
}

/// Wolff's automatic windowing; appends `Γ(1..=W)` to `gamma` (which holds `[Γ(0)]`).
fn find_window(dev: &[f64], s_tau: f64, gamma: &mut Vec<f64>) -> Result<usize, StatsError> {
    let n = dev.len();
    let gamma0 = gamma[0];
    let mut rho_sum = 0.0; // τ_int(W) − ½
    for w in 1..=n / 2 {
        let g = lagged_gamma(dev, w);
        gamma.push(g);
        rho_sum += g / gamma0;
        // (2τ_int+1)/(2τ_int−1) = 1 + 1/(τ_int − ½); for τ_int ≤ ½ Wolff takes τ tiny.
        let tau = if rho_sum > 0.0 {
            s_tau / (1.0 / rho_sum).ln_1p()
        } else {
            0.0
        };
        let tau = tau.max(f64::EPSILON);
        let wf = w as f64;
        if (-wf / tau).exp() - tau / (wf * n as f64).sqrt() < 0.0 {
            return Ok(w);
        }
    }
    Err(StatsError::NoWindow)
}

// ---------------------------------------------------------------------------------------------
// Jackknife
// ---------------------------------------------------------------------------------------------

/// Jackknife of a derived quantity `f(ā_1..ā_k)` of the column means, with blocking.
///
/// Consecutive samples are grouped into `M = ⌊N/bin_size⌋` bins of `bin_size` (a trailing
/// incomplete bin is dropped from *every* quantity, including `mean`), and `f` is evaluated on
/// the means with one bin left out. Returns `mean = f(all binned data)` (not bias corrected)
/// and, separately, `bias = (M−1)(f̄ − mean)` where `f̄` is the average leave-one-out value.
/// For `f` = identity and `bin_size = 1` the error is the naive `s/√N` (`s` with `N−1`).
/// Non-finite values returned by `f` propagate into the result.
///
/// # Errors
/// [`StatsError::TooFewSamples`] if `M < 2` (need `2·bin_size` samples; an empty `columns`
/// counts as zero samples), [`StatsError::LengthMismatch`], [`StatsError::NonFinite`].
///
/// # Panics
/// If `bin_size == 0`.
pub fn jackknife(
    columns: &[&[f64]],
    bin_size: usize,
    f: impl Fn(&[f64]) -> f64,
) -> Result<JackknifeResult, StatsError> {
    assert!(bin_size > 0, "jackknife bin_size must be positive");
    let n = common_len(columns)?;
    let n_bins = check_bins(n, bin_size)?;
    check_rows_finite(columns, None)?;
    let used = n_bins * bin_size;

    let means: Vec<f64> = columns.iter().map(|c| mean(&c[..used])).collect();
    let estimate = f(&means);
    // Leave-one-out mean from the centred bin sum: ā_(k) = ā − Σ_{i∈k}(a_i − ā)/(n − b).
    let rest = (used - bin_size) as f64;
    let mut loo = vec![0.0; columns.len()];
    let replicas: Vec<f64> = (0..n_bins)
        .map(|k| {
            let range = k * bin_size..(k + 1) * bin_size;
            for ((l, c), &m) in loo.iter_mut().zip(columns).zip(&means) {
                *l = m - sum_iter(c[range.clone()].iter().map(|&x| x - m)) / rest;
            }
            f(&loo)
        })
        .collect();
    Ok(jackknife_finish(estimate, &replicas))
}

/// Weighted jackknife for reweighting: like [`jackknife`], but `f` receives the weighted means
/// `Σ w_i a_i / Σ w_i` with `w_i = exp(log_weights[i])` (natural log).
///
/// Weights are handled in log space: each bin is scaled by its own maximal log-weight and bins
/// are combined by prefix/suffix sums, so arbitrary offsets and spreads of the log-weights
/// (even beyond the `f64` exponent range) are harmless and no leave-one-out sum is formed by
/// subtraction. `mean = f(weighted means of all binned data)`, `bias` as in [`jackknife`].
///
/// # Errors
/// As [`jackknife`]; [`StatsError::LengthMismatch`] also if `log_weights` differs in length
/// from the columns; [`StatsError::NonFinite`] also for non-finite log-weights.
///
/// # Panics
/// If `bin_size == 0`.
pub fn jackknife_weighted(
    columns: &[&[f64]],
    log_weights: &[f64],
    bin_size: usize,
    f: impl Fn(&[f64]) -> f64,
) -> Result<JackknifeResult, StatsError> {
    assert!(bin_size > 0, "jackknife bin_size must be positive");
    let n = common_len(columns)?;
    if log_weights.len() != n {
        return Err(StatsError::LengthMismatch {
            expected: n,
            got: log_weights.len(),
        });
    }
    let n_bins = check_bins(n, bin_size)?;
    check_rows_finite(columns, Some(log_weights))?;
    let used = n_bins * bin_size;
    let k = columns.len();
    let log_w = &log_weights[..used];

    // Full-sample weighted means, refined once by a centred correction.
    let max = log_w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = log_w.iter().map(|&l| (l - max).exp()).collect();
    let w_sum = sum(&w);
    let centres: Vec<f64> = columns
        .iter()
        .map(|c| {
            let c0 = dot(&w, &c[..used]) / w_sum;
            c0 + sum_iter(w.iter().zip(c.iter()).map(|(&wi, &x)| wi * (x - c0))) / w_sum
        })
        .collect();
    let estimate = f(&centres);

    // Per-bin partial sums of w_i and w_i (a_i − centre), each on its own log scale.
    let bins: Vec<Partial> = (0..n_bins)
        .map(|b| {
            let range = b * bin_size..(b + 1) * bin_size;
            let lw = &log_w[range.clone()];
            let scale = lw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let wb: Vec<f64> = lw.iter().map(|&l| (l - scale).exp()).collect();
            let wx = columns
                .iter()
                .zip(&centres)
                .map(|(c, &m)| {
                    sum_iter(
                        wb.iter()
                            .zip(&c[range.clone()])
                            .map(|(&wi, &x)| wi * (x - m)),
                    )
                })
                .collect();
            Partial {
                log_scale: scale,
                w: sum(&wb),
                wx,
            }
        })
        .collect();
    let empty = Partial {
        log_scale: f64::NEG_INFINITY,
        w: 0.0,
        wx: vec![0.0; k],
    };
    let mut prefix = Vec::with_capacity(n_bins + 1);
    prefix.push(empty.clone());
    for b in &bins {
        let next = prefix[prefix.len() - 1].combine(b);
        prefix.push(next);
    }
    let mut suffix = vec![empty; n_bins + 1];
    for b in (0..n_bins).rev() {
        suffix[b] = bins[b].combine(&suffix[b + 1]);
    }

    let mut loo = vec![0.0; k];
    let replicas: Vec<f64> = (0..n_bins)
        .map(|b| {
            let rest = prefix[b].combine(&suffix[b + 1]);
            for ((l, &m), &wx) in loo.iter_mut().zip(&centres).zip(&rest.wx) {
                *l = m + wx / rest.w;
            }
            f(&loo)
        })
        .collect();
    Ok(jackknife_finish(estimate, &replicas))
}

/// Weighted partial sums `exp(log_scale)·w` and `exp(log_scale)·wx[α]`.
#[derive(Clone)]
struct Partial {
    log_scale: f64,
    w: f64,
    wx: Vec<f64>,
}

impl Partial {
    fn combine(&self, other: &Self) -> Self {
        if self.log_scale == f64::NEG_INFINITY {
            return other.clone();
        }
        if other.log_scale == f64::NEG_INFINITY {
            return self.clone();
        }
        let scale = self.log_scale.max(other.log_scale);
        let (a, b) = (
            (self.log_scale - scale).exp(),
            (other.log_scale - scale).exp(),
        );
        Self {
            log_scale: scale,
            w: a * self.w + b * other.w,
            wx: self
                .wx
                .iter()
                .zip(&other.wx)
                .map(|(&x, &y)| a * x + b * y)
                .collect(),
        }
    }
}

fn check_bins(n: usize, bin_size: usize) -> Result<usize, StatsError> {
    let n_bins = n / bin_size;
    if n_bins < 2 {
        return Err(StatsError::TooFewSamples {
            n,
            need: 2 * bin_size,
        });
    }
    Ok(n_bins)
}

fn jackknife_finish(estimate: f64, replicas: &[f64]) -> JackknifeResult {
    let m = replicas.len() as f64;
    let jk_mean = mean(replicas);
    let var = (m - 1.0) / m * sum_iter(replicas.iter().map(|&r| (r - jk_mean) * (r - jk_mean)));
    JackknifeResult {
        mean: estimate,
        error: var.sqrt(),
        bias: (m - 1.0) * (jk_mean - estimate),
        n_bins: replicas.len(),
    }
}

// ---------------------------------------------------------------------------------------------
// Reweighting helpers
// ---------------------------------------------------------------------------------------------

/// `ln Σ_i exp(x_i)`, computed stably (shifted by the maximum).
///
/// Empty input or all `−∞` gives `−∞`; any `+∞` gives `+∞`; any NaN gives NaN.
pub fn log_sum_exp(x: &[f64]) -> f64 {
    if x.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max.is_infinite() {
        return max;
    }
    // ln Σ e^{x−max} = ln(1 + Σ_{i ≠ argmax} e^{x_i−max}), accurate via ln_1p.
    let mut skipped = false;
    let rest = sum_iter(x.iter().filter_map(|&v| {
        if !skipped && v == max {
            skipped = true;
            None
        } else {
            Some((v - max).exp())
        }
    }));
    max + rest.ln_1p()
}

/// Effective sample size per sample, `(Σw)²/(N Σw²)` in `[1/N, 1]`, from log-weights
/// `ln w_i`. Empty input, NaN or infinite log-weights give NaN.
pub fn ess_per_sample(log_w: &[f64]) -> f64 {
    if log_w.is_empty() || log_w.iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    let max = log_w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = log_w.iter().map(|&l| (l - max).exp()).collect();
    let s1 = sum(&w);
    s1 * s1 / (log_w.len() as f64 * dot(&w, &w))
}

/// `ln Ẑ = logsumexp(ln w) − ln N` (the log of the mean weight) with its jackknife error over
/// bins of `bin_size`; returns `(value, error)`. As in [`jackknife`], a trailing incomplete
/// bin is dropped (`N` is then the number of binned samples).
///
/// # Errors
/// [`StatsError::TooFewSamples`] for fewer than two bins, [`StatsError::NonFinite`] for
/// NaN/infinite log-weights.
///
/// # Panics
/// If `bin_size == 0`.
pub fn log_z_estimate(log_w: &[f64], bin_size: usize) -> Result<(f64, f64), StatsError> {
    assert!(bin_size > 0, "jackknife bin_size must be positive");
    let n_bins = check_bins(log_w.len(), bin_size)?;
    check_finite(log_w)?;
    let used = n_bins * bin_size;
    let bins: Vec<f64> = log_w[..used]
        .chunks_exact(bin_size)
        .map(log_sum_exp)
        .collect();
    let mut prefix = Vec::with_capacity(n_bins + 1);
    prefix.push(f64::NEG_INFINITY);
    for &b in &bins {
        prefix.push(log_add_exp(prefix[prefix.len() - 1], b));
    }
    let mut suffix = vec![f64::NEG_INFINITY; n_bins + 1];
    for b in (0..n_bins).rev() {
        suffix[b] = log_add_exp(bins[b], suffix[b + 1]);
    }
    let value = prefix[n_bins] - (used as f64).ln();
    let ln_rest = ((used - bin_size) as f64).ln();
    let replicas: Vec<f64> = (0..n_bins)
        .map(|b| log_add_exp(prefix[b], suffix[b + 1]) - ln_rest)
        .collect();
    let jk = jackknife_finish(value, &replicas);
    Ok((jk.mean, jk.error))
}

/// `ln(e^a + e^b)` for finite or `−∞` arguments.
fn log_add_exp(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    a.max(b) + (-(a - b).abs()).exp().ln_1p()
}

// ---------------------------------------------------------------------------------------------
// Input checks and accurate sums
// ---------------------------------------------------------------------------------------------

fn check_finite(data: &[f64]) -> Result<(), StatsError> {
    match data.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(StatsError::NonFinite { index }),
        None => Ok(()),
    }
}

/// Smallest row index holding a non-finite value in any column or in `extra`.
fn check_rows_finite(columns: &[&[f64]], extra: Option<&[f64]>) -> Result<(), StatsError> {
    let first_bad = columns
        .iter()
        .copied()
        .chain(extra)
        .filter_map(|c| c.iter().position(|x| !x.is_finite()))
        .min();
    match first_bad {
        Some(index) => Err(StatsError::NonFinite { index }),
        None => Ok(()),
    }
}

/// Common length of all columns (0 for no columns).
fn common_len(columns: &[&[f64]]) -> Result<usize, StatsError> {
    let expected = columns.first().map_or(0, |c| c.len());
    match columns.iter().find(|c| c.len() != expected) {
        Some(c) => Err(StatsError::LengthMismatch {
            expected,
            got: c.len(),
        }),
        None => Ok(expected),
    }
}

fn is_constant(data: &[f64]) -> bool {
    data.iter().all(|&x| x == data[0])
}

/// Neumaier (improved Kahan–Babuška) compensated accumulator.
#[derive(Clone, Copy, Default)]
struct Neumaier {
    sum: f64,
    comp: f64,
}

impl Neumaier {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.comp += (self.sum - t) + x;
        } else {
            self.comp += (x - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(self) -> f64 {
        self.sum + self.comp
    }
}

fn sum_iter(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut acc = Neumaier::default();
    for v in values {
        acc.add(v);
    }
    acc.value()
}

fn sum(x: &[f64]) -> f64 {
    sum_iter(x.iter().copied())
}

fn mean(x: &[f64]) -> f64 {
    sum(x) / x.len() as f64
}

/// Block length of [`dot`]: plain 4-lane sums within a block, compensated across blocks.
const DOT_BLOCK: usize = 256;

/// `Σ a_i b_i` over equally long slices: fast (vectorisable) within blocks, compensated
/// across blocks, so the rounding error does not grow with the length.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = Neumaier::default();
    for (ca, cb) in a.chunks(DOT_BLOCK).zip(b.chunks(DOT_BLOCK)) {
        let mut lanes = [0.0; 4];
        let (xs, ys) = (ca.chunks_exact(4), cb.chunks_exact(4));
        let tail: f64 = xs
            .remainder()
            .iter()
            .zip(ys.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in xs.zip(ys) {
            for l in 0..4 {
                lanes[l] += x[l] * y[l];
            }
        }
        acc.add((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail);
    }
    acc.value()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    fn normals(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.sample(StandardNormal)).collect()
    }

    /// Stationary AR(1) with unit variance: ρ(t) = ρ^t, τ_int = (1+ρ)/(2(1−ρ)).
    fn ar1(rng: &mut ChaCha8Rng, rho: f64, n: usize) -> Vec<f64> {
        let c = (1.0 - rho * rho).sqrt();
        let mut x: f64 = rng.sample(StandardNormal);
        (0..n)
            .map(|_| {
                let current = x;
                x = rho * x + c * rng.sample::<f64, _>(StandardNormal);
                current
            })
            .collect()
    }

    fn tau_ar1(rho: f64) -> f64 {
        (1.0 + rho) / (2.0 * (1.0 - rho))
    }

    fn sample_std(x: &[f64]) -> f64 {
        let m = mean(x);
        (sum_iter(x.iter().map(|v| (v - m) * (v - m))) / (x.len() - 1) as f64).sqrt()
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs()
    }

    #[test]
    fn gamma_ar1_tau_and_mean() {
        for (rho, seed) in [(0.5, 11), (0.9, 12)] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let x = ar1(&mut rng, rho, 200_000);
            let r = gamma_method(&x, S_TAU_DEFAULT).unwrap();
            let z_tau = (r.tau_int - tau_ar1(rho)) / r.tau_int_error;
            let z_mean = r.mean / r.error;
            assert!(z_tau.abs() < 4.0, "rho {rho}: tau {r:?}, z {z_tau}");
            assert!(z_mean.abs() < 4.0, "rho {rho}: mean {r:?}, z {z_mean}");
            assert_eq!(r.n, 200_000);
            assert!(r.window > 0 && r.window < 200, "{r:?}");
        }
    }

    #[test]
    fn gamma_error_matches_spread_of_independent_chains() {
        // 200 independent chains: the sample standard deviation s of their means scatters
        // around the true error with 199 s²/σ² ~ χ²_199, i.e. a relative spread of
        // 1/√(2·199) ≈ 5%. The rms of the 200 Γ-method errors is far more precise (~0.5%), and
        // its bias (finite window, O(W/N) terms) is ~1%; 15% is thus a ~3σ tolerance.
        let (rho, n, chains) = (0.9, 20_000, 200);
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let mut means = Vec::with_capacity(chains);
        let mut err2 = Vec::with_capacity(chains);
        for _ in 0..chains {
            let r = gamma_method(&ar1(&mut rng, rho, n), S_TAU_DEFAULT).unwrap();
            means.push(r.mean);
            err2.push(r.error * r.error);
        }
        let ratio = mean(&err2).sqrt() / sample_std(&means);
        assert!((ratio - 1.0).abs() < 0.15, "ratio {ratio}");
    }

    #[test]
    fn gamma_iid_tau_is_half() {
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        let x = normals(&mut rng, 100_000);
        let r = gamma_method(&x, S_TAU_DEFAULT).unwrap();
        let z = (r.tau_int - 0.5) / r.tau_int_error;
        assert!(z.abs() < 4.0, "{r:?}, z {z}");
        assert!(r.window <= 5, "{r:?}");
        assert!(
            rel(r.error, sample_std(&x) / (x.len() as f64).sqrt()) < 0.05,
            "{r:?}"
        );
    }

    #[test]
    fn gamma_edge_cases() {
        let r = gamma_method(&[0.1; 1000], S_TAU_DEFAULT).unwrap();
        assert_eq!(
            r,
            GammaResult {
                mean: 0.1,
                error: 0.0,
                tau_int: 0.5,
                tau_int_error: 0.0,
                window: 0,
                n: 1000
            }
        );
        let mut x: Vec<f64> = (0..100).map(|i| (i as f64).sin()).collect();
        x[7] = f64::NAN;
        x[9] = f64::INFINITY;
        assert_eq!(
            gamma_method(&x, S_TAU_DEFAULT),
            Err(StatsError::NonFinite { index: 7 })
        );
        assert_eq!(
            gamma_method(&[1.0], S_TAU_DEFAULT),
            Err(StatsError::TooFewSamples { n: 1, need: 2 })
        );
        assert_eq!(
            gamma_method(&[], S_TAU_DEFAULT),
            Err(StatsError::TooFewSamples { n: 0, need: 2 })
        );
        // Perfectly alternating data: Γ(1) = −Γ(0), so C_W < 0 (Wolff: "pathological").
        let alternating: Vec<f64> = (0..100)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert_eq!(
            gamma_method(&alternating, S_TAU_DEFAULT),
            Err(StatsError::ZeroVariance)
        );
        // S_τ = 0: no autocorrelation assumed, W = 0. The bias-corrected C_0 = Γ(0)(1 + 1/N)
        // equals the unbiased variance Γ(0) N/(N−1) up to a factor 1 − 1/N².
        let mut rng = ChaCha8Rng::seed_from_u64(41);
        let y = ar1(&mut rng, 0.9, 10_000);
        let r = gamma_method(&y, 0.0).unwrap();
        assert_eq!((r.window, r.tau_int), (0, 0.5));
        assert!(rel(r.error, sample_std(&y) / 100.0) < 1e-7, "{r:?}");
        assert!(!StatsError::ZeroVariance.to_string().is_empty());
    }

    #[test]
    #[should_panic(expected = "S_tau")]
    fn gamma_rejects_negative_s_tau() {
        let _ = gamma_method(&[1.0, 2.0, 3.0], -1.0);
    }

    #[test]
    fn gamma_derived_identity_equals_primary() {
        let mut rng = ChaCha8Rng::seed_from_u64(51);
        let x: Vec<f64> = ar1(&mut rng, 0.8, 50_000)
            .iter()
            .map(|v| 3.0 + 0.7 * v)
            .collect();
        let a = gamma_method(&x, S_TAU_DEFAULT).unwrap();
        let b = gamma_method_derived(&[&x], |m| m[0], S_TAU_DEFAULT).unwrap();
        assert_eq!(a.window, b.window);
        assert_eq!(a.n, b.n);
        for (p, q) in [
            (a.mean, b.mean),
            (a.error, b.error),
            (a.tau_int, b.tau_int),
            (a.tau_int_error, b.tau_int_error),
        ] {
            assert!(rel(q, p) < 1e-12, "{a:?} vs {b:?}");
        }
    }

    /// Correlated primaries a = 2 + x/2, b = 3 + y/2, with x, y AR(1) (ρ = 0.9 and 0.5).
    fn correlated_pair(seed: u64, n: usize) -> (Vec<f64>, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = ar1(&mut rng, 0.9, n);
        let y = ar1(&mut rng, 0.5, n);
        let a = x.iter().map(|v| 2.0 + 0.5 * v).collect();
        let b = x
            .iter()
            .zip(&y)
            .map(|(u, v)| 3.0 + 0.5 * (0.6 * u + 0.8 * v))
            .collect();
        (a, b)
    }

    #[test]
    fn gamma_derived_matches_blocked_jackknife() {
        let (a, b) = correlated_pair(61, 200_000);
        let f = |m: &[f64]| m[0] * m[0] / m[1];
        let g = gamma_method_derived(&[&a, &b], f, S_TAU_DEFAULT).unwrap();
        let j = jackknife(&[&a, &b], 400, f).unwrap();
        assert!(rel(g.mean, j.mean) < 1e-12, "{g:?} vs {j:?}");
        let ratio = g.error / j.error;
        assert!((ratio - 1.0).abs() < 0.2, "ratio {ratio}: {g:?} vs {j:?}");
    }

    #[test]
    fn gamma_derived_edge_cases() {
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [1.0, f64::NAN, 3.0];
        assert_eq!(
            gamma_method_derived(&[&a, &b], |m| m[0], S_TAU_DEFAULT),
            Err(StatsError::LengthMismatch {
                expected: 4,
                got: 3
            })
        );
        let c = [1.0, 2.0, 3.0, f64::NAN];
        let d = [1.0, 2.0, f64::NAN, 1.0];
        assert_eq!(
            gamma_method_derived(&[&c, &d], |m| m[0], S_TAU_DEFAULT),
            Err(StatsError::NonFinite { index: 2 })
        );
        assert_eq!(
            gamma_method_derived(&[], |_| 0.0, S_TAU_DEFAULT),
            Err(StatsError::TooFewSamples { n: 0, need: 2 })
        );
        // Constant primaries: zero error, f at the means.
        let e = [2.0; 10];
        let r = gamma_method_derived(&[&e, &e], |m| m[0] * m[1], S_TAU_DEFAULT).unwrap();
        assert_eq!((r.mean, r.error, r.tau_int, r.window), (4.0, 0.0, 0.5, 0));
        // A non-finite f propagates instead of failing.
        let r = gamma_method_derived(&[&a], |m| (m[0] - 10.0).ln(), S_TAU_DEFAULT).unwrap();
        assert!(r.mean.is_nan() && r.error.is_nan());
    }

    #[test]
    fn jackknife_mean_equals_naive_error() {
        let mut rng = ChaCha8Rng::seed_from_u64(71);
        let x: Vec<f64> = normals(&mut rng, 10_000)
            .iter()
            .map(|v| 5.0 + 2.0 * v)
            .collect();
        let j = jackknife(&[&x], 1, |m| m[0]).unwrap();
        assert_eq!(j.n_bins, 10_000);
        assert_eq!(j.mean, mean(&x));
        assert!(rel(j.error, sample_std(&x) / 100.0) < 1e-12, "{j:?}");
        assert!(j.bias.abs() < 1e-12, "{j:?}");
    }

    #[test]
    fn jackknife_ratio_matches_error_propagation() {
        let n = 20_000;
        let mut rng = ChaCha8Rng::seed_from_u64(81);
        let xi = normals(&mut rng, n);
        let eta = normals(&mut rng, n);
        let a: Vec<f64> = xi.iter().map(|v| 1.0 + 0.3 * v).collect();
        let b: Vec<f64> = xi
            .iter()
            .zip(&eta)
            .map(|(u, v)| 2.0 + 0.2 * (0.6 * u + 0.8 * v))
            .collect();
        let j = jackknife(&[&a, &b], 1, |m| m[0] / m[1]).unwrap();
        // Linear error propagation with the sample (co)variances (divisor N−1).
        let (ma, mb) = (mean(&a), mean(&b));
        let cov = |p: &[f64], mp: f64, q: &[f64], mq: f64| {
            sum_iter(p.iter().zip(q).map(|(x, y)| (x - mp) * (y - mq))) / (n - 1) as f64
        };
        let r = ma / mb;
        let var = (cov(&a, ma, &a, ma) - 2.0 * r * cov(&a, ma, &b, mb)
            + r * r * cov(&b, mb, &b, mb))
            / (mb * mb * n as f64);
        assert!(rel(j.error, var.sqrt()) < 1e-3, "{j:?} vs {}", var.sqrt());
        // And the population value: Var(a) = 0.09, Var(b) = 0.04, Cov(a, b) = 0.036.
        let exact = ((0.09 - 2.0 * 0.5 * 0.036 + 0.25 * 0.04) / (4.0 * n as f64)).sqrt();
        assert!(rel(j.error, exact) < 0.05, "{j:?} vs {exact}");
        assert!(((j.mean - 0.5) / j.error).abs() < 4.0, "{j:?}");
    }

    #[test]
    fn jackknife_blocking_matches_gamma() {
        let mut rng = ChaCha8Rng::seed_from_u64(91);
        let x = ar1(&mut rng, 0.9, 200_000);
        let g = gamma_method(&x, S_TAU_DEFAULT).unwrap();
        let j = jackknife(&[&x], 200, |m| m[0]).unwrap();
        assert_eq!(j.n_bins, 1000);
        let ratio = j.error / g.error;
        assert!((ratio - 1.0).abs() < 0.2, "ratio {ratio}: {j:?} vs {g:?}");
        // Unbinned, the jackknife misses the autocorrelation by a factor ≈ √(2τ_int).
        let naive = jackknife(&[&x], 1, |m| m[0]).unwrap();
        assert!(naive.error < 0.5 * j.error, "{naive:?} vs {j:?}");
    }

    #[test]
    fn jackknife_edge_cases() {
        let x: Vec<f64> = (0..10).map(f64::from).collect();
        assert_eq!(
            jackknife(&[&x], 6, |m| m[0]),
            Err(StatsError::TooFewSamples { n: 10, need: 12 })
        );
        // Trailing incomplete bin dropped everywhere: bins {0..3}, {3..6}, {6..9}.
        let j = jackknife(&[&x], 3, |m| m[0]).unwrap();
        assert_eq!(j.n_bins, 3);
        assert_eq!(j.mean, 4.0);
        assert_eq!(
            jackknife(&[&x, &x[..9]], 1, |m| m[0]),
            Err(StatsError::LengthMismatch {
                expected: 10,
                got: 9
            })
        );
        assert_eq!(
            jackknife_weighted(&[&x], &[0.0; 9], 1, |m| m[0]),
            Err(StatsError::LengthMismatch {
                expected: 10,
                got: 9
            })
        );
        let mut lw = vec![0.0; 10];
        lw[4] = f64::NAN;
        let mut y = x.clone();
        y[6] = f64::INFINITY;
        assert_eq!(
            jackknife_weighted(&[&y], &lw, 1, |m| m[0]),
            Err(StatsError::NonFinite { index: 4 })
        );
        assert_eq!(
            jackknife(&[&y], 1, |m| m[0]),
            Err(StatsError::NonFinite { index: 6 })
        );
        assert_eq!(
            jackknife(&[], 1, |_| 0.0),
            Err(StatsError::TooFewSamples { n: 0, need: 2 })
        );
    }

    #[test]
    fn jackknife_weighted_equal_weights_match_plain() {
        let (a, b) = correlated_pair(101, 10_007);
        let f = |m: &[f64]| m[0] / m[1];
        let plain = jackknife(&[&a, &b], 10, f).unwrap();
        for offset in [0.0, 1234.5, -5000.0] {
            let w = jackknife_weighted(&[&a, &b], &vec![offset; a.len()], 10, f).unwrap();
            assert_eq!(w.n_bins, plain.n_bins);
            assert!(rel(w.mean, plain.mean) < 1e-13, "{w:?} vs {plain:?}");
            assert!(rel(w.error, plain.error) < 1e-9, "{w:?} vs {plain:?}");
            assert!(
                (w.bias - plain.bias).abs() < 1e-9 * plain.error,
                "{w:?} vs {plain:?}"
            );
        }
    }

    #[test]
    fn jackknife_weighted_reweights_gaussian() {
        // x ~ N(0,1), w = exp(μx − μ²/2) reweights to N(μ,1). The weighted mean has variance
        // E[w²(x−μ)²]/N = e^{μ²}(1+μ²)/N.
        let (mu, n) = (0.5, 100_000);
        let mut rng = ChaCha8Rng::seed_from_u64(111);
        let x = normals(&mut rng, n);
        let log_w: Vec<f64> = x.iter().map(|v| mu * v - 0.5 * mu * mu).collect();
        let j = jackknife_weighted(&[&x], &log_w, 10, |m| m[0]).unwrap();
        let exact = ((mu * mu).exp() * (1.0 + mu * mu) / n as f64).sqrt();
        assert!(((j.mean - mu) / j.error).abs() < 4.0, "{j:?}");
        assert!(rel(j.error, exact) < 0.1, "{j:?} vs {exact}");
        // Shifting all log-weights changes nothing; a huge spread stays finite.
        let shifted: Vec<f64> = log_w.iter().map(|l| l + 800.0).collect();
        let s = jackknife_weighted(&[&x], &shifted, 10, |m| m[0]).unwrap();
        assert!(
            rel(s.mean, j.mean) < 1e-12 && rel(s.error, j.error) < 1e-9,
            "{s:?} vs {j:?}"
        );
        let wide: Vec<f64> = x.iter().map(|v| 400.0 * v).collect();
        let w = jackknife_weighted(&[&x], &wide, 10, |m| m[0]).unwrap();
        assert!(
            w.mean.is_finite() && w.error.is_finite() && w.bias.is_finite(),
            "{w:?}"
        );
    }

    #[test]
    fn autocorrelation_of_ar1() {
        let mut rng = ChaCha8Rng::seed_from_u64(121);
        let x = ar1(&mut rng, 0.9, 200_000);
        let rho = autocorrelation(&x, 10);
        assert_eq!(rho.len(), 11);
        assert_eq!(rho[0], 1.0);
        for (t, r) in rho.iter().enumerate() {
            assert!((r - 0.9f64.powi(t as i32)).abs() < 0.03, "t {t}: {r}");
        }
        assert_eq!(autocorrelation(&[1.0, 2.0, 4.0], 10).len(), 3);
        assert_eq!(autocorrelation(&[3.0; 5], 2), vec![1.0, 0.0, 0.0]);
        assert!(autocorrelation(&[], 3).is_empty());
    }

    #[test]
    fn log_sum_exp_is_stable() {
        let ln2 = std::f64::consts::LN_2;
        assert!((log_sum_exp(&[1000.0, 1000.0]) - (1000.0 + ln2)).abs() < 1e-12);
        assert!((log_sum_exp(&[-1000.0, -1000.0]) - (-1000.0 + ln2)).abs() < 1e-12);
        assert_eq!(log_sum_exp(&[1000.0, -1000.0]), 1000.0);
        assert!((log_sum_exp(&[0.0, -40.0]) - (-40.0f64).exp()).abs() < 1e-30);
        assert_eq!(log_sum_exp(&[]), f64::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[f64::NEG_INFINITY; 3]), f64::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[1.0, f64::INFINITY]), f64::INFINITY);
        assert!(log_sum_exp(&[1.0, f64::NAN]).is_nan());
    }

    #[test]
    fn ess_per_sample_limits() {
        assert!((ess_per_sample(&[700.0; 1000]) - 1.0).abs() < 1e-12);
        let mut lw = vec![-1000.0; 1000];
        lw[17] = 0.0;
        assert!(rel(ess_per_sample(&lw), 1e-3) < 1e-12);
        assert!(ess_per_sample(&[]).is_nan());
        // Log-normal weights ln w = σξ: ESS per sample → E[w]²/E[w²] = e^{−σ²}.
        let sigma = 0.5;
        let mut rng = ChaCha8Rng::seed_from_u64(131);
        let lw: Vec<f64> = normals(&mut rng, 100_000)
            .iter()
            .map(|v| sigma * v)
            .collect();
        let ess = ess_per_sample(&lw);
        assert!(rel(ess, (-sigma * sigma).exp()) < 0.02, "{ess}");
    }

    #[test]
    fn log_z_of_lognormal_weights() {
        // ln w = 7 + σξ − σ²/2: E[w] = e^7, so ln Z = 7, and δ ln Ẑ ≈ √((e^{σ²} − 1)/N).
        let (sigma, n) = (0.5, 100_000);
        let mut rng = ChaCha8Rng::seed_from_u64(141);
        let lw: Vec<f64> = normals(&mut rng, n)
            .iter()
            .map(|v| 7.0 + sigma * v - 0.5 * sigma * sigma)
            .collect();
        let (value, error) = log_z_estimate(&lw, 10).unwrap();
        let exact = (((sigma * sigma).exp() - 1.0) / n as f64).sqrt();
        assert!(((value - 7.0) / error).abs() < 4.0, "{value} ± {error}");
        assert!(rel(error, exact) < 0.1, "{error} vs {exact}");
        assert!(rel(value, log_sum_exp(&lw) - (n as f64).ln()) < 1e-14);
        assert_eq!(
            log_z_estimate(&lw[..15], 10),
            Err(StatsError::TooFewSamples { n: 15, need: 20 })
        );
        let mut bad = lw[..100].to_vec();
        bad[3] = f64::NEG_INFINITY;
        assert_eq!(
            log_z_estimate(&bad, 1),
            Err(StatsError::NonFinite { index: 3 })
        );
    }
}
