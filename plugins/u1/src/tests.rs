use std::f64::consts::{PI, TAU};

use super::*;
use latflow_core::abi::{IntegratorKind, Theory};
use latflow_core::abi_stable::std_types::{RSlice, RSliceMut, RVec};
use latflow_core::hmc::{integrate, FieldSpace, Schedule};
use latflow_core::sdk::Adapter;
use latflow_core::testkit;

/// Finite-difference agreement of the gradient (relative to max(|value|, 1)).
const RTOL_FD: f64 = 1e-8;
/// Gauge invariance of the action and of every observable.
const ATOL_GAUGE: f64 = 1e-12;
/// Distance of the unrounded Q from an integer.
const ATOL_Q: f64 = 1e-9;

fn theory(json: &str) -> Adapter<U1> {
    Adapter::from_json(json).unwrap()
}

fn lattice(shape: &[i64]) -> Lattice {
    Lattice::new(shape).unwrap()
}

/// Uniform angles in (−π, π].
fn hot(n: usize, seed: u64) -> Vec<f64> {
    let mut s = Stream::new(seed, 0);
    (0..n).map(|_| PI - TAU * s.uniform()).collect()
}

fn params(integrator: IntegratorKind, md_steps: u32) -> HmcParams {
    HmcParams {
        md_steps,
        integrator,
        ..HmcParams::default()
    }
}

/// The action straight from the definition, with the lattice's neighbour tables.
fn naive_action(lat: &Lattice, theta: &[f64], beta: f64) -> f64 {
    let d = lat.dim();
    let mut s = 0.0;
    for x in 0..lat.volume() {
        for mu in 0..d {
            for nu in mu + 1..d {
                let p = theta[x * d + mu] + theta[lat.fwd(x, mu) * d + nu]
                    - theta[lat.fwd(x, nu) * d + mu]
                    - theta[x * d + nu];
                s -= beta * p.cos();
            }
        }
    }
    s
}

/// The R×T loop by walking it link by link, averaged like [`Kernel::wilson_loop`].
fn naive_wilson_loop(lat: &Lattice, theta: &[f64], r: usize, t: usize) -> f64 {
    let d = lat.dim();
    let (mut sum, mut count) = (0.0, 0.0);
    for mu in 0..d {
        for nu in mu + 1..d {
            for x0 in 0..lat.volume() {
                let mut x = x0;
                let mut phase = 0.0;
                for _ in 0..r {
                    phase += theta[x * d + mu];
                    x = lat.fwd(x, mu);
                }
                for _ in 0..t {
                    phase += theta[x * d + nu];
                    x = lat.fwd(x, nu);
                }
                for _ in 0..r {
                    x = lat.bwd(x, mu);
                    phase -= theta[x * d + mu];
                }
                for _ in 0..t {
                    x = lat.bwd(x, nu);
                    phase -= theta[x * d + nu];
                }
                assert_eq!(x, x0);
                sum += phase.cos();
                count += 1.0;
            }
        }
    }
    sum / count
}

/// A constant field strength F = 2πk/V on an L₀×L₁ torus with total flux 2πk:
/// θ₁(x₀, x₁) = F x₀, and θ₀(L₀−1, x₁) = −F L₀ x₁ on the last column (zero elsewhere). Every
/// plaquette is F, except the corner one, F − 2πk, which wraps to F.
fn constant_flux(l0: usize, l1: usize, k: i64) -> Vec<f64> {
    let f = TAU * k as f64 / (l0 * l1) as f64;
    let mut theta = vec![0.0; 2 * l0 * l1];
    for x0 in 0..l0 {
        for x1 in 0..l1 {
            let x = x0 * l1 + x1;
            theta[2 * x + 1] = f * x0 as f64;
            if x0 == l0 - 1 {
                theta[2 * x] = -f * (l0 * x1) as f64;
            }
        }
    }
    theta
}

#[test]
fn wrap_angle_maps_into_the_half_open_interval() {
    for (x, y) in [(PI, PI), (-PI, PI), (3.0 * PI, PI), (0.5, 0.5), (0.5 + 4.0 * TAU, 0.5), (-0.5 - 3.0 * TAU, -0.5)] {
        assert!((wrap_angle(x) - y).abs() < 1e-12, "wrap({x}) = {} ≠ {y}", wrap_angle(x));
    }
    for x in hot(1000, 9).iter().map(|a| 40.0 * a) {
        let w = wrap_angle(x);
        assert!(w > -PI && w <= PI && ((x - w) / TAU - ((x - w) / TAU).round()).abs() < 1e-12, "{x} → {w}");
    }
    let inside = hot(100, 10);
    assert!(inside.iter().all(|&x| wrap_angle(x).to_bits() == x.to_bits()), "not the identity on (−π, π]");
}

#[test]
fn action_matches_definition_in_2_to_4_dimensions() {
    for shape in [vec![4, 6], vec![3, 4, 2], vec![2, 3, 4, 2]] {
        let lat = lattice(&shape);
        let k = Kernel::new(&lat);
        let theta: Vec<f64> = hot(k.n_links(), 1).iter().map(|a| 3.0 * a).collect();
        let (a, b) = (k.action(&theta, 1.7), naive_action(&lat, &theta, 1.7));
        assert!((a - b).abs() < 1e-12 * b.abs().max(1.0), "{shape:?}: {a} vs {b}");
        let mut g = vec![0.0; k.n_links()];
        let c = k.action_and_gradient(&theta, 1.7, &mut g);
        assert!((c - b).abs() < 1e-12 * b.abs().max(1.0));
        let d = lat.dim();
        assert_eq!(k.n_plaquettes(), lat.volume() * d * (d - 1) / 2);
    }
}

/// The gradient (the HMC force, and what flows train against) against the 4-point central
/// difference dS(θ + εv)/dε = ⟨∇S, v⟩ along random directions, in 2D and 3D.
#[test]
fn gradient_matches_finite_differences() {
    for shape in [vec![6, 5], vec![4, 3, 5]] {
        let lat = lattice(&shape);
        let k = Kernel::new(&lat);
        let n = k.n_links();
        let beta = 2.3;
        let theta = hot(n, 2);
        let mut g = vec![0.0; n];
        k.gradient(&theta, beta, &mut g);
        let mut g2 = vec![0.0; n];
        k.action_and_gradient(&theta, beta, &mut g2);
        assert_eq!(g, g2, "action_and_gradient's gradient differs");
        for seed in 0..5 {
            let dir = hot(n, 100 + seed);
            let eps = 1e-3;
            let s = |e: f64| -> f64 {
                let shifted: Vec<f64> = theta.iter().zip(&dir).map(|(t, v)| t + e * v).collect();
                k.action(&shifted, beta)
            };
            let fd = (8.0 * (s(eps) - s(-eps)) - (s(2.0 * eps) - s(-2.0 * eps))) / (12.0 * eps);
            let an: f64 = g.iter().zip(&dir).map(|(a, b)| a * b).sum();
            assert!((fd - an).abs() < RTOL_FD * an.abs().max(1.0), "{shape:?} seed {seed}: fd {fd} vs {an}");
        }
        // and one link at a time
        for l in [0, n / 3, n - 1] {
            let s = |e: f64| {
                let mut t = theta.clone();
                t[l] += e;
                k.action(&t, beta)
            };
            let eps = 1e-3;
            let fd = (8.0 * (s(eps) - s(-eps)) - (s(2.0 * eps) - s(-2.0 * eps))) / (12.0 * eps);
            assert!((fd - g[l]).abs() < RTOL_FD * g[l].abs().max(1.0), "{shape:?} link {l}: fd {fd} vs {}", g[l]);
        }
    }
}

#[test]
fn action_grad_through_the_abi() {
    let t = theory(r#"{"lattice": [4, 4], "beta": 1.5}"#);
    let batch = hot(3 * 32, 3);
    let ag = t.action_grad(RSlice::from(&batch[..])).into_result().unwrap();
    let s = t.action(RSlice::from(&batch[..])).into_result().unwrap();
    assert_eq!((ag.actions.len(), ag.grad.len()), (3, 96));
    for c in 0..3 {
        let cfg = &batch[32 * c..32 * (c + 1)];
        assert!((ag.actions[c] - s[c]).abs() < 1e-12 * s[c].abs().max(1.0));
        let mut g = vec![0.0; 32];
        t.kernel().gradient(cfg, 1.5, &mut g);
        assert_eq!(&ag.grad[32 * c..32 * (c + 1)], &g[..]);
    }
    assert!(t.action(RSlice::from(&batch[..31])).into_result().is_err());
}

/// S and every observable are invariant under θ_μ(x) → θ_μ(x) + α(x) − α(x+μ̂), and the
/// gradient is too (the action depends on θ only through the plaquettes).
#[test]
fn gauge_invariance_of_action_gradient_and_observables() {
    for (json, seed) in [
        (r#"{"lattice": [6, 8], "beta": 2.0, "wilson_loops": [[1, 1], [2, 2], [3, 2], [6, 1]]}"#, 4),
        (r#"{"lattice": [4, 3, 5], "beta": 1.0, "wilson_loops": [[1, 1], [2, 3]]}"#, 5),
        (r#"{"lattice": [3, 3, 3, 3], "beta": 0.5}"#, 6),
    ] {
        let t = theory(json);
        let theta = hot(t.kernel().n_links(), seed);
        // near-cold links (plaquettes far from ±π, so the wrap in Q cannot flip) and hot ones
        let cool: Vec<f64> = theta.iter().map(|a| 0.2 * a).collect();
        for cfg in [theta, cool] {
            let alpha: Vec<f64> = hot(t.lattice().volume(), seed + 50).iter().map(|a| 10.0 * a).collect();
            let gt = gauge_transform(t.lattice(), &cfg, &alpha);
            assert!(gt.iter().zip(&cfg).any(|(a, b)| (a - b).abs() > 0.1), "the gauge transformation did nothing");
            let both = [cfg.clone(), gt].concat();
            let s = t.action(RSlice::from(&both[..])).into_result().unwrap();
            assert!((s[0] - s[1]).abs() < ATOL_GAUGE * s[0].abs().max(1.0), "{json}: S {} vs {}", s[0], s[1]);
            let o = t.measure(RSlice::from(&both[..])).into_result().unwrap();
            let names = t.observables();
            let m = names.len();
            assert_eq!(o.len(), 2 * m);
            for (i, spec) in names.iter().enumerate() {
                assert!((o[i] - o[m + i]).abs() < ATOL_GAUGE, "{json}: {} {} vs {}", spec.name, o[i], o[m + i]);
            }
            let ag = t.action_grad(RSlice::from(&both[..])).into_result().unwrap();
            let n = cfg.len();
            for l in 0..n {
                assert!((ag.grad[l] - ag.grad[n + l]).abs() < 1e-11, "{json}: gradient of link {l}");
            }
        }
    }
}

#[test]
fn topological_charge_is_an_integer_on_hot_configurations() {
    let k = Kernel::new(&lattice(&[8, 6]));
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let theta = hot(k.n_links(), 1000 + seed);
        let q = k.topological_charge_raw(&theta).unwrap();
        assert!((q - q.round()).abs() < ATOL_Q, "seed {seed}: Q = {q}");
        seen.insert(q.round() as i64);
        // any representative of the angles gives the same Q
        let shifted: Vec<f64> = theta.iter().enumerate().map(|(i, a)| a + TAU * ((i % 7) as f64 - 3.0)).collect();
        let q2 = k.topological_charge_raw(&shifted).unwrap();
        assert!((q2 - q).abs() < ATOL_Q, "seed {seed}: {q2} vs {q}");
    }
    assert!(seen.len() >= 3, "hot configurations should have several charges, got {seen:?}");
    assert!(Kernel::new(&lattice(&[4, 4, 4])).topological_charge_raw(&hot(192, 1)).is_none());
}

/// The constant-flux configuration with total flux 2πk has Q = k, plaquette cos(2πk/V), and an
/// R×T Wilson loop cos(F·R·T) (docs/reference.md §3 convention: Q = (1/2π) Σ_P wrap(θ_P)).
#[test]
fn constant_flux_configuration_has_the_given_charge() {
    let (l0, l1) = (6usize, 8usize);
    let t = theory(r#"{"lattice": [6, 8], "beta": 2.0, "wilson_loops": [[1, 1], [2, 2], [3, 2]]}"#);
    let v = (l0 * l1) as f64;
    let names: Vec<String> = t.observables().iter().map(|s| s.name.to_string()).collect();
    assert_eq!(
        names,
        [
            "plaquette",
            "action_density",
            "topological_charge",
            "topological_susceptibility",
            "wilson_loop_1x1",
            "wilson_loop_2x2",
            "wilson_loop_3x2"
        ]
    );
    for k in -3i64..=3 {
        let theta = constant_flux(l0, l1, k);
        let f = TAU * k as f64 / v;
        let q = t.kernel().topological_charge_raw(&theta).unwrap();
        assert!((q - k as f64).abs() < ATOL_Q, "k = {k}: Q = {q}");
        let o = t.measure(RSlice::from(&theta[..])).into_result().unwrap();
        let expect = [f.cos(), -2.0 * f.cos(), k as f64, (k * k) as f64 / v, f.cos(), (4.0 * f).cos(), (6.0 * f).cos()];
        for ((name, a), b) in names.iter().zip(o.iter()).zip(expect) {
            assert!((a - b).abs() < 1e-12, "k = {k}: {name} = {a}, expected {b}");
        }
    }
}

#[test]
fn wilson_loops_match_a_walk_around_the_loop() {
    for (shape, loops) in [(vec![6, 8], vec![(1, 1), (2, 3), (6, 8)]), (vec![4, 3, 5], vec![(1, 1), (2, 3), (4, 1)])] {
        let lat = lattice(&shape);
        let k = Kernel::new(&lat);
        let theta: Vec<f64> = hot(k.n_links(), 7).iter().map(|a| 0.4 * a).collect();
        for (r, t) in loops {
            let (a, b) = (k.wilson_loop(&theta, r, t), naive_wilson_loop(&lat, &theta, r, t));
            assert!((a - b).abs() < 1e-13, "{shape:?} {r}x{t}: {a} vs {b}");
        }
        // the 1×1 loop is the plaquette
        let mut o = Vec::new();
        k.observables(&theta, 1.0, &[(1, 1)], &mut o);
        assert!((o[0] - o[o.len() - 1]).abs() < 1e-14);
    }
}

#[test]
fn cold_and_hot_starts() {
    let t = theory(r#"{"lattice": [8, 8, 8], "beta": 1.0}"#);
    let mut rng = Stream::new(1, 2).state();
    let cold = t.initial(Start::Cold, &mut rng).into_result().unwrap();
    assert_eq!(cold.len(), 1536);
    assert!(cold.iter().all(|&x| x == 0.0));
    let o = t.measure(RSlice::from(&cold[..])).into_result().unwrap();
    // plaquette 1, S/V = −β d(d−1)/2 = −3, W = 1
    assert_eq!(&o[..], &[1.0, -3.0, 1.0, 1.0]);
    let before = rng;
    let h = t.initial(Start::Hot, &mut rng).into_result().unwrap();
    assert_ne!(rng, before, "the hot start did not advance the stream");
    assert!(h.iter().all(|&x| x > -PI && x <= PI));
    let mean = h.iter().sum::<f64>() / h.len() as f64;
    let var = h.iter().map(|x| x * x).sum::<f64>() / h.len() as f64;
    // uniform on (−π, π]: mean 0 ± π/√(3n), variance π²/3
    assert!(mean.abs() < 4.0 * PI / (3.0 * h.len() as f64).sqrt(), "{mean}");
    // … and variance π²/3 ± 0.075
    assert!((var - PI * PI / 3.0).abs() < 0.3, "{var}");
    let mut rng2 = before;
    assert_eq!(t.initial(Start::Hot, &mut rng2).into_result().unwrap(), h);
}

/// Forward, flip the momenta, backward: the same angles (mod 2π) and minus the momenta.
#[test]
fn hmc_integration_is_reversible() {
    for (shape, kind) in [
        (vec![8, 8], IntegratorKind::Leapfrog),
        (vec![8, 8], IntegratorKind::Omelyan2),
        (vec![4, 4, 4], IntegratorKind::Omelyan4),
    ] {
        let lat = lattice(&shape);
        let k = Kernel::new(&lat);
        let act = LeveledAction::single(Box::new(WilsonAction { kernel: &k, beta: 2.0 }));
        let space = Angles { len: k.n_links() };
        let sched = Schedule::from_params(&params(kind, 9), 1).unwrap();
        let mut rng = Stream::new(5, 0);
        let u0 = hot(k.n_links(), 11);
        let p0 = space.sample_momentum(&u0, &mut rng);
        let (mut u, mut p) = (u0.clone(), p0.clone());
        let mut buf = space.zero_momentum();
        integrate(&space, &act, &mut u, &mut p, &sched, &mut buf).unwrap();
        assert!(u.iter().all(|&x| x > -PI && x <= PI), "angles not wrapped after a trajectory");
        assert!(u.iter().zip(&u0).map(|(a, b)| wrap_angle(a - b).abs()).fold(0.0, f64::max) > 0.1);
        p.iter_mut().for_each(|x| *x = -*x);
        integrate(&space, &act, &mut u, &mut p, &sched, &mut buf).unwrap();
        for (a, b) in u.iter().zip(&u0) {
            assert!(wrap_angle(a - b).abs() < 1e-10, "{shape:?} {kind:?}: {a} vs {b}");
        }
        for (a, b) in p.iter().zip(&p0) {
            assert!((a + b).abs() < 1e-10, "{shape:?} {kind:?}: momentum {a} vs {b}");
        }
    }
}

/// ΔH of one leapfrog trajectory scales as h²: log₂ of |ΔH(n)|/|ΔH(2n)| is 2.
#[test]
fn leapfrog_delta_h_scales_as_step_squared() {
    let t = theory(r#"{"lattice": [8, 8], "beta": 2.0}"#);
    let k = t.kernel();
    let act = LeveledAction::single(Box::new(WilsonAction { kernel: k, beta: 2.0 }));
    let space = Angles { len: k.n_links() };
    // a thermalised configuration (so that ΔH is dominated by the integration error, not by a
    // relaxation from an atypical start)
    let mut rng = Stream::new(8, 0);
    let mut theta = hot(k.n_links(), 12);
    t.hmc_vec(&mut theta, &params(IntegratorKind::Omelyan2, 10), 50, &mut rng).unwrap();
    let delta_h = |steps: u32| -> f64 {
        let mut rng = Stream::new(9, 0);
        let mut total = 0.0;
        for _ in 0..4 {
            let mut u = theta.clone();
            let mut p = space.sample_momentum(&u, &mut rng);
            let h0 = space.kinetic(&p) + act.action(&u).unwrap();
            let sched = Schedule::from_params(&params(IntegratorKind::Leapfrog, steps), 1).unwrap();
            integrate(&space, &act, &mut u, &mut p, &sched, &mut space.zero_momentum()).unwrap();
            total += (space.kinetic(&p) + act.action(&u).unwrap() - h0).abs();
        }
        total
    };
    for n in [20, 40] {
        let order = (delta_h(n) / delta_h(2 * n)).log2();
        assert!((order - 2.0).abs() < 0.2, "leapfrog order {order} at {n} steps");
    }
}

#[test]
fn hmc_runs_samples_and_refuses_nested_time_scales() {
    let mut t = theory(r#"{"lattice": [6, 6], "beta": 1.0}"#);
    let mut rng = Stream::new(3, 1).state();
    let mut theta = t.initial(Start::Hot, &mut rng).into_result().unwrap();
    let recs = t
        .hmc(RSliceMut::from(&mut theta[..]), &params(IntegratorKind::Omelyan2, 6), 20, &mut rng)
        .into_result()
        .unwrap();
    assert_eq!(recs.len(), 20);
    let acc = recs.iter().filter(|r| r.accepted).count();
    assert!(acc >= 15, "acceptance {acc}/20");
    let s = t.action(RSlice::from(&theta[..])).into_result().unwrap();
    assert!((recs[19].action - s[0]).abs() < 1e-12 * s[0].abs());
    assert!(theta.iter().all(|&x| x > -PI && x <= PI));
    let mut nested = params(IntegratorKind::Omelyan2, 6);
    nested.inner_steps = RVec::from(vec![2]);
    let e = t.hmc(RSliceMut::from(&mut theta[..]), &nested, 1, &mut rng).into_result().unwrap_err();
    assert!(e.message.contains("level"), "{}", e.message);
    let mut bad = theta.to_vec();
    bad[5] = f64::INFINITY;
    let e = t
        .hmc(RSliceMut::from(&mut bad[..]), &params(IntegratorKind::Leapfrog, 5), 1, &mut rng)
        .into_result()
        .unwrap_err();
    assert!(e.message.contains("configuration[5]"), "{}", e.message);
}

#[test]
fn results_do_not_depend_on_thread_count() {
    // 96×96 = 9216 sites is above the parallel threshold
    let json = r#"{"lattice": [96, 96], "beta": 3.0}"#;
    let run = |threads: u32| {
        let mut t = theory(json);
        t.set_threads(threads).into_result().unwrap();
        let mut rng = Stream::new(7, 1).state();
        let mut theta = t.initial(Start::Hot, &mut rng).into_result().unwrap();
        let recs = t
            .hmc(RSliceMut::from(&mut theta[..]), &params(IntegratorKind::Omelyan2, 8), 2, &mut rng)
            .into_result()
            .unwrap();
        let ag = t.action_grad(RSlice::from(&theta[..])).into_result().unwrap();
        let o = t.measure(RSlice::from(&theta[..])).into_result().unwrap();
        (theta, recs, ag, o, rng)
    };
    let (t1, r1, a1, o1, g1) = run(1);
    let (t2, r2, a2, o2, g2) = run(2);
    assert!(t1.iter().zip(&t2).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_eq!(r1, r2);
    assert!(a1.grad.iter().zip(a2.grad.iter()).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_eq!(a1.actions[0].to_bits(), a2.actions[0].to_bits());
    assert!(o1.iter().zip(o2.iter()).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_eq!(g1, g2);
}

#[test]
fn bad_configs_name_the_key() {
    let cases = [
        (r#"{"lattice": [8, 8], "beta": -1.0}"#, "beta: must be ≥ 0"),
        (r#"{"lattice": [1, 8], "beta": 1.0}"#, "lattice"),
        (r#"{"lattice": [8], "beta": 1.0}"#, "at least 2 dimensions"),
        (r#"{"lattice": [8, 8]}"#, "beta"),
        (r#"{"lattice": [8, 8], "beta": "x"}"#, "beta"),
        (r#"{"lattice": [8, 8], "beta": 1.0, "wilson_loops": [[0, 1]]}"#, "wilson_loops[0]"),
        (r#"{"lattice": [8, 8], "beta": 1.0, "wilson_loops": [[1, 1], [9, 1]]}"#, "wilson_loops[1]"),
        (r#"{"lattice": [8, 4], "beta": 1.0, "wilson_loops": [[2, 5]]}"#, "does not fit"),
        (r#"{"lattice": [8, 8], "beta": 1.0, "wilson_loops": [[2, 2], [2, 2]]}"#, "twice"),
        (r#"{"lattice": [8, 8], "beta": 1.0, "wilson_loops": [[2]]}"#, "wilson_loops[0]"),
        (r#"{"lattice": [8, 8], "beta": 1.0, "betta": 2.0}"#, "betta"),
    ];
    for (json, key) in cases {
        let e = U1::from_config(json).err().unwrap_or_else(|| panic!("accepted {json}"));
        assert!(e.message.contains(key), "{json}: {}", e.message);
    }
    // β = 0 (Haar measure) and an empty loop list are fine
    let t = theory(r#"{"lattice": [4, 4], "beta": 0.0, "wilson_loops": []}"#);
    assert_eq!(t.observables().len(), 4);
    // NaN cannot be written in JSON; check it through set_parameter
    let mut t = theory(r#"{"lattice": [4, 4], "beta": 1.0}"#);
    let e = t.set_parameter("beta".into(), f64::NAN).into_result().unwrap_err();
    assert!(e.message.contains("beta") && e.message.contains("finite"), "{}", e.message);
    assert!(t.set_parameter("beta".into(), f64::INFINITY).into_result().is_err());
    assert!(t.set_parameter("beta".into(), -1.0).into_result().unwrap_err().message.contains("≥ 0"));
    assert!(t.set_parameter("lambda".into(), 1.0).into_result().is_err());
    assert!(t.parameter("m2".into()).into_result().is_err());
    assert_eq!(t.parameter("beta".into()).into_result().unwrap(), 1.0);
    t.set_parameter("beta".into(), 2.5).into_result().unwrap();
    assert_eq!(t.parameter("beta".into()).into_result().unwrap(), 2.5);
    let theta = hot(32, 1);
    let s = t.action(RSlice::from(&theta[..])).into_result().unwrap()[0];
    assert!((s - t.kernel().action(&theta, 2.5)).abs() < 1e-12 * s.abs());
}

#[test]
fn layout_and_params() {
    let t = theory(r#"{"lattice": [4, 6, 2], "beta": 1.25}"#);
    let l = t.layout();
    assert_eq!(l.config_len(), 4 * 6 * 2 * 3);
    assert_eq!(l.components[0].support, Support::Link);
    assert_eq!(l.components[0].element, ElementKind::Angle);
    let p: serde_json::Value = serde_json::from_str(&t.params_json()).unwrap();
    assert_eq!(p["beta"], 1.25);
    assert_eq!(p["wilson_loops"], serde_json::json!([[1, 1], [2, 2]]));
    // no topological observables in d ≠ 2
    let names: Vec<String> = t.observables().iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names, ["plaquette", "action_density", "wilson_loop_1x1", "wilson_loop_2x2"]);
}

// The generic contract checks of latflow_core::testkit.

const CARD: &str = r#"{"lattice": [4, 3], "beta": 1.7, "wilson_loops": [[1, 1], [2, 2]]}"#;
const CARD_3D: &str = r#"{"lattice": [3, 3, 2], "beta": 0.9}"#;

#[test]
fn contract_force() {
    testkit::check_force::<U1>(CARD, &HmcParams::default());
    testkit::check_force::<U1>(CARD_3D, &HmcParams::default());
}

#[test]
fn contract_gauge_invariance() {
    testkit::check_gauge_invariance::<U1>(CARD);
    testkit::check_gauge_invariance::<U1>(CARD_3D);
}

#[test]
fn contract_observables() {
    testkit::check_observables::<U1>(CARD);
}

#[test]
fn contract_reversibility() {
    testkit::check_reversibility::<U1>(CARD_3D, &params(IntegratorKind::Omelyan4, 7));
    testkit::check_reversibility::<U1>(CARD, &params(IntegratorKind::ForceGradient, 5));
}

#[test]
fn contract_exp_minus_delta_h() {
    testkit::check_exp_minus_delta_h::<U1>(CARD, &params(IntegratorKind::Leapfrog, 6), 4000);
}

#[test]
fn contract_adapter() {
    testkit::check_adapter::<U1>(CARD, &HmcParams::default());
}

/// The defect's action straight from the definition: −β Σ_P w_P cos θ_P, w_P = `w` on the
/// plaquettes of sites in the box `extent`.
fn naive_defect_action(lat: &Lattice, theta: &[f64], beta: f64, extent: &[usize], w: f64) -> f64 {
    let d = lat.dim();
    let mut s = 0.0;
    for x in 0..lat.volume() {
        let inside = lat.coords(x).iter().zip(extent).all(|(c, e)| c < e);
        for mu in 0..d {
            for nu in mu + 1..d {
                let p = theta[x * d + mu] + theta[lat.fwd(x, mu) * d + nu]
                    - theta[lat.fwd(x, nu) * d + mu]
                    - theta[x * d + nu];
                s -= beta * if inside { w } else { 1.0 } * p.cos();
            }
        }
    }
    s
}

/// A defect box: the action is the weighted definition, the gradient matches finite differences,
/// both are gauge invariant, and at w = 1 they are the plain theory's bits.
#[test]
fn defect_action_force_and_gauge_invariance() {
    for (shape, extent) in [(vec![6, 5], vec![1, 1]), (vec![6, 5], vec![2, 3]), (vec![4, 3, 5], vec![2, 1, 2])] {
        let lat = lattice(&shape);
        let plain = Kernel::new(&lat);
        let mut k = Kernel::new(&lat);
        k.set_defect_box(&extent);
        let n = k.n_links();
        let (beta, theta) = (2.3, hot(n, 7));
        let (mut g0, mut g1) = (vec![0.0; n], vec![0.0; n]);
        plain.gradient(&theta, beta, &mut g0);
        k.gradient(&theta, beta, &mut g1);
        assert_eq!(g0, g1, "{shape:?}: the gradient at w = 1 is not the plain one");
        assert_eq!(plain.action(&theta, beta).to_bits(), k.action(&theta, beta).to_bits());
        for w in [0.0, 0.37, 1.8] {
            k.set_defect_coupling(w);
            let s = k.action(&theta, beta);
            let naive = naive_defect_action(&lat, &theta, beta, &extent, w);
            assert!((s - naive).abs() < 1e-12 * naive.abs(), "{shape:?} w {w}: {s} vs {naive}");
            let mut g = vec![0.0; n];
            let s2 = k.action_and_gradient(&theta, beta, &mut g);
            assert_eq!(s.to_bits(), s2.to_bits());
            let mut g2 = vec![0.0; n];
            k.gradient(&theta, beta, &mut g2);
            assert_eq!(g, g2);
            for seed in 0..3 {
                let dir = hot(n, 200 + seed);
                let eps = 1e-3;
                let at = |e: f64| {
                    let shifted: Vec<f64> = theta.iter().zip(&dir).map(|(t, v)| t + e * v).collect();
                    k.action(&shifted, beta)
                };
                let fd = (8.0 * (at(eps) - at(-eps)) - (at(2.0 * eps) - at(-2.0 * eps))) / (12.0 * eps);
                let an: f64 = g.iter().zip(&dir).map(|(a, b)| a * b).sum();
                assert!((fd - an).abs() < RTOL_FD * an.abs().max(1.0), "{shape:?} w {w}: fd {fd} vs {an}");
            }
            let alpha: Vec<f64> = hot(lat.volume(), 9).iter().map(|a| 10.0 * a).collect();
            let gt = gauge_transform(&lat, &theta, &alpha);
            let sg = k.action(&gt, beta);
            assert!((s - sg).abs() < ATOL_GAUGE * s.abs(), "{shape:?} w {w}: S {s} vs {sg}");
            let mut gg = vec![0.0; n];
            k.gradient(&gt, beta, &mut gg);
            assert!(g.iter().zip(&gg).all(|(a, b)| (a - b).abs() < 1e-11), "{shape:?} w {w}: gradient not invariant");
        }
    }
}

/// `defect_coupling` as a parameter and card key: present only with a defect box, 1 by default, finite and ≥ 0; the
/// measured action density follows it; bad boxes name the key.
/// `defect_sites` listing the sites of a box is the same defect as the box.
#[test]
fn defect_sites_equal_the_box_they_list() {
    let boxed = theory(r#"{"lattice": [4, 6], "beta": 1.5, "defect": [2, 3], "defect_coupling": 0.3}"#);
    let listed = theory(
        r#"{"lattice": [4, 6], "beta": 1.5, "defect_sites": [[1, 2], [0, 0], [1, 0], [0, 1], [0, 2], [1, 1]], "defect_coupling": 0.3}"#,
    );
    assert_eq!(boxed.physics().kernel().defect(), listed.physics().kernel().defect());
}

#[test]
fn defect_parameter_and_bad_boxes() {
    let mut t = theory(r#"{"lattice": [4, 4], "beta": 1.5, "defect": [1, 2]}"#);
    assert_eq!(t.parameter("defect_coupling".into()).into_result().unwrap(), 1.0);
    let theta = hot(32, 4);
    let s1 = t.action(RSlice::from(&theta[..])).into_result().unwrap()[0];
    t.set_parameter("defect_coupling".into(), 0.25).into_result().unwrap();
    assert_eq!(t.parameter("defect_coupling".into()).into_result().unwrap(), 0.25);
    let s = t.action(RSlice::from(&theta[..])).into_result().unwrap()[0];
    let naive = naive_defect_action(t.lattice(), &theta, 1.5, &[1, 2], 0.25);
    assert!((s - naive).abs() < 1e-12 * naive.abs() && (s - s1).abs() > 1e-6);
    let o = t.measure(RSlice::from(&theta[..])).into_result().unwrap();
    assert!((o[1] - s / 16.0).abs() < 1e-12, "action_density {} vs S/V {}", o[1], s / 16.0);
    for bad in [-0.1, f64::NAN, f64::INFINITY] {
        let e = t.set_parameter("defect_coupling".into(), bad).into_result().unwrap_err();
        assert!(e.message.contains("defect_coupling"), "{}", e.message);
    }
    assert_eq!(t.parameter("defect_coupling".into()).into_result().unwrap(), 0.25, "a refused value changed the defect");
    let p: serde_json::Value = serde_json::from_str(&t.params_json()).unwrap();
    assert_eq!((p["defect_coupling"].as_f64(), p["defect_plaquettes"].as_u64()), (Some(0.25), Some(2)));
    // without a defect box the parameter does not exist, and the message says how to declare it
    let mut plain = theory(r#"{"lattice": [4, 4], "beta": 1.5}"#);
    let e = plain.parameter("defect_coupling".into()).into_result().unwrap_err();
    assert!(e.message.contains("defect = ["), "{}", e.message);
    assert!(plain.set_parameter("defect_coupling".into(), 0.0).into_result().is_err());
    for (json, key) in [
        (r#"{"lattice": [4, 4], "beta": 1.0, "defect": [1]}"#, "one extent per axis"),
        (r#"{"lattice": [4, 4], "beta": 1.0, "defect": [0, 1]}"#, "defect[0]"),
        (r#"{"lattice": [4, 4], "beta": 1.0, "defect": [1, 5]}"#, "defect[1]"),
        (r#"{"lattice": [4, 4], "beta": 1.0, "defect": 2}"#, "defect"),
        (r#"{"lattice": [4, 4], "beta": 1.0, "defect_coupling": 0.5}"#, "needs a defect box"),
        (r#"{"lattice": [4, 4], "beta": 1.0, "defect_sites": []}"#, "defect_sites: needs at least one"),
        (r#"{"lattice": [4, 4], "beta": 1.0, "defect_sites": [[0]]}"#, "defect_sites[0]: needs one coordinate per axis"),
        (r#"{"lattice": [4, 4], "beta": 1.0, "defect_sites": [[0, 0], [1, 4]]}"#, "defect_sites[1][1]"),
        (r#"{"lattice": [4, 4], "beta": 1.0, "defect_sites": [[0, 0], [1, -1]]}"#, "defect_sites[1][1]"),
        (r#"{"lattice": [4, 4], "beta": 1.0, "defect_sites": [[2, 1], [2, 1]]}"#, "listed twice"),
        (r#"{"lattice": [4, 4], "beta": 1.0, "defect": [1, 1], "defect_sites": [[2, 1]]}"#, "not both"),
        (r#"{"lattice": [4, 4], "beta": 1.0, "defect": [1, 1], "defect_coupling": -0.5}"#, "defect_coupling: must be finite"),
    ] {
        let e = U1::from_config(json).err().unwrap_or_else(|| panic!("accepted {json}"));
        assert!(e.message.contains(key), "{json}: {}", e.message);
    }
    // the card key sets the starting value
    let t = theory(r#"{"lattice": [4, 4], "beta": 1.5, "defect": [1, 2], "defect_coupling": 0.25}"#);
    assert_eq!(t.parameter("defect_coupling".into()).into_result().unwrap(), 0.25);
    assert_eq!(t.action(RSlice::from(&theta[..])).into_result().unwrap()[0], s);
}
