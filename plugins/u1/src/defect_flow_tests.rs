//! The defect flow's contracts: the flux pattern's curl, the circle map (odd, increasing, its
//! inverse), the layer's round trip, log-det against a dense Jacobian and gauge equivariance,
//! the training loss's gradient against finite differences, training lowering the work, and
//! bad options and theories refused naming the key.

use std::f64::consts::{PI, TAU};

use super::*;
use crate::{gauge_transform, Physics, U1};

fn lattice(shape: &[i64]) -> Lattice {
    Lattice::new(shape).unwrap()
}

/// Uniform angles in (−π, π].
fn hot(n: usize, seed: u64) -> Vec<f64> {
    let mut s = Stream::new(seed, 0);
    (0..n).map(|_| PI - TAU * s.uniform()).collect()
}

/// A map far from the identity: 3 components with unequal weights and α = e^{0.9}, e^{−0.7}, e^{0.2}.
fn skewed_map() -> CircleMap {
    CircleMap::from_parts(vec![0.3, -0.5, 0.1], vec![0.9, -0.7, 0.2])
}

/// ln|det M| by Gaussian elimination with partial pivoting (M row-major, n × n).
fn log_abs_det(mut m: Vec<f64>, n: usize) -> f64 {
    let mut log_det = 0.0;
    for col in 0..n {
        let pivot = (col..n).max_by(|&a, &b| m[a * n + col].abs().total_cmp(&m[b * n + col].abs())).unwrap();
        if pivot != col {
            for j in 0..n {
                m.swap(col * n + j, pivot * n + j);
            }
        }
        let p = m[col * n + col];
        log_det += p.abs().ln();
        for r in col + 1..n {
            let f = m[r * n + col] / p;
            for j in col..n {
                m[r * n + j] -= f * m[col * n + j];
            }
        }
    }
    log_det
}

/// ln|det ∂T/∂θ| of the layer at `x` from its dense Jacobian, by central differences column by
/// column.
fn dense_log_det(g: &DefectGeometry, map: &CircleMap, x: &[f64]) -> f64 {
    let (n, eps) = (x.len(), 1e-6);
    let mut jac = vec![0.0; n * n];
    for j in 0..n {
        let (mut p, mut m) = (x.to_vec(), x.to_vec());
        p[j] += eps;
        m[j] -= eps;
        g.forward(map, &mut p);
        g.forward(map, &mut m);
        for i in 0..n {
            jac[i * n + j] = (p[i] - m[i]) / (2.0 * eps);
        }
    }
    log_abs_det(jac, n)
}

/// The geometry of a one-plaquette defect at the origin.
fn geometry(shape: &[i64]) -> DefectGeometry {
    let lat = lattice(shape);
    let mut kernel = Kernel::new(&lat);
    kernel.set_defect_box(&[1, 1]);
    DefectGeometry::new(&kernel, &lat).unwrap()
}

#[test]
fn flux_field_has_the_prescribed_curl() {
    for (shape, site) in [(vec![6i64, 4], 0usize), (vec![6, 4], 7), (vec![5, 5], 12)] {
        let lat = lattice(&shape);
        let kernel = Kernel::new(&lat);
        let a = flux_field(&lat, site);
        let mut curl = vec![0.0; lat.volume()];
        kernel.plaquette_angles(&a, &mut curl);
        let others = -1.0 / (lat.volume() - 1) as f64;
        for (p, c) in curl.iter().enumerate() {
            let want = if p == site { 1.0 } else { others };
            assert!((c - want).abs() < 1e-12, "{shape:?}, defect {site}: curl at {p} is {c}, want {want}");
        }
    }
}

#[test]
fn circle_map_is_an_odd_increasing_bijection() {
    for map in [CircleMap::new(4), skewed_map(), CircleMap::from_parts(vec![0.0], vec![-3.0])] {
        assert_eq!(map.eval(0.0).0, 0.0);
        assert!((map.eval(PI).0 - PI).abs() < 1e-14 && (map.eval(-PI).0 + PI).abs() < 1e-14, "h(±π) = ±π");
        for i in 0..200 {
            let phi = -PI + TAU * (i as f64 + 0.37) / 200.0;
            let (h, dh) = map.eval(phi);
            assert!((map.eval(-phi).0 + h).abs() < 1e-14, "h is odd");
            assert!(dh > 0.0, "h' = {dh} at {phi}");
            let eps = 1e-6;
            let fd = (map.eval(phi + eps).0 - map.eval(phi - eps).0) / (2.0 * eps);
            assert!((fd - dh).abs() < 1e-7 * dh.max(1.0), "h' = {dh}, finite differences {fd} at {phi}");
            assert!((map.inverse(h) - phi).abs() < 1e-13, "h⁻¹(h({phi})) = {}", map.inverse(h));
        }
    }
}

#[test]
fn layer_round_trip_and_log_det_against_a_dense_jacobian() {
    let g = geometry(&[4, 4]);
    let map = skewed_map();
    let n = 32;
    for seed in 0..4 {
        let x = hot(n, 100 + seed);
        let mut y = x.clone();
        let log_det = g.forward(&map, &mut y);
        let (h, _) = map.eval(g.defect_angle(&x, 0));
        assert!((g.defect_angle(&y, 0) - h).abs() < 1e-12, "the defect's new angle is h(φ)");
        let mut back = y.clone();
        let log_det_inv = g.inverse(&map, &mut back);
        for (a, b) in back.iter().zip(&x) {
            assert!((a - b).abs() < 1e-12, "round trip: {a} against {b}");
        }
        assert!((log_det + log_det_inv).abs() < 1e-12, "ln J(T⁻¹) = −ln J(T)");
        let dense = dense_log_det(&g, &map, &x);
        assert!((dense - log_det).abs() < 1e-6, "seed {seed}: ln det {log_det}, dense {dense}");
    }
}

/// Several defect plaquettes (two far apart and a 2×1 block): one sub-layer each, the round trip
/// and the log-det against the dense Jacobian hold for the composition.
#[test]
fn several_defects_round_trip_and_log_det() {
    let lat = lattice(&[4, 6]);
    for sites in [vec![0usize, 14], vec![0, 1, 9]] {
        let mut kernel = Kernel::new(&lat);
        kernel.set_defect_sites(&sites);
        let g = DefectGeometry::new(&kernel, &lat).unwrap();
        assert_eq!(g.len(), sites.len());
        let map = skewed_map();
        let n = 48;
        let x = hot(n, 300);
        let mut y = x.clone();
        let log_det = g.forward(&map, &mut y);
        let mut back = y.clone();
        assert!((g.inverse(&map, &mut back) + log_det).abs() < 1e-12);
        for (a, b) in back.iter().zip(&x) {
            assert!((a - b).abs() < 1e-12, "{sites:?}: round trip {a} against {b}");
        }
        // each translated flux pattern has its curl on its own plaquette
        for (i, &d) in sites.iter().enumerate() {
            let mut curl = vec![0.0; lat.volume()];
            kernel.plaquette_angles(&g.fluxes[i], &mut curl);
            assert!((curl[d] - 1.0).abs() < 1e-12 && (curl[(d + 3) % 24] + 1.0 / 23.0).abs() < 1e-12);
        }
        let dense = dense_log_det(&g, &map, &x);
        assert!((dense - log_det).abs() < 1e-6, "{sites:?}: ln det {log_det}, dense {dense}");
    }
}

#[test]
fn layer_is_gauge_equivariant() {
    let lat = lattice(&[6, 4]);
    let g = geometry(&[6, 4]);
    let map = skewed_map();
    let x = hot(48, 7);
    let mut s = Stream::new(8, 0);
    let alpha: Vec<f64> = (0..lat.volume()).map(|_| 10.0 * (s.uniform() - 0.5)).collect();
    let mut t_then_g = x.clone();
    g.forward(&map, &mut t_then_g);
    let t_then_g = gauge_transform(&lat, &t_then_g, &alpha);
    let mut g_then_t = gauge_transform(&lat, &x, &alpha);
    g.forward(&map, &mut g_then_t);
    for (a, b) in t_then_g.iter().zip(&g_then_t) {
        assert!((a - b).abs() < 1e-12, "T(gθ) = {b}, gT(θ) = {a}");
    }
}

#[test]
fn training_loss_gradient_matches_finite_differences() {
    let map = skewed_map();
    for (phi, w) in [(0.4, 0.0), (-2.9, 0.5), (1.7, 1.0)] {
        let sample = Sample { phi, cos_sum: 48.3, sin_sum: -2.1, others: 63.0, beta: 6.0, w };
        let mut grad = vec![0.0; 6];
        sample.loss(&map, Some(&mut grad));
        let p = map.params();
        for (i, gi) in grad.iter().enumerate() {
            let eps = 1e-6;
            let at = |d: f64| {
                let mut q = p.clone();
                q[i] += d;
                let mut m = map.clone();
                m.set_params(&q);
                sample.loss(&m, None)
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!((fd - gi).abs() < 1e-6 * fd.abs().max(1.0), "φ = {phi}, parameter {i}: {gi} against {fd}");
        }
    }
}

/// Options for a small test protocol (L = 8).
fn options(stages: u32, train_steps: u32) -> Options {
    let mut o = Options::parse(&serde_json::json!({ "stages": stages, "hold": 2 })).unwrap();
    o.flow.train_steps = train_steps;
    o.flow.batch = 16;
    o.flow.thermalization = 50;
    o
}

#[test]
fn training_lowers_the_work() {
    let g = geometry(&[8, 8]);
    let mean_work = |train_steps: u32| {
        let o = options(1, train_steps);
        let protocol = Protocol::new(&g, 6.0, 1.0, &o).unwrap();
        let trained = protocol.train().unwrap();
        let (mut x, mut rng) = (vec![0.0; 128], Stream::new(3, 0));
        protocol.hmc(1.0, &mut x, 50, &mut rng).unwrap();
        let mut sum = 0.0;
        for _ in 0..300 {
            protocol.hmc(1.0, &mut x, 1, &mut rng).unwrap();
            let (_, work, _) = protocol.run(&trained, &x, &mut rng).unwrap();
            sum += work;
        }
        (sum / 300.0, trained.final_loss[0])
    };
    let (untrained, _) = mean_work(0);
    let (trained, loss) = mean_work(150);
    println!("mean work: untrained {untrained:.3}, trained {trained:.3} (final loss {loss:.3})");
    assert!(loss.is_finite());
    assert!(trained < 0.5 * untrained, "training did not lower the work: {untrained} → {trained}");
}

#[test]
fn the_same_seed_gives_the_same_layers() {
    let g = geometry(&[6, 6]);
    let o = options(2, 20);
    let protocol = Protocol::new(&g, 4.0, 1.0, &o).unwrap();
    let (a, b) = (protocol.train().unwrap(), protocol.train().unwrap());
    assert_eq!(a.layers, b.layers);
    assert_ne!(a.layers[0], CircleMap::new(4), "the layers moved");
}

#[test]
fn bad_options_and_theories_name_the_key() {
    use serde_json::json;
    for (opts, needle) in [
        (json!({ "stages": 0 }), "stages"),
        (json!({ "to": -1.0 }), "to"),
        (json!({ "hmc": { "md_steps": 0 } }), "hmc.md_steps"),
        (json!({ "hmc": { "trajectory_length": 0.0 } }), "hmc.trajectory_length"),
        (json!({ "hmc": { "trajectory_jitter": 1.0 } }), "hmc.trajectory_jitter"),
        (json!({ "hmc": { "repeat": 0 } }), "hmc.repeat"),
        (json!({ "flow": { "components": 0 } }), "flow.components"),
        (json!({ "flow": { "batch": 0 } }), "flow.batch"),
        (json!({ "flow": { "learning_rate": -0.1 } }), "flow.learning_rate"),
        (json!({ "flow": { "layers": 3 } }), "layers"),
        (json!({ "stage": 2 }), "stage"),
    ] {
        let e = Options::parse(&opts).unwrap_err();
        assert!(e.message.contains(needle), "{opts}: {}", e.message);
    }
    let good = json!({});
    for (card, needle) in [
        (r#"{"lattice": [8, 8], "beta": 6.0}"#, "defect = [1, 1]"),
        (r#"{"lattice": [4, 4, 4], "beta": 6.0, "defect": [1, 1, 1]}"#, "2D"),
    ] {
        let u = U1::from_config(card).unwrap();
        let e = u.step_columns(KIND, &good).unwrap_err();
        assert!(e.message.contains(needle), "{card}: {}", e.message);
    }
    let u = U1::from_config(r#"{"lattice": [8, 8], "beta": 6.0, "defect": [1, 1]}"#).unwrap();
    assert_eq!(u.step_columns(KIND, &good).unwrap(), COLUMNS.to_vec());
    assert!(u.step_columns("heatbath", &good).unwrap_err().message.contains("defect_snf"));
}
