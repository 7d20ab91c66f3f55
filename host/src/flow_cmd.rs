//! `latflow flow FILE.h5`: the gradient flow of every stored SU(2) or SU(3) configuration, with
//! t²⟨E(t)⟩, ⟨Q(t)⟩, ⟨Q²(t)⟩ and the scales t0/a², w0/a, all with Γ-method errors.
//!
//! The ensemble must store configurations whose layout is one dynamical link component of
//! complex n×n matrices, n = 2 or 3 (2n² reals per link, row-major (re, im), links `[site][μ]`,
//! sites in the lattice's row-major order), every link in SU(n) to [`GROUP_TOLERANCE`]. Each
//! configuration is flowed independently with [`latflow_core::gauge::gradflow`] (the clover
//! E and Q conventions are documented there) and measured at the flow times; configurations
//! are flowed in parallel, in batches of one per thread, and every result is independent of
//! the thread count. The input file is only read.
//!
//! # Errors of derived quantities
//! Per flow time, ⟨t²E⟩, ⟨E⟩, ⟨E_plaq⟩, ⟨Q⟩ and ⟨Q²⟩ get Wolff's Γ-method over the
//! configurations in their stored (Monte Carlo) order. t0 solves ⟨t²E⟩(t) = 0.3 on the mean
//! curve, and w0² solves t d/dt⟨t²E⟩ = 0.3 ([`gradflow::t0_crossing`], [`gradflow::w0_crossing`]:
//! linear interpolation, three-point derivative). Their errors are the linearised Γ-method:
//! with g_k = ∂t0/∂⟨y_k⟩ the exact gradient of the solution with respect to the curve
//! means, the projected series f_i = Σ_k g_k y_{k,i} (y_{k,i} = t_k² E_i(t_k) of
//! configuration i) is analysed by the Γ-method, whose error and τ_int are those of t0
//! (Wolff's method for derived quantities, with the gradient exact instead of numerical).
//! For w0 = √(w0²), the error is that of w0² divided by 2w0.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use latflow_core::gauge::gradflow::{
    self, Crossing, FlowOptions, FlowPoint, FlowScheme, SCALE_REFERENCE,
};
use latflow_core::gauge::{FieldError, FlowGroup, LinkField, Su2, Su3};
use latflow_core::layout::{Element, FieldLayout, FieldRole, Support};
use latflow_core::Lattice;
use latflow_stats::{gamma_method, S_TAU_DEFAULT};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::ensemble::{self, EnsembleFile};

/// The largest deviation ‖U†U − 1‖_F + |det U − 1| a stored link may have.
pub const GROUP_TOLERANCE: f64 = 1e-8;

/// What `latflow flow` does.
#[derive(Debug, Clone)]
pub struct FlowCommand {
    /// The flow times to measure at (finite, ≥ 0, strictly increasing); see [`flow_times`].
    pub times: Vec<f64>,
    /// The integrator settings.
    pub flow: FlowOptions,
    /// The coupling of a replica-exchange file (0 for a plain file).
    pub coupling: usize,
    /// How long HDF5 may take to open the file before the process ends with an error naming it
    /// ([`ensemble::exit_if_stuck`]); `None`: no limit.
    pub read_limit: Option<std::time::Duration>,
}

/// The flow times of the command line: an explicit list (`--times`), or the grid
/// 0, dt, 2dt, …, t_max. Errors name the option.
pub fn flow_times(t_max: f64, dt: f64, list: Option<&[f64]>) -> Result<Vec<f64>> {
    if let Some(times) = list {
        if times.is_empty() {
            bail!("--times: no flow times given");
        }
        gradflow::validate(&FlowOptions::default(), times).map_err(|e| anyhow!("--times: {e}"))?;
        return Ok(times.to_vec());
    }
    if !(t_max.is_finite() && t_max > 0.0) {
        bail!("--tmax {t_max}: the largest flow time must be finite and > 0");
    }
    if !(dt.is_finite() && dt > 0.0) {
        bail!("--dt {dt}: the measurement spacing must be finite and > 0");
    }
    gradflow::flow_grid(t_max, dt).map_err(|e| anyhow!("{e}"))
}

/// A Γ-method estimate; `error` and `tau_int` are NaN when the Γ-method could not estimate
/// them (see [`FlowReport::notes`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub error: f64,
    pub tau_int: f64,
}

/// The ensemble averages at one flow time.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRow {
    pub t: f64,
    /// t²⟨E⟩ (clover).
    pub t2e: Estimate,
    /// ⟨E⟩ (clover), a⁴E.
    pub e: Estimate,
    /// ⟨E_plaq⟩.
    pub e_plaq: Estimate,
    /// ⟨Q⟩ (4D only).
    pub q: Option<Estimate>,
    /// ⟨Q²⟩ (4D only).
    pub q2: Option<Estimate>,
}

/// A scale from the flow: t0/a² or w0/a, with the flow time where its condition holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub value: Estimate,
    /// The solution of the condition (t0/a² itself, or w0²/a²).
    pub t: f64,
}

/// The result of `latflow flow`.
#[derive(Debug, Clone)]
pub struct FlowReport {
    pub file: PathBuf,
    pub coupling: usize,
    /// N of SU(N).
    pub n: usize,
    pub lattice: Vec<usize>,
    pub configs: usize,
    pub flow: FlowOptions,
    pub rows: Vec<FlowRow>,
    /// t0/a², or why it is missing.
    pub t0: Result<Scale, String>,
    /// w0/a, or why it is missing.
    pub w0: Result<Scale, String>,
    /// Remarks: Q omitted outside 4D, errors that could not be estimated.
    pub notes: Vec<String>,
    /// Per configuration (stored order), the measurements at every flow time.
    pub per_config: Vec<Vec<FlowPoint>>,
}

/// Reads the gauge layout of `/configs`: (N, lattice extents). Errors say what is wrong.
fn gauge_layout(file: &EnsembleFile, k: usize) -> Result<(usize, Vec<usize>, usize)> {
    let path = file.path.display();
    let ens = &file.couplings[k];
    let Some(info) = &ens.configs else {
        bail!("{path}: stores no configurations (a run stores them with `save_every` > 0)");
    };
    if info.count == 0 {
        bail!("{path}: /configs holds no configurations");
    }
    let layout: FieldLayout = serde_json::from_str(&info.layout).map_err(|e| {
        anyhow!("{path}: the layout of /configs is not a latflow field layout: {e}")
    })?;
    let dynamical: Vec<_> = layout
        .components
        .iter()
        .filter(|c| c.role == FieldRole::Dynamical)
        .collect();
    let [c] = dynamical.as_slice() else {
        bail!("{path}: not a gauge field: the layout has {} dynamical components, the flow needs one link field", dynamical.len());
    };
    if c.support != Support::Link {
        bail!(
            "{path}: not a gauge field: component '{}' lives on sites, the flow needs links",
            c.name
        );
    }
    let n = match c.element.shape() {
        Element::ComplexMatrix { n: n @ (2 | 3) } => n as usize,
        Element::ComplexMatrix { n } => {
            bail!("{path}: links of component '{}' are {n}x{n} matrices: the flow supports SU(2) and SU(3)", c.name)
        }
        other => bail!("{path}: not a gauge field: component '{}' holds {other:?} elements, not SU(N) matrices", c.name),
    };
    if layout.config_len() != info.config_len {
        bail!(
            "{path}: /configs rows have {} values, but the layout needs {}",
            info.config_len,
            layout.config_len()
        );
    }
    let lattice: Vec<usize> = layout.lattice.iter().map(|&l| l as usize).collect();
    Ok((n, lattice, info.count))
}

/// Flows one configuration (flat reals) and measures at `times`.
fn flow_one<G: FlowGroup>(
    lat: &Lattice,
    reals: &[f64],
    cmd: &FlowCommand,
    index: usize,
) -> Result<Vec<FlowPoint>> {
    let mut field = LinkField::<G>::from_reals(lat.dim(), lat.volume(), reals, GROUP_TOLERANCE)
        .map_err(|e| match e {
            FieldError::NotInGroup { link, deviation } => anyhow!(
            "configuration {index}: link {link} (site {}, direction {}) is not an SU({}) matrix \
             (deviation {deviation:e} > {GROUP_TOLERANCE:e})",
            link / lat.dim(),
            link % lat.dim(),
            G::NC
        ),
            other => anyhow!("configuration {index}: {other}"),
        })?;
    gradflow::flow_measurements(lat, field.links_mut(), &cmd.times, &cmd.flow)
        .map_err(|e| anyhow!("configuration {index}: {e}"))
}

/// Flows every configuration of coupling `cmd.coupling`, batch by batch (one configuration
/// per thread at a time), in stored order.
fn flow_all<G: FlowGroup>(
    file: &EnsembleFile,
    lat: &Lattice,
    count: usize,
    cmd: &FlowCommand,
) -> Result<Vec<Vec<FlowPoint>>> {
    let len = lat.volume() * lat.dim() * G::REALS;
    let batch = rayon::current_num_threads().max(1);
    let mut out = Vec::with_capacity(count);
    for start in (0..count).step_by(batch) {
        let n = batch.min(count - start);
        let block = file.read_configs(cmd.coupling, start, n)?;
        let flowed: Vec<Result<Vec<FlowPoint>>> = block
            .par_chunks(len)
            .enumerate()
            .map(|(j, reals)| flow_one::<G>(lat, reals, cmd, start + j))
            .collect();
        for r in flowed {
            out.push(r?);
        }
    }
    Ok(out)
}

/// The Γ-method estimate of a series; failures leave NaN errors and add a note.
fn estimate(series: &[f64], what: &str, notes: &mut Vec<String>) -> Estimate {
    let mean = series.iter().sum::<f64>() / series.len() as f64;
    match gamma_method(series, S_TAU_DEFAULT) {
        Ok(g) => Estimate {
            mean: g.mean,
            error: g.error,
            tau_int: g.tau_int,
        },
        Err(e) => {
            let note = format!("no Γ-method error for {what}: {e}");
            if !notes.contains(&note) {
                notes.push(note);
            }
            Estimate {
                mean,
                error: f64::NAN,
                tau_int: f64::NAN,
            }
        }
    }
}

/// A scale from a crossing on the mean curve: the value (`t`, or √t when `sqrt`) and the
/// linearised Γ-method error of the projected series.
fn scale(
    crossing: &Crossing,
    curves: &[Vec<f64>],
    sqrt: bool,
    what: &str,
    notes: &mut Vec<String>,
) -> Scale {
    let projected: Vec<f64> = curves
        .iter()
        .map(|y| {
            crossing
                .gradient
                .iter()
                .zip(y)
                .map(|(g, v)| g * v)
                .sum::<f64>()
        })
        .collect();
    let e = estimate(&projected, what, notes);
    let (value, error) = if sqrt {
        let w = crossing.t.sqrt();
        (w, e.error / (2.0 * w))
    } else {
        (crossing.t, e.error)
    };
    Scale {
        value: Estimate {
            mean: value,
            error,
            tau_int: e.tau_int,
        },
        t: crossing.t,
    }
}

/// Runs `latflow flow` on `path` and returns the report (nothing is written).
pub fn flow_file(path: &Path, cmd: &FlowCommand) -> Result<FlowReport> {
    gradflow::validate(&cmd.flow, &cmd.times).map_err(|e| anyhow!("{e}"))?;
    let file = ensemble::exit_if_stuck(path, cmd.read_limit, || ensemble::read(path))?;
    if cmd.coupling >= file.couplings.len() {
        bail!(
            "{}: --coupling {}: the file has {} coupling(s)",
            path.display(),
            cmd.coupling,
            file.couplings.len()
        );
    }
    let (n, lattice, count) = gauge_layout(&file, cmd.coupling)?;
    let extents: Vec<i64> = lattice.iter().map(|&l| l as i64).collect();
    let lat = Lattice::new(&extents)
        .map_err(|e| anyhow!("{}: lattice {lattice:?}: {e}", path.display()))?;
    let per_config = match n {
        2 => flow_all::<Su2>(&file, &lat, count, cmd),
        _ => flow_all::<Su3>(&file, &lat, count, cmd),
    }
    .with_context(|| path.display().to_string())?;
    Ok(summarise(path, cmd, n, lattice, per_config))
}

/// The ensemble averages, t0 and w0 of flowed configurations.
fn summarise(
    path: &Path,
    cmd: &FlowCommand,
    n: usize,
    lattice: Vec<usize>,
    per_config: Vec<Vec<FlowPoint>>,
) -> FlowReport {
    let mut notes = Vec::new();
    let four = lattice.len() == 4;
    if !four {
        notes.push(format!(
            "d = {}: the clover topological charge is defined in 4 dimensions only; Q and Q^2 are omitted",
            lattice.len()
        ));
    }
    let column = |k: usize, f: &dyn Fn(&FlowPoint) -> f64| {
        per_config.iter().map(|c| f(&c[k])).collect::<Vec<f64>>()
    };
    let mut rows = Vec::with_capacity(cmd.times.len());
    for (k, &t) in cmd.times.iter().enumerate() {
        let q = four.then(|| column(k, &|p| p.q.unwrap_or(f64::NAN)));
        rows.push(FlowRow {
            t,
            t2e: estimate(&column(k, &|p| p.t2e), "t^2 E", &mut notes),
            e: estimate(&column(k, &|p| p.e_clover), "E", &mut notes),
            e_plaq: estimate(&column(k, &|p| p.e_plaq), "E_plaq", &mut notes),
            q2: q.as_ref().map(|q| {
                estimate(
                    &q.iter().map(|x| x * x).collect::<Vec<_>>(),
                    "Q^2",
                    &mut notes,
                )
            }),
            q: q.map(|q| estimate(&q, "Q", &mut notes)),
        });
    }
    let curves: Vec<Vec<f64>> = per_config
        .iter()
        .map(|c| c.iter().map(|p| p.t2e).collect())
        .collect();
    let mean_curve: Vec<f64> = rows.iter().map(|r| r.t2e.mean).collect();
    let t0 = gradflow::t0_crossing(&cmd.times, &mean_curve, SCALE_REFERENCE)
        .map(|c| scale(&c, &curves, false, "t0", &mut notes))
        .map_err(|e| e.to_string());
    let w0 = gradflow::w0_crossing(&cmd.times, &mean_curve, SCALE_REFERENCE)
        .map(|c| scale(&c, &curves, true, "w0", &mut notes))
        .map_err(|e| e.to_string());
    FlowReport {
        file: path.to_owned(),
        coupling: cmd.coupling,
        n,
        lattice,
        configs: per_config.len(),
        flow: cmd.flow,
        rows,
        t0,
        w0,
        notes,
        per_config,
    }
}

fn est_json(e: &Estimate) -> Value {
    let num = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    json!({ "mean": num(e.mean), "error": num(e.error), "tau_int": num(e.tau_int) })
}

/// Formats `value(error)` with the error's two leading digits, or `value(?)` without one.
pub fn with_error(value: f64, error: f64) -> String {
    if !error.is_finite() || error <= 0.0 {
        return format!("{value:.6}(?)");
    }
    let digits = (1 - error.log10().floor() as i32).max(0) as usize;
    let scaled = (error * 10f64.powi(digits as i32)).round() as u64;
    format!("{value:.digits$}({scaled})")
}

impl FlowReport {
    fn describe(&self) -> String {
        let shape: Vec<String> = self.lattice.iter().map(|l| l.to_string()).collect();
        let steps = match self.flow.adaptive {
            Some(tol) => format!(
                "adaptive steps (tolerance {tol:e}, first {})",
                self.flow.eps
            ),
            None => format!("eps = {}", self.flow.eps),
        };
        format!(
            "{} (coupling {}): {} configurations of SU({}) on {}, {} flow, {steps}",
            self.file.display(),
            self.coupling,
            self.configs,
            self.n,
            shape.join("x"),
            self.flow.scheme.name()
        )
    }

    /// The table and the scales as text.
    pub fn to_text(&self) -> String {
        let mut s = format!("{}\n", self.describe());
        let four = self.rows.first().is_some_and(|r| r.q.is_some());
        s.push_str(&format!(
            "{:>8} {:>14} {:>11} {:>14} {:>14}",
            "t", "t^2<E>", "error", "<E>", "<E_plaq>"
        ));
        if four {
            s.push_str(&format!(
                " {:>11} {:>10} {:>11} {:>10}",
                "<Q>", "error", "<Q^2>", "error"
            ));
        }
        s.push('\n');
        for r in &self.rows {
            s.push_str(&format!(
                "{:>8.4} {:>14.8} {:>11.3e} {:>14.8} {:>14.8}",
                r.t, r.t2e.mean, r.t2e.error, r.e.mean, r.e_plaq.mean
            ));
            if let (Some(q), Some(q2)) = (&r.q, &r.q2) {
                s.push_str(&format!(
                    " {:>11.5} {:>10.3e} {:>11.5} {:>10.3e}",
                    q.mean, q.error, q2.mean, q2.error
                ));
            }
            s.push('\n');
        }
        for (name, scale) in [("t0/a^2", &self.t0), ("w0/a", &self.w0)] {
            match scale {
                Ok(sc) => s.push_str(&format!(
                    "{name:<7} = {}  (tau_int {:.2})\n",
                    with_error(sc.value.mean, sc.value.error),
                    sc.value.tau_int
                )),
                Err(e) => s.push_str(&format!("{name:<7}: not determined: {e}\n")),
            }
        }
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s
    }

    /// The report as one JSON object (NaN and missing values as `null`).
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "t": r.t, "t2e": est_json(&r.t2e), "e": est_json(&r.e), "e_plaq": est_json(&r.e_plaq),
                    "q": r.q.as_ref().map(est_json), "q2": r.q2.as_ref().map(est_json),
                })
            })
            .collect();
        let scale_json = |s: &Result<Scale, String>| match s {
            Ok(sc) => json!({ "value": est_json(&sc.value), "t": sc.t }),
            Err(e) => json!({ "value": Value::Null, "reason": e }),
        };
        json!({
            "file": self.file.display().to_string(),
            "coupling": self.coupling,
            "group": format!("SU({})", self.n),
            "lattice": self.lattice,
            "configs": self.configs,
            "scheme": self.flow.scheme.name(),
            "eps": self.flow.eps,
            "adaptive": self.flow.adaptive,
            "reference": SCALE_REFERENCE,
            "table": rows,
            "t0": scale_json(&self.t0),
            "w0": scale_json(&self.w0),
            "notes": self.notes,
        })
    }

    /// The table as CSV: t, t2e, t2e_err, e, e_err, e_plaq, e_plaq_err and, in 4D, q, q_err,
    /// q2, q2_err (NaN errors as empty fields).
    pub fn to_csv(&self) -> String {
        let four = self.rows.first().is_some_and(|r| r.q.is_some());
        let mut s = String::from("t,t2e,t2e_err,e,e_err,e_plaq,e_plaq_err");
        if four {
            s.push_str(",q,q_err,q2,q2_err");
        }
        s.push('\n');
        let f = |x: f64| {
            if x.is_finite() {
                format!("{x:e}")
            } else {
                String::new()
            }
        };
        for r in &self.rows {
            let mut cells = vec![f(r.t)];
            let mut ests = vec![&r.t2e, &r.e, &r.e_plaq];
            ests.extend(r.q.iter().chain(r.q2.iter()));
            for e in ests {
                cells.push(f(e.mean));
                cells.push(f(e.error));
            }
            s.push_str(&cells.join(","));
            s.push('\n');
        }
        s
    }
}

/// Writes the report to `out`: JSON when the name ends in `.json`, CSV otherwise. Refuses to
/// write over the input ensemble.
pub fn write_report(report: &FlowReport, out: &Path) -> Result<()> {
    let same = match (
        std::fs::canonicalize(out),
        std::fs::canonicalize(&report.file),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        bail!(
            "--out {}: that is the input ensemble, which latflow flow never modifies",
            out.display()
        );
    }
    let text = if out.extension().is_some_and(|e| e == "json") {
        serde_json::to_string_pretty(&report.to_json())?
    } else {
        report.to_csv()
    };
    std::fs::write(out, text).with_context(|| format!("--out {}: cannot write", out.display()))
}

/// `--scheme NAME` as a [`FlowScheme`], with the known names in the error.
pub fn parse_scheme(name: &str) -> Result<FlowScheme> {
    FlowScheme::from_name(name)
        .ok_or_else(|| anyhow!("--scheme {name:?}: unknown flow scheme (known: wilson, symanzik)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_with_errors_and_times() {
        assert_eq!(with_error(2.78543, 0.0062), "2.7854(62)");
        assert_eq!(with_error(1.2, 0.35), "1.20(35)");
        assert_eq!(with_error(12.0, 3.1), "12.0(31)");
        assert_eq!(with_error(1.0, f64::NAN), "1.000000(?)");
        assert_eq!(
            flow_times(0.25, 0.1, None).unwrap(),
            vec![0.0, 0.1, 0.2, 0.25]
        );
        assert_eq!(
            flow_times(9.0, 1.0, Some(&[0.5, 1.0])).unwrap(),
            vec![0.5, 1.0]
        );
        assert!(flow_times(1.0, 0.1, Some(&[]))
            .unwrap_err()
            .to_string()
            .contains("no flow times"));
        assert!(flow_times(f64::NAN, 0.1, None)
            .unwrap_err()
            .to_string()
            .contains("--tmax NaN"));
        assert!(parse_scheme("Wilson").is_err());
        assert_eq!(parse_scheme("symanzik").unwrap(), FlowScheme::Symanzik);
    }
}
