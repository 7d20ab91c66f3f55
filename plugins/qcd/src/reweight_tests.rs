//! Pseudofermion HMC against quenched configurations reweighted by the dense det(D)² on a 4×4
//! Schwinger-model lattice: the two estimates of ⟨cos θ_P⟩ and Σ must agree within their
//! combined errors.

use super::*;
use latflow_core::gauge::fermion::{Spinor, SpinorOf};
use latflow_core::gauge::{Complex, U1Angle};
use latflow_core::hmc::{hmc_trajectory, Schedule};
use latflow_core::testkit::batch_means;

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

#[test]
fn pseudofermion_hmc_agrees_with_reweighted_quenched_configurations() {
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

    // quenched: gauge-only HMC, then weights det(D)² = e^{2 ln|det D|}
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
    let (mut logw, mut plaq, mut sigma) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..4200 {
        hmc_trajectory(&space, &mut quenched, &mut u, &schedule, true, &mut rng).unwrap();
        if i >= 200 {
            let mut out = Vec::new();
            t.measure(&u, &mut out).unwrap();
            logw.push(2.0 * log_abs_det_d(&t, &u));
            plaq.push(out[0]);
            sigma.push(out[1]);
        }
    }
    let max = logw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logw.iter().map(|l| (l - max).exp()).collect();
    let rw_plaq = reweighted(&w, &plaq, 40);
    let rw_sigma = reweighted(&w, &sigma, 40);

    // dynamical: pseudofermion HMC on two time scales
    let mut u = t.initial(Start::Hot, &mut Stream::new(12, 0));
    let mut rng = Stream::new(13, 0);
    let p = HmcParams {
        md_steps: 4,
        inner_steps: vec![2].into(),
        ..HmcParams::default()
    };
    let (mut hp, mut hs) = (Vec::new(), Vec::new());
    latflow_core::sdk::hmc_trajectories(&t, &mut u, &p, 100, &mut rng).unwrap();
    for _ in 0..2500 {
        latflow_core::sdk::hmc_trajectories(&t, &mut u, &p, 1, &mut rng).unwrap();
        let mut out = Vec::new();
        t.measure(&u, &mut out).unwrap();
        hp.push(out[0]);
        hs.push(out[1]);
    }
    let (dyn_plaq, dyn_sigma) = (batch_means(&hp, 20), batch_means(&hs, 20));
    for (what, a, b) in [
        ("cos theta_P", rw_plaq, dyn_plaq),
        ("Sigma", rw_sigma, dyn_sigma),
    ] {
        let z = (a.0 - b.0) / (a.1 * a.1 + b.1 * b.1).sqrt();
        println!(
            "4x4 {what}: reweighted {:.5} ± {:.5}, pseudofermion HMC {:.5} ± {:.5}: z = {z:+.2}",
            a.0, a.1, b.0, b.1
        );
        assert!(z.abs() < 4.0, "{what}: z = {z}");
    }
}
