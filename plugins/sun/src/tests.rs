use super::*;
use latflow_core::abi::IntegratorKind;
use latflow_core::gauge::{gradflow, Matrix, Su3};
use latflow_core::hmc::{integrate, FieldSpace, Schedule};
use latflow_core::sdk::Adapter;
use latflow_core::testkit;

fn theory(json: &str) -> Adapter<Sun> {
    Adapter::from_json(json).unwrap()
}

fn params(integrator: IntegratorKind, md_steps: u32, tau: f64) -> HmcParams {
    HmcParams { md_steps, integrator, trajectory_length: tau, ..HmcParams::default() }
}

fn hot(t: &Sun, seed: u64) -> Vec<f64> {
    t.initial(Start::Hot, &mut Stream::new(seed, 0))
}

/// Every card shape the contract checks run on: N = 2, 3; d = 2, 3, 4; each action.
const CARDS: [&str; 6] = [
    r#"{"lattice": [4, 4], "n": 2, "beta": 2.0}"#,
    r#"{"lattice": [4, 4], "n": 3, "beta": 4.0, "action": "iwasaki"}"#,
    r#"{"lattice": [3, 4, 4], "n": 3, "beta": 5.0, "action": "symanzik"}"#,
    r#"{"lattice": [4, 3, 2, 4], "n": 3, "beta": 5.7, "gradient_flow": {"time": 0.3, "eps": 0.05}}"#,
    r#"{"lattice": [2, 2, 4, 4], "n": 2, "beta": 2.3, "action": "dbw2"}"#,
    r#"{"lattice": [4, 4, 4], "n": 2, "beta": 1.0, "action": "wilson", "wilson_loops": [[1, 2], [2, 1], [3, 3]]}"#,
];

#[test]
fn contract_force() {
    for card in CARDS {
        testkit::check_force::<Sun>(card, &HmcParams::default());
    }
}

#[test]
fn contract_gauge_invariance() {
    for card in CARDS {
        testkit::check_gauge_invariance::<Sun>(card);
    }
}

#[test]
fn contract_observables_reversibility_and_adapter() {
    for card in CARDS {
        testkit::check_observables::<Sun>(card);
        testkit::check_reversibility::<Sun>(card, &params(IntegratorKind::Omelyan2, 5, 0.5));
        testkit::check_adapter::<Sun>(card, &params(IntegratorKind::Leapfrog, 4, 0.3));
    }
}

#[test]
fn contract_exp_minus_delta_h() {
    for card in [CARDS[0], CARDS[3], CARDS[4]] {
        let z = testkit::check_exp_minus_delta_h::<Sun>(card, &params(IntegratorKind::Omelyan2, 12, 1.0), 300);
        eprintln!("{card}: <exp(-dH)> z = {z:.2}");
    }
}

/// The action and every observable are invariant under random gauge transformations to 1e-12
/// (relative), the issue's tolerance (the contract kit checks 1e-10).
#[test]
fn gauge_invariance_to_1e12() {
    for card in CARDS {
        let t = theory(card);
        for seed in 0..2 {
            let u = hot(&t, seed);
            let g = t.random_gauge_transform(&u, &mut Stream::new(50 + seed, 0)).unwrap();
            let (s, sg) = (t.action(&u), t.action(&g));
            assert!((s - sg).abs() <= 1e-12 * s.abs().max(1.0), "{card}: S {s} vs {sg}");
            let (mut a, mut b) = (Vec::new(), Vec::new());
            t.measure(&u, &mut a).unwrap();
            t.measure(&g, &mut b).unwrap();
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-12 * x.abs().max(1.0), "{card}: {a:?} vs {b:?}");
            }
        }
    }
}

/// Re Tr of a product of links, walked by hand.
fn tr_path(t: &Sun, u: &[Su3], x0: usize, steps: &[(usize, bool)]) -> f64 {
    let (lat, d) = (t.lattice(), t.lattice().dim());
    let mut x = x0;
    let mut p = Matrix::<3>::identity();
    for &(mu, fwd) in steps {
        if fwd {
            p = p * u[x * d + mu];
            x = lat.fwd(x, mu);
        } else {
            x = lat.bwd(x, mu);
            p = p * u[x * d + mu].dagger();
        }
    }
    assert_eq!(x, x0, "the path is closed");
    p.trace().re
}

/// S and the observables against the definitions, walked link by link, for an improved action.
#[test]
fn action_and_observables_match_the_definitions() {
    let t = theory(r#"{"lattice": [3, 4, 2, 4], "n": 3, "beta": 5.5, "action": "iwasaki", "wilson_loops": [[2, 1]]}"#);
    let cfg = hot(&t, 3);
    let u: &[Su3] = view(&cfg).unwrap();
    let (lat, d, v) = (t.lattice(), 4, t.lattice().volume());
    let (mut p, mut r, mut w, mut pt) = (0.0, 0.0, 0.0, 0.0);
    for x in 0..v {
        for mu in 0..d {
            for nu in 0..d {
                if nu == mu {
                    continue;
                }
                let rect = [(mu, true), (mu, true), (nu, true), (mu, false), (mu, false), (nu, false)];
                r += tr_path(&t, u, x, &rect);
                if mu < nu {
                    let plaq = tr_path(&t, u, x, &[(mu, true), (nu, true), (mu, false), (nu, false)]);
                    p += plaq;
                    if nu == d - 1 {
                        pt += plaq;
                    }
                    w += tr_path(&t, u, x, &[(mu, true), (mu, true), (nu, true), (mu, false), (mu, false), (nu, false)]);
                }
            }
        }
    }
    let c1 = -0.331;
    let s = -(5.5 / 3.0) * ((1.0 - 8.0 * c1) * p + c1 * r);
    assert!((t.action(&cfg) - s).abs() < 1e-11 * s.abs(), "{} vs {s}", t.action(&cfg));
    let mut obs = Vec::new();
    t.measure(&cfg, &mut obs).unwrap();
    let names: Vec<String> = t.observables().iter().map(|o| o.name.to_string()).collect();
    assert_eq!(
        names,
        ["plaquette", "plaquette_spatial", "plaquette_temporal", "rectangle", "action_density", "polyakov_loop", "wilson_loop_2x1"]
    );
    let expect = [p / (v * 6 * 3) as f64, (p - pt) / (v * 3 * 3) as f64, pt / (v * 3 * 3) as f64, r / (v * 12 * 3) as f64, s / v as f64];
    for (i, e) in expect.iter().enumerate() {
        assert!((obs[i] - e).abs() < 1e-13, "observable {i}: {} vs {e}", obs[i]);
    }
    assert!((obs[7] - w / (v * 6 * 3) as f64).abs() < 1e-13);
    // Polyakov loop along the last axis (extent 4) from every t = 0 site
    let (mut re, mut im) = (0.0, 0.0);
    for x in (0..v).step_by(4) {
        let mut m = Matrix::<3>::identity();
        let mut y = x;
        for _ in 0..4 {
            m = m * u[y * d + 3];
            y = lat.fwd(y, 3);
        }
        re += m.trace().re;
        im += m.trace().im;
    }
    assert!((obs[5] - re / (v / 4 * 3) as f64).abs() < 1e-13 && (obs[6] - im / (v / 4 * 3) as f64).abs() < 1e-13);
}

/// With `gradient_flow`, the flowed observables are core's clover E, t²E and Q of the
/// configuration flowed to t (4D: Q and Q²/V too), and the unflowed ones are unchanged.
#[test]
fn gradient_flow_observables_are_measured_after_flowing() {
    let card = r#"{"lattice": [4, 4, 4, 4], "n": 3, "beta": 6.0, "gradient_flow": {"time": 0.5, "eps": 0.02}}"#;
    let t = theory(card);
    let mut u = hot(&t, 11);
    t.hmc_vec(&mut u, &params(IntegratorKind::Omelyan2, 8, 1.0), 10, &mut Stream::new(12, 0)).unwrap();
    let names: Vec<String> = t.observables().iter().map(|o| o.name.to_string()).collect();
    assert_eq!(&names[names.len() - 4..], ["energy_density", "t2_energy_density", "topological_charge", "topological_susceptibility"]);
    let mut obs = Vec::new();
    t.measure(&u, &mut obs).unwrap();
    let mut links: Vec<Su3> = view(&u).unwrap().to_vec();
    let opts = gradflow::FlowOptions { eps: 0.02, ..Default::default() };
    gradflow::flow_to(t.lattice(), &mut links, 0.5, &opts).unwrap();
    let e = gradflow::clover_energy_density(t.lattice(), &links);
    let q = gradflow::topological_charge(t.lattice(), &links).unwrap();
    let k = obs.len() - 4;
    assert_eq!(obs[k], e);
    assert!((obs[k + 1] - 0.25 * e).abs() < 1e-15 && obs[k + 2] == q && (obs[k + 3] - q * q / 256.0).abs() < 1e-15);
    // flowing smooths: E(t) well below E(0)'s plaquette value
    assert!(e < gradflow::clover_energy_density(t.lattice(), view::<Su3>(&u).unwrap()), "{e}");
    let plain = theory(r#"{"lattice": [4, 4, 4, 4], "n": 3, "beta": 6.0}"#);
    let mut obs0 = Vec::new();
    plain.measure(&u, &mut obs0).unwrap();
    assert_eq!(&obs[..obs0.len()], &obs0[..]);
}

#[test]
fn cold_start_is_the_identity_and_hot_links_are_in_the_group() {
    let t = theory(CARDS[3]);
    let mut obs = Vec::new();
    let cold = t.initial(Start::Cold, &mut Stream::new(1, 0));
    t.measure(&cold, &mut obs).unwrap();
    assert_eq!(&obs[..5], &[1.0, 1.0, 1.0, 1.0, -5.7 * 6.0]);
    let h = hot(&t, 2);
    for l in view::<Su3>(&h).unwrap() {
        assert!(l.deviation() < 1e-14 && (l.det().re - 1.0).abs() < 1e-14);
    }
}

/// Leapfrog's and Omelyan-2's ΔH scale as ε², OMF-4's as ε⁴ (mean |ΔH| over four momenta on
/// a thermalised configuration, from step halving).
#[test]
fn integrator_order_from_step_halving() {
    let t = theory(r#"{"lattice": [4, 4, 4, 4], "n": 3, "beta": 5.7}"#);
    let space = t.space();
    let levels = t.action_levels(&HmcParams::default()).unwrap();
    let mut u = hot(&t, 4);
    t.hmc_vec(&mut u, &params(IntegratorKind::Omelyan2, 8, 1.0), 40, &mut Stream::new(5, 0)).unwrap();
    let delta_h = |kind: IntegratorKind, n: u32| {
        let schedule = Schedule::from_params(&params(kind, n, 1.0), 1).unwrap();
        let mut rng = Stream::new(6, 0);
        let mut total = 0.0;
        for _ in 0..4 {
            let mut v = u.clone();
            let mut p = space.sample_momentum(&v, &mut rng);
            let h0 = levels.action(&v).unwrap() + space.kinetic(&p);
            integrate(&space, &levels, &mut v, &mut p, &schedule, &mut space.zero_momentum()).unwrap();
            total += (levels.action(&v).unwrap() + space.kinetic(&p) - h0).abs();
        }
        total / 4.0
    };
    for (kind, expect, n) in [(IntegratorKind::Leapfrog, 2.0, 20), (IntegratorKind::Omelyan2, 2.0, 10), (IntegratorKind::Omelyan4, 4.0, 6)] {
        let (a, b) = (delta_h(kind, n), delta_h(kind, 2 * n));
        let order = (a / b).log2();
        eprintln!("{kind:?}: |dH|({n}) = {a:.3e}, |dH|({}) = {b:.3e}, order {order:.2} (expect {expect})", 2 * n);
        assert!((order - expect).abs() < 0.3 * expect / 2.0, "{kind:?}: order {order}, expected {expect}");
    }
}

/// Links stay in SU(N): after 20 trajectories every link deviates < 1e-14 and the recorded
/// projection (the reunitarisation correction) is small.
#[test]
fn reunitarisation_is_recorded_and_small() {
    let t = theory(r#"{"lattice": [4, 4, 4, 4], "n": 3, "beta": 6.0}"#);
    let mut u = hot(&t, 7);
    let recs = t.hmc_vec(&mut u, &params(IntegratorKind::Leapfrog, 10, 1.0), 20, &mut Stream::new(8, 0)).unwrap();
    let worst = recs.iter().map(|r| r.projection).fold(0.0, f64::max);
    eprintln!("largest reunitarisation correction over 20 trajectories: {worst:.2e}");
    assert!(worst > 0.0 && worst < 1e-12, "{worst}");
    for l in view::<Su3>(&u).unwrap() {
        assert!(l.deviation() < 1e-14);
    }
}

/// HMC, a heat-bath and an overrelaxation sweep (through the plugin boundary, on the plugin's
/// workers: a team on 2 threads) and the observables, Wilson loops included, on 8⁴: every
/// loop above `SiteWork::Heavy`'s threshold runs in parallel.
#[test]
fn results_do_not_depend_on_thread_count() {
    use latflow_core::abi::Theory;
    use latflow_core::abi_stable::std_types::{RSliceMut, RStr};
    let run = |threads: u32| {
        let mut t = theory(r#"{"lattice": [8, 8, 8, 8], "n": 3, "beta": 5.7, "wilson_loops": [[1, 1], [2, 1]]}"#);
        Theory::set_threads(&mut t, threads).unwrap();
        let mut u = hot(&t, 9);
        let recs = t.hmc_vec(&mut u, &params(IntegratorKind::Leapfrog, 3, 0.2), 1, &mut Stream::new(10, 0)).unwrap();
        let mut state = Stream::new(11, 0).state();
        for kind in ["heatbath", "overrelax"] {
            Theory::step(&mut t, RStr::from(kind), RStr::from("{}"), RSliceMut::from(&mut u[..]), 1, &mut state).unwrap();
        }
        let obs = Theory::measure(&t, u.as_slice().into()).unwrap().into_vec();
        (u, recs, obs)
    };
    let (a, b) = (run(1), run(2));
    assert!(a.0 == b.0 && a.1 == b.1 && a.2 == b.2);
}

#[test]
fn bad_cards_name_the_key() {
    let cases = [
        (r#"{"lattice": [4, 4], "n": 4, "beta": 2.0}"#, "n:"),
        (r#"{"lattice": [4, 4], "n": 1, "beta": 2.0}"#, "n:"),
        (r#"{"lattice": [4, 4], "n": 3, "beta": -1.0}"#, "beta:"),
        (r#"{"lattice": [4, 4], "n": 3, "beta": 1e400}"#, "beta"),
        (r#"{"lattice": [4, 4], "n": 3, "beta": 2.0, "action": "luscher"}"#, "action: unknown gauge action 'luscher'"),
        (r#"{"lattice": [4, 1], "n": 3, "beta": 2.0}"#, "lattice:"),
        (r#"{"lattice": [4], "n": 3, "beta": 2.0}"#, "lattice:"),
        (r#"{"lattice": [4, 4], "n": 3, "beta": 2.0, "wilson_loops": [[5, 1]]}"#, "wilson_loops[0]"),
        (r#"{"lattice": [4, 4], "n": 3, "beta": 2.0, "colour": 3}"#, "colour"),
        (r#"{"lattice": [4, 4], "beta": 2.0}"#, "n"),
        (r#"{"lattice": [4, 4], "n": 3, "beta": 2.0, "gradient_flow": {"time": -1.0}}"#, "gradient_flow.time"),
        (r#"{"lattice": [4, 4], "n": 3, "beta": 2.0, "gradient_flow": {"time": 1.0, "eps": 0.0}}"#, "gradient_flow.eps"),
        (r#"{"lattice": [4, 4], "n": 3, "beta": 2.0, "gradient_flow": {"time": 1.0, "scheme": "zeuthen"}}"#, "gradient_flow.scheme"),
        (r#"{"lattice": [4, 4], "n": 3, "beta": 2.0, "gradient_flow": {"t": 1.0}}"#, "t"),
    ];
    for (card, needle) in cases {
        let e = Sun::from_config(card).err().unwrap_or_else(|| panic!("{card} was accepted"));
        assert!(e.to_string().contains(needle), "{card}: expected '{needle}' in: {e}");
    }
    let mut t = Sun::from_config(CARDS[0]).unwrap();
    assert!(t.set_parameter("beta", f64::NAN).unwrap_err().to_string().contains("beta"));
    assert!(t.set_parameter("kappa", 0.1).is_err());
}

/// ⟨P⟩ from a chain of `n` trajectories after `therm`, with a batch-means error.
fn hmc_plaquette(card: &str, p: &HmcParams, therm: u32, n: usize, seed: u64) -> (f64, f64) {
    let t = theory(card);
    let mut u = hot(&t, seed);
    let mut rng = Stream::new(seed, 1);
    t.hmc_vec(&mut u, p, therm, &mut rng).unwrap();
    let mut series = Vec::with_capacity(n);
    let mut acc = 0;
    for _ in 0..n {
        acc += t.hmc_vec(&mut u, p, 1, &mut rng).unwrap()[0].accepted as usize;
        let mut obs = Vec::new();
        t.measure(&u, &mut obs).unwrap();
        series.push(obs[0]);
    }
    let (m, e) = testkit::batch_means(&series, 20);
    eprintln!("{card}: <P> = {m:.6} ± {e:.6} (acceptance {:.2})", acc as f64 / n as f64);
    (m, e)
}

fn z(measured: (f64, f64), exact: f64, exact_err: f64) -> f64 {
    (measured.0 - exact) / (measured.1.powi(2) + exact_err.powi(2)).sqrt()
}

/// Reference §4: 2D SU(2) and SU(3) at L = 8 (torus = infinite volume to the digits given).
#[test]
fn hmc_reproduces_the_2d_exact_plaquettes() {
    let cases = [(2, 2.0, 0.4331274267), (2, 4.0, 0.6580472674), (3, 2.0, 0.1286277853), (3, 6.0, 0.4225317396)];
    for (i, (n, beta, exact)) in cases.into_iter().enumerate() {
        let card = format!(r#"{{"lattice": [8, 8], "n": {n}, "beta": {beta}}}"#);
        let m = hmc_plaquette(&card, &params(IntegratorKind::Omelyan2, 5, 1.0), 50, 2000, 20 + i as u64);
        let z = z(m, exact, 0.0);
        eprintln!("  z = {z:.2}");
        assert!(z.abs() < 4.0, "SU({n}) beta {beta}: {m:?} vs {exact}, z = {z}");
    }
}

/// Reference §5: SU(3) 4⁴ at β = 5.7, 6.0 and the strong-coupling point β = 1, SU(2) 4⁴ at β = 2.3.
#[test]
fn hmc_reproduces_the_4d_small_volume_plaquettes() {
    let cases =
        [(3, 5.7, 0.560245, 0.000173), (3, 6.0, 0.596878, 0.000094), (3, 1.0, 0.060101, 0.000081), (2, 2.3, 0.609331, 0.000188)];
    for (i, (n, beta, exact, err)) in cases.into_iter().enumerate() {
        let card = format!(r#"{{"lattice": [4, 4, 4, 4], "n": {n}, "beta": {beta}}}"#);
        let m = hmc_plaquette(&card, &params(IntegratorKind::Omelyan2, 6, 1.0), 30, 600, 30 + i as u64);
        let z = z(m, exact, err);
        eprintln!("  z = {z:.2}");
        assert!(z.abs() < 4.0, "SU({n}) 4^4 beta {beta}: {m:?} vs {exact}({err}), z = {z}");
    }
}

/// HMC with its fields in the site-blocked layout ([`PackedSpace`]) gives the bits of the flat
/// path (core's `hmc_trajectories` on [`SunSpace`]): the same records and the same links, for
/// every lane width that splits the lattice, every compiled variant (the corners shared as the
/// flat force decides: with or without them the sums differ in their last bits), the force
/// written by plain or non-temporal stores, every integrator (the force-gradient one also steps along the force), and on a
/// lattice above the parallel threshold on one, two and three threads.
#[test]
fn packed_hmc_gives_the_bits_of_the_flat_path() {
    let integrators = [IntegratorKind::Leapfrog, IntegratorKind::Omelyan2, IntegratorKind::ForceGradient];
    let cases: [(&str, &[IntegratorKind], &[usize]); 4] = [
        ("[2, 2, 4, 8]", &integrators, &[1]),
        ("[4, 4, 4, 4]", &integrators[1..2], &[1]),
        ("[3, 2, 6]", &integrators[..1], &[1]),
        ("[2, 8, 8, 16]", &integrators[1..2], &[1, 2, 3]),
    ];
    for (shape, integrators, threads) in cases {
        let t = theory(&format!(r#"{{"lattice": {shape}, "n": 3, "beta": 5.7}}"#));
        let sun = t.physics();
        let ext = *sun.lattice.shape().last().unwrap() as usize;
        let start = hot(sun, 5);
        for &integrator in integrators {
            let p = params(integrator, 3, 0.3);
            let mut want_field = start.clone();
            let want = latflow_core::sdk::hmc_trajectories(sun, &mut want_field, &p, 3, &mut Stream::new(9, 0)).unwrap();
            assert!(want.iter().any(|r| r.accepted), "{shape}: a test that accepts");
            for width in [2usize, 4, 8].into_iter().filter(|w| ext.is_multiple_of(*w)) {
                for level in 0..=fast::simd_level() {
                    let shared = fast::shares_corners(&sun.lattice);
                    let layout = blocked::Layout::new(&sun.lattice, width, level, shared);
                    // the force written by plain and by non-temporal stores (the latter taken
                    // with AVX-512 and 8 lanes, else the same plain path)
                    for (stream, &n) in [false, true].into_iter().flat_map(|s| threads.iter().map(move |n| (s, n))) {
                        let space = PackedSpace::new(layout.clone().streaming(stream));
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
                        let mut field = start.clone();
                        let got = pool.install(|| sun.packed_hmc(&space, &mut field, &p, 3, &mut Stream::new(9, 0)));
                        let case = format!("{shape} {integrator:?} width {width} level {level} stream {stream} threads {n}");
                        assert!(got.unwrap() == want, "{case}: records");
                        assert!(field == want_field, "{case}: links");
                    }
                }
            }
        }
    }
}

/// The dispatcher keeps HMC's fields blocked exactly where the force takes the blocked
/// kernels: SU(3) with the Wilson action on a lattice whose fastest extent is even; the packed
/// layout's pack and unpack are inverse.
#[test]
fn packed_space_is_taken_where_the_blocked_force_is() {
    for (card, packed) in [
        (r#"{"lattice": [4, 4, 4, 4], "n": 3, "beta": 5.7}"#, true),
        (r#"{"lattice": [4, 4, 4, 3], "n": 3, "beta": 5.7}"#, false),
        (r#"{"lattice": [4, 4, 4, 4], "n": 2, "beta": 2.3}"#, false),
        (r#"{"lattice": [4, 4, 4, 4], "n": 3, "beta": 5.7, "action": "symanzik"}"#, false),
    ] {
        let t = theory(card);
        let sun = t.physics();
        let space = sun.packed_space();
        assert_eq!(space.is_some(), packed, "{card}");
        if let Some(space) = space {
            let u = hot(sun, 3);
            let mut back = vec![0.0; u.len()];
            space.layout.unpack(&space.layout.pack(&u), &mut back);
            assert!(back == u, "{card}");
        }
    }
}

