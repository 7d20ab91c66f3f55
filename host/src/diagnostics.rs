//! When not to trust the statistics: the warnings of `run`, `analyze` and `bench`, and the
//! value(error) notation of their reports.
//!
//! A warning is raised, with the numbers, when
//! * an observable has N < [`TAU_FACTOR`]·τ_int measurements (`short_chain`): the Γ-method
//!   error and τ_int itself are then estimated from fewer than ~50 independent samples and
//!   may be far off (this also covers a Markov chain's effective sample size N/(2τ_int));
//! * the Γ-method could not estimate an error at all (`no_error`);
//! * a reweighting ensemble has ESS/N < [`MIN_ESS_PER_SAMPLE`] or ESS < [`MIN_ESS`]
//!   (`low_ess`), ESS = (Σw)²/Σw²;
//! * the importance weights of a reweighting ensemble, or of a flow step's proposals, have a
//!   Pareto tail shape k̂ > [`latflow_stats::PARETO_K_MAX`] (`heavy_tail`);
//! * a step's acceptance is below [`MIN_ACCEPTANCE`], or fewer than [`MIN_ACCEPTED`]
//!   proposals were accepted (`low_acceptance`); steps that accept every application
//!   (heat bath, reweighting) never trigger it;
//! * ⟨e^{−ΔH}⟩ of an HMC step (`exp_delta_h`), ⟨e^{−W}⟩ of an anneal step's protocols
//!   (`exp_work`, Jarzynski's equality) or ⟨e^{log r}⟩ of a swap step (`exp_log_ratio`) is more than [`MAX_SIGMA`] standard errors from 1, its exact value in
//!   equilibrium.
//!
//! A z-score against a reference value is *unreliable* when any warning concerns its
//! observable: an observable's own warning, or one about the ensemble as a whole (ESS, a step).

use serde::Serialize;
use serde_json::{json, Value};

/// `short_chain` when N < `TAU_FACTOR`·τ_int (τ_int in measurements, i.e. sweeps).
pub const TAU_FACTOR: f64 = 100.0;
/// `low_ess` below this ESS per sample …
pub const MIN_ESS_PER_SAMPLE: f64 = 0.01;
/// … or below this total ESS.
pub const MIN_ESS: f64 = 50.0;
/// `low_acceptance` below this acceptance rate …
pub const MIN_ACCEPTANCE: f64 = 0.01;
/// … or with fewer accepted proposals than this.
pub const MIN_ACCEPTED: u64 = 50;
/// `exp_delta_h` / `exp_log_ratio` beyond this many standard errors from 1.
pub const MAX_SIGMA: f64 = 3.0;

/// One reason not to trust (part of) an analysis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Warning {
    /// A stable identifier: `short_chain`, `no_error`, `low_ess`, `heavy_tail`, `low_acceptance`,
    /// `exp_delta_h` or `exp_log_ratio`; `bench` adds `budget` (a wall time more than 20% off
    /// its budget, which concerns no value).
    pub code: &'static str,
    /// What it concerns: an observable (`name` or `name[j]`), a step label, or `reweighting`.
    pub subject: String,
    /// One sentence with the numbers.
    pub message: String,
}

impl Warning {
    /// Whether the warning concerns the observable `name` (`name` or `name[j]`): its own
    /// warnings, and every warning about the ensemble as a whole.
    pub fn affects(&self, name: &str) -> bool {
        match self.code {
            "short_chain" | "no_error" => {
                self.subject == name || name.split_once('[').is_none() && self.subject.split_once('[').is_some_and(|(b, _)| b == name)
            }
            "low_ess" | "low_acceptance" | "exp_delta_h" | "exp_log_ratio" => true,
            // e.g. bench's `budget`: about the cost, not the values
            _ => false,
        }
    }
}

/// The `short_chain` warning of one observable component: N measurements against τ_int
/// (in sweeps); none when τ_int is not a number (see `no_error`).
pub fn short_chain(subject: &str, n: usize, tau_int: f64) -> Option<Warning> {
    (tau_int.is_finite() && (n as f64) < TAU_FACTOR * tau_int).then(|| Warning {
        code: "short_chain",
        subject: subject.to_string(),
        message: format!(
            "{subject}: N = {n} measurements < {TAU_FACTOR}·τ_int = {:.0} (τ_int = {tau_int:.3} sweeps, about {:.1} independent samples): \
             its error and τ_int are unreliable",
            TAU_FACTOR * tau_int,
            n as f64 / (2.0 * tau_int.max(0.5))
        ),
    })
}

/// The `low_ess` warning of a reweighting ensemble of `n` samples.
pub fn low_ess(n: usize, ess_per_sample: f64) -> Option<Warning> {
    let ess = ess_per_sample * n as f64;
    (!(ess_per_sample >= MIN_ESS_PER_SAMPLE && ess >= MIN_ESS)).then(|| Warning {
        code: "low_ess",
        subject: "reweighting".into(),
        message: format!(
            "reweighting: ESS/N = {ess_per_sample:.4} (ESS = {ess:.1} of N = {n}); below ESS/N = {MIN_ESS_PER_SAMPLE} or ESS = {MIN_ESS} \
             the weighted means and their errors are unreliable"
        ),
    })
}

/// The `heavy_tail` warning of `subject` (a flow step's label, or `reweighting`) when the Pareto
/// shape `k` of `what` (its importance weights) exceeds [`latflow_stats::PARETO_K_MAX`]: the
/// weights' variance is infinite or nearly so, rare large weights dominate, and the Γ-method
/// and jackknife errors do not see what the sample has not visited.
pub fn heavy_tail(subject: &str, what: &str, k: f64) -> Option<Warning> {
    (k > latflow_stats::PARETO_K_MAX).then(|| Warning {
        code: "heavy_tail",
        subject: subject.into(),
        message: format!(
            "{subject}: {what} have a Pareto tail shape k̂ = {k:.2} > {}; rare large weights dominate \
             and the error bars are unreliable (a better-trained model lowers k̂)",
            latflow_stats::PARETO_K_MAX
        ),
    })
}

/// The `low_acceptance` warning of a step (or swap step) `label` with `accepted` of `n`
/// proposals accepted; none for `n = 0` or a step that accepted everything.
pub fn low_acceptance(label: &str, accepted: u64, n: u64) -> Option<Warning> {
    if n == 0 || accepted == n {
        return None;
    }
    let rate = accepted as f64 / n as f64;
    (rate < MIN_ACCEPTANCE || accepted < MIN_ACCEPTED).then(|| Warning {
        code: "low_acceptance",
        subject: label.to_string(),
        message: format!(
            "step {label}: {accepted} of {n} proposals accepted (acceptance {rate:.4}); with an acceptance below {MIN_ACCEPTANCE} or fewer \
             than {MIN_ACCEPTED} accepted moves every error bar of this ensemble is unreliable"
        ),
    })
}

/// The `exp_delta_h` (HMC) or `exp_log_ratio` (swap) warning when the mean ± error of
/// e^{−ΔH} or e^{log r} is more than [`MAX_SIGMA`] errors from 1.
pub fn not_one(code: &'static str, label: &str, what: &str, mean: f64, error: f64) -> Option<Warning> {
    let z = (mean - 1.0) / error;
    (z.is_finite() && z.abs() > MAX_SIGMA).then(|| Warning {
        code,
        subject: label.to_string(),
        message: format!(
            "step {label}: {what} = {} is {:.1}σ from 1 (its exact value in equilibrium): the integrator, action or \
             Jacobian terms are suspect, or the chain is not equilibrated",
            value_error(mean, error),
            z.abs()
        ),
    })
}

/// The JSON form of a list of warnings: `[{"code", "subject", "message"}, ...]`.
pub fn to_json(warnings: &[Warning]) -> Value {
    json!(warnings)
}

/// The text form: one `warning: MESSAGE` line each, except that the `short_chain` warnings of
/// more than three components of one vector observable share one line (the first one's
/// message and the count; `--json` lists them all).
pub fn to_text(warnings: &[Warning]) -> String {
    let base = |w: &Warning| (w.code == "short_chain").then(|| w.subject.split_once('[').map(|(b, _)| b.to_string())).flatten();
    let mut s = String::new();
    let mut i = 0;
    while i < warnings.len() {
        let w = &warnings[i];
        let run = match base(w) {
            Some(b) => warnings[i..].iter().take_while(|x| base(x).as_deref() == Some(b.as_str())).count(),
            None => 1,
        };
        s.push_str(&format!("warning: {}\n", w.message));
        if run > 3 {
            let b = base(w).unwrap_or_default();
            s.push_str(&format!("warning: … and {} more components of {b} with N < {TAU_FACTOR}·τ_int (`--json` lists them)\n", run - 1));
            i += run;
        } else {
            i += 1;
        }
    }
    s
}

/// `value` with `error` in value(error) notation, the error's digits in parentheses standing
/// for the last digits of the value: 0.14337(8), 1.8971(42), 210(150).
///
/// The error keeps two significant digits when its three leading digits are 100–354 and one
/// for 355–949 (950–999 round up to 1000, two digits); the value is rounded to the same last
/// digit. A non-finite or zero error gives the value alone with `(?)`, e.g. `0.5(?)`; values
/// too large or small for fixed notation fall back to `VALUE ± ERROR` in exponent notation.
pub fn value_error(value: f64, error: f64) -> String {
    if !value.is_finite() {
        return format!("{value}");
    }
    if !(error.is_finite() && error > 0.0) {
        return format!("{value}(?)");
    }
    let mut exp = error.log10().floor() as i32;
    let mut lead = (error / 10f64.powi(exp - 2)).round();
    if lead >= 1000.0 {
        exp += 1;
        lead = (error / 10f64.powi(exp - 2)).round();
    }
    let digits = if lead < 355.0 {
        2
    } else if lead < 950.0 {
        1
    } else {
        exp += 1;
        2
    };
    // the decimal position of the last digit shown
    let last = exp - (digits - 1);
    if !(-15..=15).contains(&last) {
        return format!("{value:e} ± {error:e}");
    }
    let scale = 10f64.powi(last);
    let err_digits = (error / scale).round() as u64;
    if last >= 0 {
        let v = (value / scale).round() * scale;
        let e = err_digits as f64 * scale;
        format!("{v:.0}({e:.0})")
    } else {
        let decimals = (-last) as usize;
        format!("{value:.decimals$}({err_digits})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_error_notation() {
        assert_eq!(value_error(0.143372, 0.0000812), "0.14337(8)");
        assert_eq!(value_error(0.7442, 0.00121), "0.7442(12)");
        assert_eq!(value_error(1.89713, 0.00421), "1.897(4)");
        assert_eq!(value_error(2.472, 0.042), "2.47(4)");
        assert_eq!(value_error(2.472, 0.032), "2.472(32)");
        assert_eq!(value_error(210.4, 154.0), "210(150)");
        assert_eq!(value_error(7021.0, 3927.0), "7000(4000)");
        assert_eq!(value_error(0.163, 0.0998), "0.16(10)");
        assert_eq!(value_error(-4.09, 0.0012), "-4.0900(12)");
        assert_eq!(value_error(0.5, 0.0), "0.5(?)");
        assert_eq!(value_error(0.5, f64::NAN), "0.5(?)");
        assert_eq!(value_error(1.0e-30, 1.0e-32), "1e-30 ± 1e-32");
    }

    #[test]
    fn thresholds() {
        assert!(short_chain("chi2", 20_000, 882.0).is_some());
        assert!(short_chain("chi2", 20_000, 199.0).is_none());
        assert!(short_chain("chi2", 20_000, f64::NAN).is_none());
        assert!(low_ess(20_000, 0.0006).is_some());
        assert!(low_ess(100, 0.4).is_some(), "ESS = 40 < 50");
        assert!(low_ess(1000, 0.4).is_none());
        assert!(low_acceptance("flow", 3, 2000).is_some());
        assert!(low_acceptance("hmc", 49, 60).is_some());
        assert!(low_acceptance("hmc", 1800, 2000).is_none());
        assert!(low_acceptance("heatbath", 10, 10).is_none());
        assert!(not_one("exp_delta_h", "hmc", "<exp(-dH)>", 1.05, 0.01).is_some());
        assert!(not_one("exp_delta_h", "hmc", "<exp(-dH)>", 1.02, 0.01).is_none());
        let many: Vec<Warning> = (0..6).filter_map(|j| short_chain(&format!("c[{j}]"), 10, 5.0)).collect();
        let text = to_text(&many);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("c[0]") && text.contains("5 more components of c"), "{text}");
        let w = short_chain("m[1]", 10, 5.0).unwrap();
        assert!(w.affects("m[1]") && w.affects("m") && !w.affects("m[0]") && !w.affects("chi2"));
        assert!(low_ess(10, 0.001).unwrap().affects("chi2"));
    }
}
