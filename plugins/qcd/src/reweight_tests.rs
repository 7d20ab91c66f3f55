//! Pseudofermion HMC against quenched configurations reweighted by the dense det(D)² on a 4×4
//! Schwinger-model lattice: the two estimates of ⟨cos θ_P⟩ and Σ must agree within their
//! combined errors.

use super::*;
use latflow_core::gauge::fermion::{Spinor, SpinorOf};
use latflow_core::gauge::{Complex, U1Angle};
use latflow_core::hmc::{hmc_trajectory, Schedule};
use latflow_core::testkit::batch_means;

use crate::tests::{assert_exact, hmc_plaquette_sigma};

use crate::terms::{links, GaugeTerm};

/// ln |det M| of a dense complex n×n matrix (row-major), by Gaussian elimination with partial
/// pivoting.
fn log_abs_det(mut m: Vec<Complex>, n: usize) -> f64 {
    let mut log = 0.0;
    for k in 0..n {
        let p = (k..n)
            .max_by(|&a, &b| m[a * n + k].abs2().total_cmp(&m[b * n + k].abs2()))
            .unwrap();
        if p != k {
            for j in 0..n {
                m.swap(k * n + j, p * n + j);
            }
        }
        let pivot = m[k * n + k];
        log += pivot.abs().ln();
        for i in k + 1..n {
            let f = m[i * n + k] / pivot;
            for j in k..n {
                let s = m[k * n + j];
                m[i * n + j] -= f * s;
            }
        }
    }
    log
}

/// ln |det D| of the Wilson operator on U(1) links in 2D, from its columns D e_j.
fn log_abs_det_d(t: &Qcd, u: &[f64]) -> f64 {
    let d = WilsonDirac::<U1Angle, 2>::new(t.lattice(), t.wilson_params(t.kappas()[0])).unwrap();
    let v = t.lattice().volume();
    let n = 2 * v;
    let l = links::<U1Angle>(u);
    let mut m = vec![Complex::ZERO; n * n];
    let mut e: Vec<SpinorOf<U1Angle, 2>> = vec![Spinor::default(); v];
    let mut out = e.clone();
    for j in 0..n {
        e[j / 2].0[j % 2].0[0] = Complex::new(1.0, 0.0);
        d.apply(l, &e, &mut out).unwrap();
        e[j / 2].0[j % 2].0[0] = Complex::ZERO;
        for i in 0..n {
            m[i * n + j] = out[i / 2].0[i % 2].0[0];
        }
    }
    log_abs_det(m, n)
}

/// The reweighted mean Σ w O / Σ w and its error from `blocks` jackknife blocks.
fn reweighted(w: &[f64], o: &[f64], blocks: usize) -> (f64, f64) {
    let size = w.len() / blocks;
    let (sw, swo): (f64, f64) = (w.iter().sum(), w.iter().zip(o).map(|(a, b)| a * b).sum());
    let est: Vec<f64> = (0..blocks)
        .map(|b| {
            let r = b * size..(b + 1) * size;
            let bw: f64 = w[r.clone()].iter().sum();
            let bwo: f64 = w[r.clone()].iter().zip(&o[r]).map(|(a, b)| a * b).sum();
            (swo - bwo) / (sw - bw)
        })
        .collect();
    let mean = swo / sw;
    let jm = est.iter().sum::<f64>() / blocks as f64;
    let var =
        est.iter().map(|x| (x - jm).powi(2)).sum::<f64>() * (blocks - 1) as f64 / blocks as f64;
    (mean, var.sqrt())
}

/// Quenched 4×4 configurations at β = 1.5 (gauge-only HMC, 4000 after 200 thermalisation
/// trajectories): ln |det D| of `t`'s operator, ⟨cos θ_P⟩ and Σ of each.
fn quenched_4x4(t: &Qcd) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let space = t.space();
    let gauge = GaugeTerm::<U1Angle> {
        lattice: t.lattice(),
        beta: 1.5,
        _g: std::marker::PhantomData,
    };
    let mut quenched = LeveledAction::single(Box::new(gauge) as Term<'_, QcdSpace>);
    let schedule = Schedule::from_params(
        &HmcParams {
            md_steps: 8,
            ..HmcParams::default()
        },
        1,
    )
    .unwrap();
    let mut rng = Stream::new(11, 0);
    let mut u = t.initial(Start::Hot, &mut rng);
    let (mut log_det, mut plaq, mut sigma) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..4200 {
        hmc_trajectory(&space, &mut quenched, &mut u, &schedule, true, &mut rng).unwrap();
        if i >= 200 {
            let mut out = Vec::new();
            t.measure(&u, &mut out).unwrap();
            log_det.push(log_abs_det_d(t, &u));
            plaq.push(out[0]);
            sigma.push(out[1]);
        }
    }
    (log_det, plaq, sigma)
}

/// Dynamical HMC of `t` (2500 trajectories after 100, from seeds `seeds`) against the quenched
/// sample reweighted by |det D|^nf: ⟨cos θ_P⟩ and Σ agree within |z| < 4.
fn check_against_reweighted(label: &str, t: &Qcd, nf: f64, q: &(Vec<f64>, Vec<f64>, Vec<f64>), seeds: (u64, u64)) {
    let (log_det, plaq, sigma) = q;
    let max = log_det.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = log_det.iter().map(|l| (nf * (l - max)).exp()).collect();
    let (rw_plaq, rw_sigma) = (reweighted(&w, plaq, 40), reweighted(&w, sigma, 40));
    // dynamical: two time scales
    let mut u = t.initial(Start::Hot, &mut Stream::new(seeds.0, 0));
    let mut rng = Stream::new(seeds.1, 0);
    let p = HmcParams {
        md_steps: 4,
        inner_steps: vec![2].into(),
        ..HmcParams::default()
    };
    let (hp, hs, accepted) = hmc_plaquette_sigma(t, &p, &mut u, &mut rng, 100, 2500);
    assert!(accepted > 1500, "{label}: acceptance {accepted}/2500");
    let (dyn_plaq, dyn_sigma) = (batch_means(&hp, 20), batch_means(&hs, 20));
    for (what, a, b) in [
        ("cos theta_P", rw_plaq, dyn_plaq),
        ("Sigma", rw_sigma, dyn_sigma),
    ] {
        let z = (a.0 - b.0) / (a.1 * a.1 + b.1 * b.1).sqrt();
        println!(
            "4x4 {what}: reweighted {:.5} ± {:.5}, {label} {:.5} ± {:.5}: z = {z:+.2}",
            a.0, a.1, b.0, b.1
        );
        assert!(z.abs() < 4.0, "{label} {what}: z = {z}");
    }
}

/// Pseudofermion HMC (nf = 2) and rational HMC (nf = 1) against one sample of quenched
/// configurations reweighted by the dense det(D)² and |det D| (4×4 Schwinger model, β = 1.5,
/// κ = 0.22).
#[test]
fn pseudofermion_and_rational_hmc_agree_with_reweighted_quenched_configurations() {
    let card = r#"{"group": "u1", "lattice": [4, 4], "beta": 1.5, "kappa": 0.22, "condensate": {"exact": true}}"#;
    let t = Qcd::from_config(card).unwrap();
    // the dense determinant agrees with the free-field momentum sum on the cold field
    let cold = t.initial(Start::Cold, &mut Stream::new(1, 0));
    let free: f64 = (0..16)
        .map(|k| {
            let (px, pt) = (
                std::f64::consts::TAU * (k / 4) as f64 / 4.0,
                std::f64::consts::TAU * ((k % 4) as f64 + 0.5) / 4.0,
            );
            let a = 1.0 - 2.0 * 0.22 * (px.cos() + pt.cos());
            (a * a + 4.0 * 0.22 * 0.22 * (px.sin().powi(2) + pt.sin().powi(2))).ln()
        })
        .sum();
    assert!((log_abs_det_d(&t, &cold) - free).abs() < 1e-10);
    // and with the free-field log det D of the reference table (4×4, κ = 0.25)
    let t25 = Qcd::from_config(r#"{"group": "u1", "lattice": [4, 4], "beta": 1.0, "kappa": 0.25}"#)
        .unwrap();
    assert!((log_abs_det_d(&t25, &cold) - 1.3478411184).abs() < 1e-9);

    let q = quenched_4x4(&t);
    let (q_plaq, q_sigma) = (batch_means(&q.1, 40), batch_means(&q.2, 40));
    println!("4x4 quenched (weight 1): cos theta_P {:.5} ± {:.5}, Sigma {:.5} ± {:.5}", q_plaq.0, q_plaq.1, q_sigma.0, q_sigma.1);
    check_against_reweighted("pseudofermion HMC (nf = 2)", &t, 2.0, &q, (12, 13));
    let nf1 = Qcd::from_config(
        r#"{"group": "u1", "lattice": [4, 4], "beta": 1.5, "kappa": 0.22, "condensate": {"exact": true},
            "nf": 1, "rhmc": {"lambda_min": 1e-4, "degree": 20}}"#,
    )
    .unwrap();
    check_against_reweighted("rational HMC (nf = 1)", &nf1, 1.0, &q, (22, 23));
}

/// (ln |det M|, Re Tr M⁻¹) of a dense complex n×n matrix (row-major), by LU with partial
/// pivoting.
fn log_det_and_trace_inverse(mut m: Vec<Complex>, n: usize) -> (f64, f64) {
    let mut perm: Vec<usize> = (0..n).collect();
    let mut log = 0.0;
    for k in 0..n {
        let p = (k..n).max_by(|&a, &b| m[a * n + k].abs2().total_cmp(&m[b * n + k].abs2())).unwrap();
        if p != k {
            for j in 0..n {
                m.swap(k * n + j, p * n + j);
            }
            perm.swap(k, p);
        }
        let pivot = m[k * n + k];
        log += pivot.abs().ln();
        for i in k + 1..n {
            let f = m[i * n + k] / pivot;
            m[i * n + k] = f;
            for j in k + 1..n {
                let s = m[k * n + j];
                m[i * n + j] -= f * s;
            }
        }
    }
    // Tr M⁻¹ = Σ_j (M⁻¹ e_j)_j, with P M = L U
    let mut trace = 0.0;
    for j in 0..n {
        let mut y: Vec<Complex> = perm.iter().map(|&p| if p == j { Complex::new(1.0, 0.0) } else { Complex::ZERO }).collect();
        for i in 0..n {
            for k in 0..i {
                let s = m[i * n + k] * y[k];
                y[i] -= s;
            }
        }
        for i in (0..n).rev() {
            for k in i + 1..n {
                let s = m[i * n + k] * y[k];
                y[i] -= s;
            }
            y[i] = y[i] / m[i * n + i];
        }
        trace += y[j].re;
    }
    (log, trace)
}

/// The exact ⟨cos θ_P⟩ and Σ of the 2×2 Schwinger model with weight e^{β Σ cos θ_P} |det D|^nf,
/// by the trapezoidal rule with `n` points per angle over the 5 links left free by fixing the
/// maximal tree {U_0(0,0), U_1(0,0), U_1(1,0)} to 1 (both the weight and the observables are
/// gauge invariant, and the integrand is smooth and periodic, so the rule converges
/// exponentially in n).
fn exact_2x2(beta: f64, kappa: f64, nf: f64, n: usize) -> (f64, f64) {
    let t = Qcd::from_config(&format!(r#"{{"group": "u1", "lattice": [2, 2], "beta": {beta}, "kappa": {kappa}}}"#)).unwrap();
    let d = WilsonDirac::<U1Angle, 2>::new(t.lattice(), t.wilson_params(kappa)).unwrap();
    let lat = t.lattice().clone();
    let free = [2usize, 3, 4, 6, 7]; // links (site, μ) as site·2 + μ; 0, 1, 5 form the tree
    let (mut z, mut zp, mut zs) = (0.0, 0.0, 0.0);
    let mut u = vec![0.0; 8];
    let mut e: Vec<SpinorOf<U1Angle, 2>> = vec![Spinor::default(); 4];
    let mut col = e.clone();
    let mut m = vec![Complex::ZERO; 64];
    for idx in 0..n.pow(5) {
        let mut r = idx;
        for &l in &free {
            u[l] = std::f64::consts::TAU * (r % n) as f64 / n as f64;
            r /= n;
        }
        let mut cos_sum = 0.0;
        for s in 0..4 {
            let p = u[s * 2] + u[lat.fwd(s, 0) * 2 + 1] - u[lat.fwd(s, 1) * 2] - u[s * 2 + 1];
            cos_sum += p.cos();
        }
        let l = links::<U1Angle>(&u);
        for j in 0..8 {
            e[j / 2].0[j % 2].0[0] = Complex::new(1.0, 0.0);
            d.apply(l, &e, &mut col).unwrap();
            e[j / 2].0[j % 2].0[0] = Complex::ZERO;
            for i in 0..8 {
                m[i * 8 + j] = col[i / 2].0[i % 2].0[0];
            }
        }
        let (log_det, tr) = log_det_and_trace_inverse(m.clone(), 8);
        let w = (beta * cos_sum + nf * log_det).exp();
        z += w;
        zp += w * cos_sum / 4.0;
        zs += w * 2.0 * kappa * tr / 4.0;
    }
    (zp / z, zs / z)
}

/// The integration reproduces the two-flavour 2×2 table to 1e-9, which makes its one-flavour
/// values exact references; rational HMC (nf = 1) reproduces those, |z| < 4.
#[test]
fn rational_hmc_reproduces_the_exact_one_flavour_2x2_values() {
    // points per angle: the e^{β cos θ} factors need more at larger β
    let points = |beta: f64| if beta > 1.5 { 18 } else { 12 };
    for (beta, kappa, plaq, sigma) in [(1.0, 0.25, 0.6042904459, 0.7631221705), (2.0, 0.276, 0.8127516480, 0.7425785691)] {
        let (p, s) = exact_2x2(beta, kappa, 2.0, points(beta));
        assert!((p - plaq).abs() < 1e-9 && (s - sigma).abs() < 1e-9, "nf = 2, β {beta}, κ {kappa}: {p} {s}");
    }
    // (at κ = 0.276 the one-flavour Σ moved by 4e-7 between 16 and 18 points per angle: its
    // integrand |det D| Tr D⁻¹ is no trigonometric polynomial where det D nears zero, so the
    // one-flavour points stay at κ = 0.25)
    for (beta, kappa, seed) in [(1.0, 0.25, 31), (2.0, 0.25, 32)] {
        let (plaq, sigma) = exact_2x2(beta, kappa, 1.0, points(beta));
        let (p2, s2) = exact_2x2(beta, kappa, 1.0, points(beta) - 2);
        // converging (n − 2 points are within 1e-7; the two-flavour check above shows n points
        // exact to 1e-9)
        assert!((plaq - p2).abs() < 1e-7 && (sigma - s2).abs() < 1e-7, "not converged in n: {plaq} {p2}, {sigma} {s2}");
        let card = format!(
            r#"{{"group": "u1", "lattice": [2, 2], "beta": {beta}, "kappa": {kappa}, "nf": 1,
                "rhmc": {{"lambda_min": 1e-5, "degree": 24}}, "condensate": {{"exact": true}}, "pion_correlator": false}}"#
        );
        let t = Qcd::from_config(&card).unwrap();
        let p = HmcParams { md_steps: 4, inner_steps: vec![2].into(), ..HmcParams::default() };
        let mut rng = Stream::new(seed, 0);
        let mut u = t.initial(Start::Hot, &mut rng);
        let (hp, hs, _) = hmc_plaquette_sigma(&t, &p, &mut u, &mut rng, 100, 8000);
        let label = format!("2x2 nf = 1, beta {beta} kappa {kappa}");
        assert_exact(&label, "cos theta_P", &hp, plaq);
        assert_exact(&label, "Sigma", &hs, sigma);
    }
}
