//! The contract test kit: generic checks of a [`Physics`] in one line each, for in-tree and
//! out-of-tree plugins alike.
//!
//! ```ignore
//! const CARD: &str = r#"{"lattice": [4, 4], "beta": 1.1}"#;
//! #[test] fn force() { latflow_core::testkit::check_force::<Xy>(CARD, &HmcParams::default()) }
//! #[test] fn observables() { latflow_core::testkit::check_observables::<Xy>(CARD) }
//! #[test] fn reversible() { latflow_core::testkit::check_reversibility::<Xy>(CARD, &HmcParams::default()) }
//! #[test] fn exact() { latflow_core::testkit::check_exp_minus_delta_h::<Xy>(CARD, &HmcParams::default(), 4000); }
//! ```
//!
//! Each check builds the theory from a `[theory]` section given as JSON (keep lattices tiny),
//! uses fixed seeds, and panics with a message that names the check on failure.

use abi_stable::std_types::{RSlice, RSliceMut, RStr};

use crate::abi::{HmcParams, Start, Theory};
use crate::hmc::{integrate, FieldSpace};
use crate::layout::{Element, FieldRole};
use crate::rng::Stream;
use crate::sdk::{hmc_trajectories, Adapter, Physics};

fn build<P: Physics>(json: &str) -> P {
    P::from_config(json).unwrap_or_else(|e| panic!("{}: the test card {json} is refused: {e}", P::NAME))
}

fn hot<P: Physics>(p: &P, seed: u64) -> Vec<f64> {
    p.initial(Start::Hot, &mut Stream::new(seed, 0))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The pairing F·X of a force with a momentum-space direction in the metric of the kinetic
/// energy K(p) = ½ p·p, by polarisation: F·X = K(F + X) − K(F) − K(X). (The momenta's flat reals
/// need not be orthonormal coordinates: SU(N) momenta are stored as matrices, for which the
/// coefficient pairing is twice the flat dot product.)
fn pairing<S: FieldSpace<Momentum = Vec<f64>>>(space: &S, f: &Vec<f64>, x: &Vec<f64>) -> f64 {
    let mut sum = x.clone();
    space.kick(&mut sum, f, -1.0);
    space.kinetic(&sum) - space.kinetic(f) - space.kinetic(x)
}

/// The 4-point central difference of `f` at 0 with step `eps` (error O(eps⁴)).
fn derivative(f: impl Fn(f64) -> f64, eps: f64) -> f64 {
    (8.0 * (f(eps) - f(-eps)) - (f(2.0 * eps) - f(-2.0 * eps))) / (12.0 * eps)
}

/// The force of every action term (summed over terms and levels) against finite differences
/// of [`Physics::action`] along random tangent directions X (u → [`FieldSpace::step_field`]
/// by ε·X, i.e. exp(εX)·u for links, θ + εX for angles), the term actions' sum against
/// [`Physics::action`], and [`Physics::action_grad`] against finite differences along flat
/// directions x + εX. Relative tolerance 1e-6. The terms are those of
/// [`Physics::action_levels`] for `params`.
#[track_caller]
pub fn check_force<P: Physics>(json: &str, params: &HmcParams) {
    let p: P = build(json);
    let action = p.action_levels(params).unwrap_or_else(|e| panic!("{}: action_levels: {e}", P::NAME));
    let space = p.space();
    for seed in 0..3 {
        let u = hot(&p, 10 + seed);
        let s = p.action(&u);
        let terms = action.sum_of_terms(&u).unwrap_or_else(|e| panic!("{}: {e}", P::NAME));
        assert!((terms - s).abs() <= 1e-10 * s.abs().max(1.0), "{}: terms sum to S = {terms}, action() = {s}", P::NAME);
        let total = action.action(&u).unwrap_or_else(|e| panic!("{}: {e}", P::NAME));
        assert!((total - s).abs() <= 1e-10 * s.abs().max(1.0), "{}: HMC's total S = {total}, action() = {s}", P::NAME);
        let mut force = space.zero_momentum();
        let mut buf = space.zero_momentum();
        for term in action.terms().iter().flatten() {
            term.force(&u, &mut buf).unwrap_or_else(|e| panic!("{}: {e}", P::NAME));
            force.iter_mut().zip(&buf).for_each(|(f, b)| *f += b);
        }
        let mut grad = vec![0.0; u.len()];
        let s_grad = p.action_grad(&u, &mut grad);
        assert!((s_grad - s).abs() <= 1e-12 * s.abs().max(1.0), "{}: action_grad's S {s_grad} vs {s}", P::NAME);
        let mut rng = Stream::new(100 + seed, 0);
        for _ in 0..3 {
            let x = space.sample_momentum(&u, &mut rng);
            let along = |eps: f64| {
                let (mut v, mut y) = (u.clone(), x.clone());
                space.step_field(&mut v, &mut y, eps);
                p.action(&v)
            };
            let (fd, an) = (derivative(along, 1e-4), pairing(&space, &force, &x));
            let scale = force.iter().zip(&x).map(|(f, y)| (f * y).abs()).sum::<f64>().max(1.0);
            assert!((fd - an).abs() <= 1e-6 * scale, "{}: force·X = {an}, finite differences {fd}", P::NAME);
            let mut flat = vec![0.0; u.len()];
            rng.fill_normal(&mut flat);
            let shifted = |eps: f64| p.action(&u.iter().zip(&flat).map(|(a, b)| a + eps * b).collect::<Vec<_>>());
            let (fd, an) = (derivative(shifted, 1e-4), dot(&grad, &flat));
            let scale = grad.iter().zip(&flat).map(|(g, y)| (g * y).abs()).sum::<f64>().max(1.0);
            assert!((fd - an).abs() <= 1e-6 * scale, "{}: grad·X = {an}, finite differences {fd}", P::NAME);
        }
    }
}

/// The action and every observable are unchanged (to 1e-10, relative) by the theory's
/// [`Physics::random_gauge_transform`]. Panics if the theory provides none.
#[track_caller]
pub fn check_gauge_invariance<P: Physics>(json: &str) {
    let p: P = build(json);
    for seed in 0..3 {
        let u = hot(&p, 20 + seed);
        let g = p
            .random_gauge_transform(&u, &mut Stream::new(200 + seed, 0))
            .unwrap_or_else(|| panic!("{} provides no gauge transformation to check", P::NAME));
        assert_eq!(g.len(), u.len(), "{}: the gauge transform changed the configuration's length", P::NAME);
        assert!(g.iter().zip(&u).any(|(a, b)| a != b), "{}: the gauge transform is the identity", P::NAME);
        let (s, sg) = (p.action(&u), p.action(&g));
        assert!((s - sg).abs() <= 1e-10 * s.abs().max(1.0), "{}: S = {s} but {sg} after a gauge transform", P::NAME);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        p.measure(&u, &mut a).unwrap();
        p.measure(&g, &mut b).unwrap();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-10 * x.abs().max(1.0), "{}: observable value {i}: {x} vs {y}", P::NAME);
        }
    }
}

/// Integrating forward, flipping the momenta and integrating back returns to the start (to
/// 1e-10, relative; angles compared modulo 2π), with the physics' own action levels and
/// schedule for `params`.
#[track_caller]
pub fn check_reversibility<P: Physics>(json: &str, params: &HmcParams) {
    let p: P = build(json);
    let action = p.action_levels(params).unwrap_or_else(|e| panic!("{}: {e}", P::NAME));
    let schedule = p.schedule(params, action.levels()).unwrap_or_else(|e| panic!("{}: {e}", P::NAME));
    let space = p.space();
    let periodic = angle_mask(&p);
    let mut rng = Stream::new(30, 0);
    let u0 = p.initial(Start::Hot, &mut rng);
    let p0 = space.sample_momentum(&u0, &mut rng);
    let (mut u, mut mom, mut buf) = (u0.clone(), p0.clone(), space.zero_momentum());
    integrate(&space, &action, &mut u, &mut mom, &schedule, &mut buf).unwrap_or_else(|e| panic!("{}: {e}", P::NAME));
    mom.iter_mut().for_each(|x| *x = -*x);
    integrate(&space, &action, &mut u, &mut mom, &schedule, &mut buf).unwrap_or_else(|e| panic!("{}: {e}", P::NAME));
    for (k, ((a, b), angle)) in u.iter().zip(&u0).zip(&periodic).enumerate() {
        let mut d = a - b;
        if *angle {
            d -= std::f64::consts::TAU * (d / std::f64::consts::TAU).round();
        }
        assert!(d.abs() <= 1e-10 * b.abs().max(1.0), "{}: coordinate {k}: {b} → {a} after a round trip", P::NAME);
    }
    for (k, (a, b)) in mom.iter().zip(&p0).enumerate() {
        assert!(
            (a + b).abs() <= 1e-10 * b.abs().max(1.0),
            "{}: momentum {k}: {b} → {} after a round trip",
            P::NAME,
            -a
        );
    }
}

/// For each real of a configuration, whether it is an angle (periodic with 2π).
fn angle_mask<P: Physics>(p: &P) -> Vec<bool> {
    let layout = p.layout();
    let mut mask = Vec::with_capacity(layout.config_len());
    for c in layout.components.iter().filter(|c| c.role == FieldRole::Dynamical) {
        mask.extend(std::iter::repeat_n(c.element.shape() == Element::Angle, layout.component_len(c)));
    }
    mask
}

/// ⟨e^{−ΔH}⟩ = 1: runs `n_traj` HMC trajectories (after `n_traj / 5` of thermalisation from a
/// hot start) and requires |z| < 4 for the mean of e^{−ΔH} against 1, with the error from 20
/// batch means. Returns z.
#[track_caller]
pub fn check_exp_minus_delta_h<P: Physics>(json: &str, params: &HmcParams, n_traj: u32) -> f64 {
    let p: P = build(json);
    let mut rng = Stream::new(40, 0);
    let mut u = p.initial(Start::Hot, &mut rng);
    hmc_trajectories(&p, &mut u, params, n_traj / 5, &mut rng).unwrap_or_else(|e| panic!("{}: {e}", P::NAME));
    let recs = hmc_trajectories(&p, &mut u, params, n_traj, &mut rng).unwrap_or_else(|e| panic!("{}: {e}", P::NAME));
    let e: Vec<f64> = recs.iter().map(|r| (-r.delta_h).exp()).collect();
    let (mean, err) = batch_means(&e, 20);
    let z = (mean - 1.0) / err;
    assert!(z.abs() < 4.0, "{}: <exp(-dH)> = {mean} ± {err} (z = {z:.2})", P::NAME);
    println!("{}: <exp(-dH)> = {mean:.6} ± {err:.6} (z = {z:.2}) over {n_traj} trajectories", P::NAME);
    let acc = recs.iter().filter(|r| r.accepted).count();
    assert!(acc > 0, "{}: no trajectory accepted", P::NAME);
    z
}

/// Observable names are non-empty and unique, lengths ≥ 1, and `measure` returns Σ len finite
/// values per configuration, directly and through the ABI adapter (for a batch of two).
#[track_caller]
pub fn check_observables<P: Physics>(json: &str) {
    let p: P = build(json);
    let specs = p.observables();
    assert!(!specs.is_empty(), "{}: no observables", P::NAME);
    let mut names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert!(names.iter().all(|n| !n.is_empty() && !n.contains(char::is_whitespace)), "{}: names {names:?}", P::NAME);
    assert!(specs.iter().all(|s| s.len >= 1), "{}: an observable of length 0", P::NAME);
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), specs.len(), "{}: observable names repeat", P::NAME);
    let total: usize = specs.iter().map(|s| s.len as usize).sum();
    let (u, v) = (hot(&p, 50), hot(&p, 51));
    let mut out = Vec::new();
    p.measure(&u, &mut out).unwrap_or_else(|e| panic!("{}: measure: {e}", P::NAME));
    assert_eq!(
        out.len(),
        total,
        "{}: measure returned {} values for observables of total length {total}",
        P::NAME,
        out.len()
    );
    assert!(out.iter().all(|x| x.is_finite()), "{}: non-finite observables {out:?}", P::NAME);
    let adapter = Adapter::new(p).unwrap_or_else(|e| panic!("{}: {e}", P::NAME));
    let batch: Vec<f64> = u.iter().chain(&v).copied().collect();
    let both = adapter.measure(RSlice::from_slice(&batch)).into_result().unwrap_or_else(|e| panic!("{}: {e}", P::NAME));
    assert_eq!(&both[..total], &out[..], "{}: batch measurement differs from the single one", P::NAME);
    assert_eq!(both.len(), 2 * total);
}

/// The ABI adapter end to end: a bad card is a config error, a wrong-size buffer a shape
/// error, a non-finite configuration is refused by HMC, an unknown parameter is unsupported,
/// and the same seed gives the same bits with 1 and 2 worker threads.
#[track_caller]
pub fn check_adapter<P: Physics>(json: &str, params: &HmcParams) {
    use crate::ErrorKind;
    let e = crate::sdk::new_theory::<P>("{\"no such key\": 1}").into_result().err();
    assert_eq!(e.map(|e| e.kind), Some(ErrorKind::Config), "{}: a bad card must be a config error", P::NAME);
    let run = |threads: u32| {
        let mut t = crate::sdk::new_theory::<P>(json).into_result().unwrap_or_else(|e| panic!("{}: {e}", P::NAME));
        t.set_threads(threads).into_result().unwrap();
        let mut rng = Stream::new(60, 0).state();
        let mut u = t.initial(Start::Hot, &mut rng).into_result().unwrap().into_vec();
        let recs = t.hmc(RSliceMut::from_mut_slice(&mut u), params, 3, &mut rng).into_result();
        let recs = recs.unwrap_or_else(|e| panic!("{}: hmc: {e}", P::NAME));
        (u, recs.iter().map(|r| r.delta_h.to_bits()).collect::<Vec<_>>(), t)
    };
    let (u1, d1, mut t) = run(1);
    let (u2, d2, _) = run(2);
    assert!(
        u1.iter().zip(&u2).all(|(a, b)| a.to_bits() == b.to_bits()) && d1 == d2,
        "{}: threads change bits",
        P::NAME
    );
    let short = &u1[..u1.len() - 1];
    assert_eq!(t.action(RSlice::from_slice(short)).into_result().unwrap_err().kind, ErrorKind::Shape);
    let mut bad = u1.clone();
    bad[0] = f64::NAN;
    let e = t.hmc(RSliceMut::from_mut_slice(&mut bad), params, 1, &mut Stream::new(1, 0).state()).into_result();
    assert_eq!(e.unwrap_err().kind, ErrorKind::Numerical, "{}: NaN configuration accepted by hmc", P::NAME);
    let e = t.parameter(RStr::from_str("no_such_parameter")).into_result().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported, "{}: unknown parameter: {e}", P::NAME);
}

/// Mean and standard error of `data` from `batches` equal batch means (trailing values that
/// do not fill a batch are dropped). Needs at least 2 batches of at least 1 value.
pub fn batch_means(data: &[f64], batches: usize) -> (f64, f64) {
    assert!(batches >= 2 && data.len() >= batches, "batch_means: {} values for {batches} batches", data.len());
    let size = data.len() / batches;
    let means: Vec<f64> = data.chunks_exact(size).take(batches).map(|c| c.iter().sum::<f64>() / size as f64).collect();
    let mean = means.iter().sum::<f64>() / batches as f64;
    let var = means.iter().map(|m| (m - mean) * (m - mean)).sum::<f64>() / (batches - 1) as f64;
    (mean, (var / batches as f64).sqrt())
}

/// `count` damaged variants of `input`, for replaying a fuzz corpus with extra mutations in an
/// ordinary test (no fuzzing engine). Deterministic in `seed`. Each variant applies one to four
/// of: flip a bit, overwrite a byte with an interesting value (0, 0xff, 0x7f, 0x80), overwrite
/// 8 bytes with a little-endian extreme (0, u64::MAX, i64::MAX, a length just past the
/// input), truncate, duplicate a slice, insert random bytes.
pub fn mutations(input: &[u8], count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Stream::new(seed, 0);
    let mut below = |n: usize| if n == 0 { 0 } else { (rng.next_u64() % n as u64) as usize };
    (0..count)
        .map(|_| {
            let mut v = input.to_vec();
            for _ in 0..1 + below(4) {
                let len = v.len();
                match below(6) {
                    0 if len > 0 => {
                        let i = below(len);
                        v[i] ^= 1 << below(8);
                    }
                    1 if len > 0 => {
                        let i = below(len);
                        v[i] = [0u8, 0xff, 0x7f, 0x80][below(4)];
                    }
                    2 if len >= 8 => {
                        let i = below(len - 7);
                        let x = [0, u64::MAX, i64::MAX as u64, len as u64 + 1][below(4)];
                        v[i..i + 8].copy_from_slice(&x.to_le_bytes());
                    }
                    3 => v.truncate(below(len + 1)),
                    4 if len > 0 => {
                        let (a, b) = (below(len), below(len));
                        let (a, b) = (a.min(b), a.max(b).min(a + 256));
                        let piece = v[a..b].to_vec();
                        let at = below(len + 1);
                        v.splice(at..at, piece);
                    }
                    _ => {
                        let at = below(len + 1);
                        let n = 1 + below(16);
                        let piece: Vec<u8> = (0..n).map(|_| below(256) as u8).collect();
                        v.splice(at..at, piece);
                    }
                }
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_means_of_known_data() {
        let data: Vec<f64> = (0..40).map(|i| (i % 4) as f64).collect();
        let (mean, err) = batch_means(&data, 10);
        assert_eq!(mean, 1.5);
        assert_eq!(err, 0.0);
        let (mean, err) = batch_means(&[1.0, 3.0], 2);
        assert_eq!((mean, err), (2.0, 1.0));
    }
}
