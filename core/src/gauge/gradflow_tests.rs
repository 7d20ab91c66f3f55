//! Tests of the gradient flow: gauge covariance, monotonicity, the RK3 order, the generator
//! against finite differences of the flow action, exact clover values on constant abelian
//! fields, topological charges, adaptive steps, thread-count independence, scale setting and
//! bad input.

use super::*;
use crate::gauge::field::{gauge_transform, plaquette_sum, rectangle_sum};
use crate::gauge::{Complex, Su2, Su3};
use crate::lattice::Lattice;
use crate::rng::Stream;

fn lattice(extents: &[i64]) -> Lattice {
    Lattice::new(extents).unwrap()
}

fn hot<G: FlowGroup>(lat: &Lattice, seed: u64) -> Vec<G> {
    let mut rng = Stream::new(seed, 0);
    (0..lat.volume() * lat.dim())
        .map(|_| G::random(&mut rng))
        .collect()
}

/// Links exp(amp · X) with X a Gaussian algebra element: a smooth field for small amp.
fn near_identity<G: FlowGroup>(lat: &Lattice, amp: f64, seed: u64) -> Vec<G> {
    let mut rng = Stream::new(seed, 1);
    (0..lat.volume() * lat.dim())
        .map(|_| G::exp(&G::Algebra::gaussian(&mut rng).scale(amp)))
        .collect()
}

fn max_distance<G: FlowGroup>(a: &[G], b: &[G]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| G::max_entry_distance(x, y))
        .fold(0.0, f64::max)
}

fn opts(eps: f64) -> FlowOptions {
    FlowOptions {
        eps,
        ..FlowOptions::default()
    }
}

fn covariance<G: FlowGroup>(extents: &[i64], scheme: FlowScheme, seed: u64) {
    let lat = lattice(extents);
    let u0: Vec<G> = near_identity(&lat, 0.8, seed);
    let mut rng = Stream::new(seed, 9);
    let g: Vec<G> = (0..lat.volume()).map(|_| G::random(&mut rng)).collect();
    let o = FlowOptions {
        eps: 0.05,
        scheme,
        adaptive: None,
    };
    let mut flowed = u0.clone();
    flow_to(&lat, &mut flowed, 0.6, &o).unwrap();
    let mut transformed = u0.clone();
    gauge_transform(&lat, &mut transformed, &g);
    let before = (measure(&lat, &u0, 0.0), measure(&lat, &transformed, 0.0));
    flow_to(&lat, &mut transformed, 0.6, &o).unwrap();
    let mut expected = flowed.clone();
    gauge_transform(&lat, &mut expected, &g);
    let dist = max_distance(&transformed, &expected);
    assert!(
        dist < 1e-12,
        "{extents:?} {scheme:?}: flow is not gauge covariant: {dist:e}"
    );
    let after = (
        measure(&lat, &flowed, 0.6),
        measure(&lat, &transformed, 0.6),
    );
    for (a, b) in [before, after] {
        assert!(
            (a.e_clover - b.e_clover).abs() < 1e-12,
            "E: {} vs {}",
            a.e_clover,
            b.e_clover
        );
        assert!(
            (a.e_plaq - b.e_plaq).abs() < 1e-12,
            "E_plaq: {} vs {}",
            a.e_plaq,
            b.e_plaq
        );
        match (a.q, b.q) {
            (Some(qa), Some(qb)) => assert!((qa - qb).abs() < 1e-12, "Q: {qa} vs {qb}"),
            (None, None) => assert_ne!(extents.len(), 4),
            _ => panic!("Q present for one field only"),
        }
    }
    assert!(after.0.e_clover < before.0.e_clover);
}

#[test]
fn flow_is_gauge_covariant_and_e_q_are_invariant() {
    covariance::<Su3>(&[4, 4, 4, 4], FlowScheme::Wilson, 1);
    covariance::<Su2>(&[4, 4, 4, 4], FlowScheme::Wilson, 2);
    covariance::<Su2>(&[4, 6, 4], FlowScheme::Symanzik, 3);
    covariance::<Su3>(&[6, 4], FlowScheme::Symanzik, 4);
    covariance::<SuN<4>>(&[4, 4], FlowScheme::Wilson, 5);
}

/// 2 Σ_{x, μ<ν} Re Tr(1 − U_P) (c0) + 2 c1 Σ_{x, μ≠ν} Re Tr(1 − R): g0² times the flow action
/// summed over oriented loops.
fn g0sq_action<G: FlowGroup>(lat: &Lattice, u: &[G], scheme: FlowScheme) -> f64 {
    let (c0, c1) = scheme.coefficients();
    let d = lat.dim() as f64;
    let (v, nc) = (lat.volume() as f64, G::NC as f64);
    let plaq = v * d * (d - 1.0) / 2.0 * nc - plaquette_sum(lat, u);
    let rect = if c1 != 0.0 {
        v * d * (d - 1.0) * nc - rectangle_sum(lat, u)
    } else {
        0.0
    };
    2.0 * (c0 * plaq + c1 * rect)
}

fn generator_is_minus_gradient<G: FlowGroup>(scheme: FlowScheme) {
    let lat = lattice(&[4, 4, 4]);
    let u: Vec<G> = near_identity(&lat, 0.7, 11);
    let c = scheme.coefficients();
    let ng = G::Algebra::N_GEN;
    for (x, mu) in [(0, 0), (17, 1), (63, 2)] {
        let z = generator(&lat, &u, x, mu, c);
        let mut zc = vec![0.0; ng];
        z.write_coeffs(&mut zc);
        for a in 0..ng {
            let h = 1e-5;
            let mut e = vec![0.0; ng];
            e[a] = h;
            let shifted = |s: f64| {
                let mut w = u.clone();
                let l = &mut w[x * 3 + mu];
                *l = G::exp(&G::Algebra::from_coeffs(&e).scale(s)).mul(l);
                g0sq_action(&lat, &w, scheme)
            };
            let fd = -(shifted(1.0) - shifted(-1.0)) / (2.0 * h);
            assert!(
                (fd - zc[a]).abs() < 1e-7,
                "{scheme:?} link ({x},{mu}) a={a}: {fd} vs {}",
                zc[a]
            );
        }
    }
}

#[test]
fn generator_is_minus_the_lie_gradient_of_the_flow_action() {
    generator_is_minus_gradient::<Su2>(FlowScheme::Wilson);
    generator_is_minus_gradient::<Su3>(FlowScheme::Wilson);
    generator_is_minus_gradient::<Su3>(FlowScheme::Symanzik);
}

#[test]
fn energy_decreases_and_t2e_rises_monotonically() {
    let lat = lattice(&[4, 4, 4, 4]);
    // smooth fields: a hot field from flow time 0.5 on (flow_measurements flows it there
    // first), and a near-identity one. On a hot field the clover E rises up to t ≈ 0.35 (the
    // four leaves of a rough field largely cancel) while E_plaq, the flow action, falls.
    let times: Vec<f64> = (0..=40).map(|k| 0.5 + 0.05 * k as f64).collect();
    for (name, mut u) in [
        ("flowed hot SU(3)", hot::<Su3>(&lat, 21)),
        ("near-identity SU(3)", near_identity::<Su3>(&lat, 0.5, 22)),
    ] {
        let pts = flow_measurements(&lat, &mut u, &times, &opts(0.025)).unwrap();
        for w in pts.windows(2) {
            assert!(
                w[1].e_plaq < w[0].e_plaq,
                "{name}: E_plaq rises at t = {}",
                w[1].t
            );
            assert!(
                w[1].e_clover < w[0].e_clover,
                "{name}: E rises at t = {}",
                w[1].t
            );
            // t²E rises on a field with a scale (the flowed hot one); a near-identity field
            // has only short-wavelength modes, whose E decays faster than 1/t²
            if name.starts_with("flowed") {
                assert!(w[1].t2e > w[0].t2e, "{name}: t²E falls at t = {}", w[1].t);
            }
        }
    }
    // SU(2) with the Symanzik flow, while the flow radius √(8t) stays below L = 4 (beyond, the
    // field relaxes to a flat connection and E falls exponentially)
    let mut u = hot::<Su2>(&lat, 23);
    let pts = flow_measurements(
        &lat,
        &mut u,
        &times[..21],
        &FlowOptions {
            scheme: FlowScheme::Symanzik,
            ..opts(0.025)
        },
    )
    .unwrap();
    for w in pts.windows(2) {
        assert!(
            w[1].e_clover < w[0].e_clover && w[1].t2e > w[0].t2e,
            "SU(2) Symanzik at t = {}",
            w[1].t
        );
    }
}

/// Global errors at t = 1 for ε, ε/2, ε/4 against ε/64: (errors, ratios).
fn order_ratios<G: FlowGroup>(u0: &[G], lat: &Lattice, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let flowed = |e: f64| {
        let mut u = u0.to_vec();
        flow_to(lat, &mut u, 1.0, &opts(e)).unwrap();
        u
    };
    let reference = flowed(eps / 64.0);
    let errors: Vec<f64> = [eps, eps / 2.0, eps / 4.0]
        .iter()
        .map(|&e| max_distance(&flowed(e), &reference))
        .collect();
    let ratios = errors.windows(2).map(|w| w[0] / w[1]).collect();
    (errors, ratios)
}

#[test]
fn rk3_global_error_is_third_order() {
    let lat = lattice(&[4, 4, 4, 4]);
    let su3: Vec<Su3> = near_identity(&lat, 0.6, 31);
    let (e3, r3) = order_ratios(&su3, &lat, 0.125);
    let lat3 = lattice(&[6, 6, 6]);
    let mut su2: Vec<Su2> = hot(&lat3, 32);
    flow_to(&lat3, &mut su2, 0.25, &opts(0.005)).unwrap();
    let (e2, r2) = order_ratios(&su2, &lat3, 0.125);
    eprintln!("SU(3) 4^4 errors {e3:?} ratios {r3:?}; SU(2) 6^3 (hot, flowed to 0.25) errors {e2:?} ratios {r2:?}");
    for r in r3.iter().chain(&r2) {
        assert!(
            (r - 8.0).abs() < 0.8,
            "error ratio {r}, expected 8 (third order)"
        );
    }
}

#[test]
fn embedded_estimate_is_the_local_error_of_a_second_order_step() {
    // the adaptive distance of one step scales as ε³
    let lat = lattice(&[4, 4, 4, 4]);
    let u0: Vec<Su3> = near_identity(&lat, 0.6, 41);
    let dist = |h: f64| {
        let mut integ = Integrator::<Su3>::new(
            u0.len(),
            &FlowOptions {
                adaptive: Some(1.0),
                ..opts(h)
            },
        );
        let mut u = u0.clone();
        integ.step(&lat, &mut u, h)
    };
    let d: Vec<f64> = [0.04, 0.02, 0.01].iter().map(|&h| dist(h)).collect();
    eprintln!("embedded distances {d:?}");
    for w in d.windows(2) {
        assert!(
            (w[0] / w[1] - 8.0).abs() < 0.8,
            "distance ratio {}",
            w[0] / w[1]
        );
    }
}

#[test]
fn adaptive_flow_meets_its_tolerance() {
    let lat = lattice(&[4, 4, 4, 4]);
    let u0: Vec<Su3> = hot(&lat, 51);
    let mut reference = u0.clone();
    flow_to(&lat, &mut reference, 1.5, &opts(0.002)).unwrap();
    for tol in [1e-4, 1e-6] {
        let mut u = u0.clone();
        let stats = flow_to(
            &lat,
            &mut u,
            1.5,
            &FlowOptions {
                adaptive: Some(tol),
                ..opts(0.5)
            },
        )
        .unwrap();
        let err = max_distance(&u, &reference);
        eprintln!("tol {tol:e}: {stats:?}, global error {err:e}");
        assert_eq!(stats.t, 1.5);
        assert!(
            stats.rejected >= 1,
            "a first step of 0.5 on a hot field must be rejected"
        );
        // the global error stays within the summed local tolerances
        assert!(
            err < tol * stats.steps as f64,
            "tol {tol:e}: error {err:e} after {} steps",
            stats.steps
        );
        assert!(
            stats.max_eps > 2.0 * stats.min_eps,
            "steps adapt: {stats:?}"
        );
    }
    // measurement times are hit exactly and the step carries over
    let mut u = u0.clone();
    let pts = flow_measurements(
        &lat,
        &mut u,
        &[0.0, 0.3, 1.5],
        &FlowOptions {
            adaptive: Some(1e-6),
            ..opts(0.01)
        },
    )
    .unwrap();
    assert_eq!(
        pts.iter().map(|p| p.t).collect::<Vec<_>>(),
        vec![0.0, 0.3, 1.5]
    );
    assert!(max_distance(&u, &reference) < 1e-4);
}

/// The abelian constant field of the module docs: diag(e^{iθ}, e^{−iθ}, 1, …) with fluxes
/// 2π n01 through every (0, 1) plane and 2π n23 through every (2, 3) plane. Every plaquette
/// in the (0, 1) planes has angle f01 = 2π n01/(L0 L1), in the (2, 3) planes f23, others 0.
fn abelian<G: FlowGroup>(lat: &Lattice, n01: i64, n23: i64) -> (Vec<G>, f64, f64) {
    let l = lat.shape();
    let tau = std::f64::consts::TAU;
    let f01 = tau * n01 as f64 / (l[0] * l[1]) as f64;
    let f23 = tau * n23 as f64 / (l[2] * l[3]) as f64;
    let mut u = Vec::with_capacity(lat.volume() * 4);
    for x in 0..lat.volume() {
        let c = lat.coords(x);
        let mut theta = [0.0; 4];
        theta[1] = f01 * c[0] as f64;
        theta[3] = f23 * c[2] as f64;
        if c[0] == l[0] - 1 {
            theta[0] = -tau * n01 as f64 / l[1] as f64 * c[1] as f64;
        }
        if c[2] == l[2] - 1 {
            theta[2] = -tau * n23 as f64 / l[3] as f64 * c[3] as f64;
        }
        for th in theta {
            let mut reals = vec![0.0; G::REALS];
            let n = G::NC;
            for i in 0..n {
                let z = match i {
                    0 => Complex::cis(th),
                    1 => Complex::cis(-th),
                    _ => Complex::ONE,
                };
                reals[2 * (i * n + i)] = z.re;
                reals[2 * (i * n + i) + 1] = z.im;
            }
            u.push(G::from_reals(&reals));
        }
    }
    (u, f01, f23)
}

fn constant_field_values<G: FlowGroup>(n01: i64, n23: i64) {
    let lat = lattice(&[8, 8, 6, 6]);
    let (u, f01, f23) = abelian::<G>(&lat, n01, n23);
    let p = measure(&lat, &u, 0.0);
    // F01 = i sin f01 diag(1, −1, 0, …): E = 2(sin² f01 + sin² f23) exactly
    let (s01, s23) = (f01.sin(), f23.sin());
    let e_exact = 2.0 * (s01 * s01 + s23 * s23);
    assert!(
        (p.e_clover - e_exact).abs() < 1e-14,
        "E {} vs {e_exact}",
        p.e_clover
    );
    let e_plaq = 4.0 * (2.0 - f01.cos() - f23.cos());
    assert!(
        (p.e_plaq - e_plaq).abs() < 1e-14,
        "E_plaq {} vs {e_plaq}",
        p.e_plaq
    );
    // both approach the continuum 2(f01² + f23²) at O(f²)
    let e_cont = 2.0 * (f01 * f01 + f23 * f23);
    let f2 = f01 * f01 + f23 * f23;
    assert!(
        (p.e_clover / e_cont - 1.0).abs() < f2 / 2.0 && (p.e_plaq / e_cont - 1.0).abs() < f2 / 8.0
    );
    // Q = V sin f01 sin f23 / (2π²), → 2 n01 n23 as f → 0
    let q = p.q.unwrap();
    let q_exact = lat.volume() as f64 * s01 * s23 / (2.0 * PI * PI);
    assert!(
        (q - q_exact).abs() < 1e-12 * q_exact.abs(),
        "Q {q} vs {q_exact}"
    );
    let integer = (2 * n01 * n23) as f64;
    assert!(
        (q - integer).abs() < 0.02 * integer.abs(),
        "Q {q} vs {integer}"
    );
    // a constant field strength solves the flow equation: the flow leaves it unchanged
    let mut w = u.clone();
    flow_to(&lat, &mut w, 0.5, &opts(0.05)).unwrap();
    assert!(max_distance(&w, &u) < 1e-13);
}

#[test]
fn constant_abelian_fields_have_exact_energy_and_charge() {
    constant_field_values::<Su2>(1, 1);
    constant_field_values::<Su3>(1, -1);
    constant_field_values::<Su3>(2, 1);
    constant_field_values::<SuN<4>>(-1, -1);
}

fn perturbed_self_dual<G: FlowGroup>(l: i64, seed: u64) {
    // n01 = n23 = 1 on a symmetric torus is self-dual: the minimum of the action at Q = 2. Its
    // clover charge is Q_c = V sin² f / (2π²) = 2 (1 − f²/3 + …), f = 2π/L²: the integer up to
    // the O(a²) clover artefact 2f²/3.
    let lat = lattice(&[l, l, l, l]);
    let (mut u, f, _) = abelian::<G>(&lat, 1, 1);
    let mut rng = Stream::new(seed, 3);
    for link in u.iter_mut() {
        *link = G::exp(&G::Algebra::gaussian(&mut rng).scale(0.25)).mul(link);
    }
    let q_smooth = lat.volume() as f64 * f.sin().powi(2) / (2.0 * PI * PI);
    let artefact = 2.0 * f * f / 3.0;
    let times = [0.0, 0.5, 1.0, 2.0, 4.0];
    let pts = flow_measurements(
        &lat,
        &mut u,
        &times,
        &FlowOptions {
            adaptive: Some(1e-6),
            ..opts(0.02)
        },
    )
    .unwrap();
    let dist: Vec<f64> = pts.iter().map(|p| (p.q.unwrap() - 2.0).abs()).collect();
    eprintln!("L = {l}, seed {seed}: |Q(t) − 2| = {dist:?} (constant field: Q_c = {q_smooth})");
    assert!(dist[0] > 0.05, "the perturbation moves Q off the integer");
    assert!(
        (pts[4].q.unwrap() - q_smooth).abs() < 1e-3,
        "Q(4) = {} vs Q_c",
        pts[4].q.unwrap()
    );
    assert!(dist[4] < artefact + 1e-3, "Q(4) = {}", pts[4].q.unwrap());
    assert!(
        dist.windows(2).all(|w| w[1] <= w[0]),
        "|Q − 2| does not shrink: {dist:?}"
    );
}

#[test]
fn charge_of_a_perturbed_self_dual_field_approaches_the_integer() {
    perturbed_self_dual::<Su2>(8, 61);
    perturbed_self_dual::<Su3>(8, 62);
}

#[test]
fn charge_of_a_flowed_random_field_approaches_an_integer() {
    // On a small torus the Wilson flow takes a hot field to a flat connection: E → 0 and Q → 0
    // (instantons shrink and fall through the lattice); the non-trivial integer is the
    // perturbed self-dual field above.
    let lat = lattice(&[4, 4, 4, 4]);
    let times = [1.0, 2.0, 16.0];
    let o = FlowOptions {
        adaptive: Some(1e-5),
        ..opts(0.02)
    };
    let runs = [
        (
            "SU(2) seed 71",
            flow_measurements(&lat, &mut hot::<Su2>(&lat, 71), &times, &o).unwrap(),
        ),
        (
            "SU(2) seed 74",
            flow_measurements(&lat, &mut hot::<Su2>(&lat, 74), &times, &o).unwrap(),
        ),
        (
            "SU(3) seed 73",
            flow_measurements(&lat, &mut hot::<Su3>(&lat, 73), &times, &o).unwrap(),
        ),
    ];
    for (name, pts) in runs {
        let q: Vec<f64> = pts.iter().map(|p| p.q.unwrap()).collect();
        eprintln!(
            "{name}: Q(t = 1, 2, 16) = {q:?}, E(16) = {:e}",
            pts[2].e_clover
        );
        assert!(
            (q[0] - q[0].round()).abs() > 0.05,
            "{name}: Q(1) = {} is already near an integer",
            q[0]
        );
        assert!(
            (q[2] - q[2].round()).abs() < 1e-3,
            "{name}: Q(16) = {} is not near an integer",
            q[2]
        );
        assert!(
            pts[2].e_clover < 1e-3,
            "{name}: E(16) = {}",
            pts[2].e_clover
        );
    }
}

#[test]
fn results_are_bit_identical_for_any_thread_count() {
    let lat = lattice(&[10, 10, 10, 10]);
    let u0: Vec<Su2> = hot(&lat, 81);
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let mut u = u0.clone();
                let p = flow_measurements(
                    &lat,
                    &mut u,
                    &[0.0, 0.04],
                    &FlowOptions {
                        adaptive: Some(1e-4),
                        ..opts(0.02)
                    },
                )
                .unwrap();
                (u, p)
            })
    };
    let (a, pa) = run(1);
    let (b, pb) = run(2);
    assert!(a.iter().zip(&b).all(|(x, y)| x == y), "links differ");
    for (x, y) in pa.iter().zip(&pb) {
        assert_eq!(x.e_clover.to_bits(), y.e_clover.to_bits());
        assert_eq!(x.q.unwrap().to_bits(), y.q.unwrap().to_bits());
    }
}

#[test]
fn clover_energy_and_charge_functions_agree_with_measure() {
    let lat = lattice(&[4, 4, 4, 4]);
    let u: Vec<Su3> = near_identity(&lat, 0.4, 91);
    let p = measure(&lat, &u, 2.0);
    assert_eq!(p.e_clover, clover_energy_density(&lat, &u));
    assert!((p.q.unwrap() - topological_charge(&lat, &u).unwrap()).abs() < 1e-15);
    assert_eq!(p.t2e, 4.0 * p.e_clover);
    assert!((p.e_plaq - plaquette_energy_density(&lat, &u)).abs() == 0.0);
    let lat3 = lattice(&[4, 4, 4]);
    let u3: Vec<Su2> = near_identity(&lat3, 0.4, 92);
    assert_eq!(topological_charge(&lat3, &u3), None);
    assert_eq!(measure(&lat3, &u3, 1.0).q, None);
    // F_νμ = −F_μν, and F is traceless anti-Hermitian
    let f = clover_field(&lat, &u, 5, 1, 3);
    let g = clover_field(&lat, &u, 5, 3, 1);
    assert!((f.0 + g.0).norm2() < 1e-28);
    assert!(f.0.trace().abs() < 1e-15 && (f.0 + f.0.dagger()).norm2() < 1e-28);
}

#[test]
fn t0_and_w0_solve_their_conditions_with_exact_gradients() {
    // t²E = a t: t0 = 0.3/a exactly; W = a t, so w0² = 0.3/a too
    let times: Vec<f64> = (0..=20).map(|k| 0.1 * k as f64).collect();
    let a = 0.25;
    let y: Vec<f64> = times.iter().map(|t| a * t).collect();
    let t0 = t0_crossing(&times, &y, SCALE_REFERENCE).unwrap();
    assert!((t0.t - 1.2).abs() < 1e-12);
    let w0 = w0_crossing(&times, &y, SCALE_REFERENCE).unwrap();
    assert!((w0.t - 1.2).abs() < 1e-12);
    // a curved, non-uniform curve: gradients against finite differences of the solution
    let times: Vec<f64> = (0..=30)
        .map(|k| 0.1 * k as f64 + 0.002 * (k * k) as f64)
        .collect();
    let y: Vec<f64> = times.iter().map(|t| 0.12 * t + 0.03 * t * t).collect();
    for solve in [t0_crossing, w0_crossing] {
        let c = solve(&times, &y, SCALE_REFERENCE).unwrap();
        for k in 0..y.len() {
            let h = 1e-7;
            let (mut up, mut dn) = (y.clone(), y.clone());
            up[k] += h;
            dn[k] -= h;
            let fd = (solve(&times, &up, SCALE_REFERENCE).unwrap().t
                - solve(&times, &dn, SCALE_REFERENCE).unwrap().t)
                / (2.0 * h);
            assert!(
                (fd - c.gradient[k]).abs() < 1e-6,
                "k = {k}: {fd} vs {}",
                c.gradient[k]
            );
        }
    }
    // W = t(0.12 + 0.06 t) = 0.3 at t = (−0.12 + √(0.0144 + 0.072))/0.12; linear interpolation
    // between points 0.1–0.2 apart is accurate to ~1e-3 here
    let w0 = w0_crossing(&times, &y, SCALE_REFERENCE).unwrap();
    let exact = (-0.12 + (0.0144f64 + 0.072).sqrt()) / 0.12;
    assert!((w0.t - exact).abs() < 2e-3, "{} vs {exact}", w0.t);
    let t0 = t0_crossing(&times, &y, SCALE_REFERENCE).unwrap();
    let exact = (-0.12 + (0.0144f64 + 0.036).sqrt()) / 0.06;
    assert!((t0.t - exact).abs() < 2e-3, "{} vs {exact}", t0.t);
}

#[test]
fn bad_input_is_a_clear_error() {
    let lat = lattice(&[4, 4]);
    let mut u: Vec<Su2> = hot(&lat, 1);
    let o = opts(0.1);
    let err = |r: Result<Vec<FlowPoint>, FlowError>| r.unwrap_err().to_string();
    assert!(err(flow_measurements(&lat, &mut u, &[0.0, -1.0], &o)).contains("flow time -1"));
    assert!(err(flow_measurements(&lat, &mut u, &[0.5, 0.5], &o)).contains("must increase"));
    assert!(err(flow_measurements(&lat, &mut u, &[1.0, 0.5], &o)).contains("entry 1 is 0.5"));
    assert!(err(flow_measurements(&lat, &mut u, &[f64::NAN], &o)).contains("NaN"));
    assert!(err(flow_measurements(&lat, &mut u, &[], &o)).contains("no flow times"));
    assert!(err(flow_measurements(&lat, &mut u, &[1.0], &opts(0.0))).contains("eps = 0"));
    assert!(err(flow_measurements(
        &lat,
        &mut u,
        &[1.0],
        &opts(f64::INFINITY)
    ))
    .contains("eps = inf"));
    let bad_tol = FlowOptions {
        adaptive: Some(-1.0),
        ..o
    };
    assert!(err(flow_measurements(&lat, &mut u, &[1.0], &bad_tol)).contains("tolerance -1"));
    assert!(flow_to(&lat, &mut u[..5], 1.0, &o)
        .unwrap_err()
        .to_string()
        .contains("32 links, got 5"));
    let mut nan = u.clone();
    nan[7].0[0][1].im = f64::NAN;
    assert_eq!(
        flow_to(&lat, &mut nan, 1.0, &o),
        Err(FlowError::NonFiniteLink { link: 7 })
    );
    let lat1 = lattice(&[4]);
    let mut u1: Vec<Su2> = hot(&lat1, 1);
    assert_eq!(
        flow_to(&lat1, &mut u1, 1.0, &o),
        Err(FlowError::Dimension { d: 1 })
    );
    assert!(matches!(
        flow_grid(-1.0, 0.1),
        Err(FlowError::BadTime { index: 0, .. })
    ));
    assert!(matches!(
        flow_grid(1.0, 0.0),
        Err(FlowError::BadTime { index: 1, .. })
    ));
    assert_eq!(flow_grid(0.25, 0.1).unwrap(), vec![0.0, 0.1, 0.2, 0.25]);
    assert_eq!(flow_grid(0.3, 0.1).unwrap().len(), 4);
    let times = [0.0, 0.1, 0.2];
    let e = t0_crossing(&times, &[0.0, 0.1, 0.2], 0.3)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("never rises through 0.3") && e.contains("0.2"),
        "{e}"
    );
    assert!(t0_crossing(&times, &[0.0, 0.1], 0.3)
        .unwrap_err()
        .to_string()
        .contains("3 times but 2 values"));
    assert!(w0_crossing(&times[..2], &[0.0, 0.1], 0.3).is_err());
    // the field is untouched by refused input, and t = 0 is a no-op
    let before = u.clone();
    assert_eq!(flow_to(&lat, &mut u, 0.0, &o).unwrap().steps, 0);
    assert_eq!(before, u);
}
