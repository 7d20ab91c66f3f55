//! Whole-module checks: staples and rectangle staples against the loop sums, a Wilson action
//! for SU(2)/SU(3) built from the staples (force against finite differences, gauge invariance),
//! and HMC with [`LinkSpace`] (reversibility, ⟨e^{−ΔH}⟩ = 1, the 2D SU(2) plaquette).

use super::*;
use crate::abi::{HmcParams, IntegratorKind};
use crate::hmc::{hmc_trajectory, integrate, ActionTerm, FieldSpace, LeveledAction, Schedule, TermError};
use crate::lattice::Lattice;
use crate::rng::Stream;
use latflow_stats::{gamma_method, S_TAU_DEFAULT};
use crate::sum::compensated_sum;

/// S = −(β/N) Σ_P Re Tr U_P, with force F_μ(x) = −(β/N) ∂ Re Tr(U_μ(x) · staple): each
/// plaquette through U_μ(x) appears once in Re Tr(U_μ(x) · staple), so the Lie derivative of S
/// along link (x, μ) is −(β/N) times that of Re Tr(U_μ(x) · staple).
struct Wilson<'a, G> {
    lat: &'a Lattice,
    beta: f64,
    _g: std::marker::PhantomData<G>,
}

impl<'a, G: GaugeGroup> Wilson<'a, G> {
    fn new(lat: &'a Lattice, beta: f64) -> Self {
        Self { lat, beta, _g: std::marker::PhantomData }
    }
}

impl<G: GaugeGroup> Wilson<'_, G> {
    fn action(&self, u: &LinkField<G>) -> f64 {
        -self.beta / G::NC as f64 * plaquette_sum(self.lat, u.links())
    }

    fn force(&self, u: &LinkField<G>, out: &mut [G::Algebra]) {
        let d = self.lat.dim();
        let c = -self.beta / G::NC as f64;
        parallel::fill_sites(out, d, |x, f, _| {
            for (mu, fo) in f.iter_mut().enumerate() {
                let s = staple(self.lat, u.links(), x, mu);
                *fo = u.link(x, mu).re_trace_derivative(&s).scale(c);
            }
        });
    }
}

impl<G: GaugeGroup> ActionTerm<LinkSpace<G>> for Wilson<'_, G> {
    fn name(&self) -> &str {
        "wilson"
    }

    fn action(&self, u: &LinkField<G>) -> Result<f64, TermError> {
        Ok(Wilson::action(self, u))
    }

    fn force(&self, u: &LinkField<G>, out: &mut Vec<G::Algebra>) -> Result<(), TermError> {
        Wilson::force(self, u, out);
        Ok(())
    }
}

/// The Wilson action as a one-level, one-term HMC action.
fn leveled<'a, G: GaugeGroup>(w: &'a Wilson<'a, G>) -> LeveledAction<'a, LinkSpace<G>> {
    LeveledAction::single(Box::new(w))
}

fn hot<G: GaugeGroup>(lat: &Lattice, seed: u64) -> LinkField<G> {
    LinkField::random(lat.dim(), lat.volume(), &mut Stream::new(seed, 0)).unwrap()
}

/// A field near the identity (exp of small random algebra elements), for HMC tests at moderate β.
fn warm<G: GaugeGroup>(lat: &Lattice, seed: u64, size: f64) -> LinkField<G> {
    let mut rng = Stream::new(seed, 1);
    let links = (0..lat.volume() * lat.dim()).map(|_| G::exp(&G::Algebra::gaussian(&mut rng).scale(size))).collect();
    LinkField::from_links(lat.dim(), links)
}

/// Re Tr(U_μ(x) · staple) is the sum of the 2(d−1) plaquettes through the link, and
/// Re Tr(U_μ(x) · rectangle staple) the sum of the 6(d−1) rectangles through it: summing over
/// links counts every plaquette 4 times and every rectangle 6 times.
fn staple_sums<G: GaugeGroup>() {
    for shape in [&[4, 4][..], &[3, 4, 5][..], &[2, 3, 2, 3][..]] {
        let lat = Lattice::new(shape).unwrap();
        let u = hot::<G>(&lat, 3);
        let d = lat.dim();
        let (mut s1, mut s2) = (Vec::new(), Vec::new());
        for x in 0..lat.volume() {
            for mu in 0..d {
                s1.push(u.link(x, mu).re_trace_mul(&staple(&lat, u.links(), x, mu)));
                s2.push(u.link(x, mu).re_trace_mul(&rectangle_staple(&lat, u.links(), x, mu)));
            }
        }
        let p = plaquette_sum(&lat, u.links());
        let r = rectangle_sum(&lat, u.links());
        assert!((compensated_sum(s1) - 4.0 * p).abs() < 1e-11 * (1.0 + p.abs()), "{shape:?}");
        assert!((compensated_sum(s2) - 6.0 * r).abs() < 1e-11 * (1.0 + r.abs()), "{shape:?}");
    }
}

#[test]
fn staples_close_every_loop_through_a_link() {
    staple_sums::<Su2>();
    staple_sums::<Su3>();
    staple_sums::<U1Angle>();
    staple_sums::<SuN<4>>();
}

/// The rectangle staple's derivative is that of the rectangle sum: move one link along a
/// random direction and compare with a central finite difference.
fn rectangle_staple_derivative<G: GaugeGroup>() {
    let lat = Lattice::new(&[3, 4, 3]).unwrap();
    let u = hot::<G>(&lat, 5);
    let mut rng = Stream::new(6, 0);
    for (x, mu) in [(0, 0), (7, 1), (20, 2)] {
        let dir = G::Algebra::gaussian(&mut rng);
        let moved = |t: f64| {
            let mut v = u.clone();
            *v.link_mut(x, mu) = G::exp(&dir.scale(t)).mul(u.link(x, mu));
            rectangle_sum(&lat, v.links())
        };
        let h = 1e-5;
        let fd = (moved(h) - moved(-h)) / (2.0 * h);
        let g = u.link(x, mu).re_trace_derivative(&rectangle_staple(&lat, u.links(), x, mu));
        let (mut gc, mut dc) = (vec![0.0; G::Algebra::N_GEN], vec![0.0; G::Algebra::N_GEN]);
        g.write_coeffs(&mut gc);
        dir.write_coeffs(&mut dc);
        // each rectangle through the link is counted once in the rectangle sum
        let an: f64 = gc.iter().zip(&dc).map(|(a, b)| a * b).sum();
        assert!((fd - an).abs() < 1e-7 * (1.0 + an.abs()), "{fd} vs {an}");
    }
}

#[test]
fn rectangle_staples_give_the_rectangle_force() {
    rectangle_staple_derivative::<Su2>();
    rectangle_staple_derivative::<Su3>();
}

/// dS/dt along U → exp(tX) U (every link moved along its own random X) equals Σ X^a F^a.
fn wilson_force_matches_finite_differences<G: GaugeGroup>(shape: &[i64]) {
    let lat = Lattice::new(shape).unwrap();
    let act = Wilson::<G>::new(&lat, 2.3);
    let space = LinkSpace::<G>::new(lat.dim(), lat.volume());
    let u = hot::<G>(&lat, 11);
    let mut f = space.zero_momentum();
    act.force(&u, &mut f);
    let mut rng = Stream::new(12, 0);
    for _ in 0..3 {
        let dir = space.sample_momentum(&u, &mut rng);
        let s_at = |t: f64| {
            let mut v = u.clone();
            space.step_field(&mut v, &mut dir.clone(), t);
            act.action(&v)
        };
        let h = 1e-5;
        let fd = (s_at(h) - s_at(-h)) / (2.0 * h);
        let (mut a, mut b) = (vec![0.0; G::Algebra::N_GEN], vec![0.0; G::Algebra::N_GEN]);
        let an: f64 = f
            .iter()
            .zip(&dir)
            .map(|(fa, da)| {
                fa.write_coeffs(&mut a);
                da.write_coeffs(&mut b);
                a.iter().zip(&b).map(|(p, q)| p * q).sum::<f64>()
            })
            .sum();
        assert!((fd - an).abs() < 1e-7 * (1.0 + an.abs()), "{shape:?}: {fd} vs {an}");
    }
}

#[test]
fn wilson_force_is_the_lie_derivative_of_the_action() {
    wilson_force_matches_finite_differences::<Su2>(&[4, 4]);
    wilson_force_matches_finite_differences::<Su3>(&[4, 4]);
    wilson_force_matches_finite_differences::<Su2>(&[2, 2, 2, 2]);
    wilson_force_matches_finite_differences::<Su3>(&[2, 2, 2, 2]);
    wilson_force_matches_finite_differences::<U1Angle>(&[3, 4]);
    wilson_force_matches_finite_differences::<SuN<4>>(&[3, 4]);
}

fn gauge_invariance<G: GaugeGroup>() {
    let lat = Lattice::new(&[2, 3, 2, 4]).unwrap();
    let u = hot::<G>(&lat, 21);
    let mut rng = Stream::new(22, 0);
    let g: Vec<G> = (0..lat.volume()).map(|_| G::random(&mut rng)).collect();
    let mut v = u.clone();
    gauge_transform(&lat, v.links_mut(), &g);
    let act = Wilson::<G>::new(&lat, 1.7);
    let (a, b) = (act.action(&u), act.action(&v));
    assert!((a - b).abs() < 1e-12 * a.abs(), "{a} vs {b}");
    let (r, rv) = (rectangle_sum(&lat, u.links()), rectangle_sum(&lat, v.links()));
    assert!((r - rv).abs() < 1e-12 * (1.0 + r.abs()));
    // and the transformed field differs
    assert!(u.links().iter().zip(v.links()).any(|(p, q)| p != q));
}

#[test]
fn wilson_action_and_rectangles_are_gauge_invariant() {
    gauge_invariance::<Su2>();
    gauge_invariance::<Su3>();
    gauge_invariance::<U1Angle>();
    gauge_invariance::<SuN<4>>();
}

fn params(integrator: IntegratorKind, md_steps: u32, tau: f64) -> HmcParams {
    HmcParams {
        trajectory_length: tau,
        md_steps,
        integrator,
        ..HmcParams::default()
    }
}

/// Integrate forward, flip the momenta, integrate back: the starting links return.
fn reversibility<G: GaugeGroup>(shape: &[i64]) {
    let lat = Lattice::new(shape).unwrap();
    let wilson = Wilson::<G>::new(&lat, 2.0);
    let act = leveled(&wilson);
    let space = LinkSpace::<G>::new(lat.dim(), lat.volume());
    for kind in [IntegratorKind::Leapfrog, IntegratorKind::Omelyan2, IntegratorKind::Omelyan4] {
        let sched = Schedule::from_params(&params(kind, 8, 1.0), 1).unwrap();
        let u0 = hot::<G>(&lat, 31);
        let mut rng = Stream::new(32, 0);
        let p0 = space.sample_momentum(&u0, &mut rng);
        let (mut u, mut p) = (u0.clone(), p0.clone());
        let mut buf = space.zero_momentum();
        integrate(&space, &act, &mut u, &mut p, &sched, &mut buf).unwrap();
        p.iter_mut().for_each(|q| *q = q.scale(-1.0));
        integrate(&space, &act, &mut u, &mut p, &sched, &mut buf).unwrap();
        let mut r0 = vec![0.0; G::REALS * u0.links().len()];
        let mut r1 = r0.clone();
        u0.write_reals(&mut r0).unwrap();
        u.write_reals(&mut r1).unwrap();
        let err = r0.iter().zip(&r1).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-11, "{kind:?} {shape:?}: {err:e}");
        let perr = p.iter().zip(&p0).map(|(a, b)| (a.norm2() - b.norm2()).abs()).fold(0.0, f64::max);
        assert!(perr < 1e-10, "{kind:?}: {perr:e}");
        assert!(space.max_deviation(&u) < 1e-13);
    }
}

#[test]
fn hmc_is_reversible() {
    reversibility::<Su2>(&[4, 4]);
    reversibility::<Su3>(&[4, 4]);
    reversibility::<Su3>(&[2, 2, 2, 2]);
    reversibility::<SuN<4>>(&[4, 4]);
}

/// ⟨e^{−ΔH}⟩ = 1 over an equilibrated chain, with the Γ-method error.
fn exp_minus_delta_h<G: GaugeGroup>(shape: &[i64], beta: f64, steps: u32, n: usize) {
    let lat = Lattice::new(shape).unwrap();
    let wilson = Wilson::<G>::new(&lat, beta);
    let mut act = leveled(&wilson);
    let space = LinkSpace::<G>::new(lat.dim(), lat.volume());
    let sched = Schedule::from_params(&params(IntegratorKind::Leapfrog, steps, 1.0), 1).unwrap();
    let mut rng = Stream::new(41, 0);
    let mut u = warm::<G>(&lat, 42, 0.3);
    for _ in 0..20 {
        hmc_trajectory(&space, &mut act, &mut u, &sched, true, &mut rng).unwrap();
    }
    let mut e = Vec::with_capacity(n);
    let mut acc = 0usize;
    for _ in 0..n {
        let r = hmc_trajectory(&space, &mut act, &mut u, &sched, true, &mut rng).unwrap();
        e.push((-r.delta_h).exp());
        acc += usize::from(r.accepted);
    }
    let g = gamma_method(&e, S_TAU_DEFAULT).unwrap();
    let z = (g.mean - 1.0) / g.error;
    eprintln!("SU({}) {shape:?}: <exp(-dH)> = {} ± {} (z = {z:.2}), acceptance {acc}/{n}", G::NC, g.mean, g.error);
    assert!(z.abs() < 4.0, "{shape:?}: <exp(-dH)> = {} ± {} (z = {z})", g.mean, g.error);
    assert!(acc > n / 2, "acceptance {acc}/{n}");
}

#[test]
fn exp_minus_delta_h_averages_to_one() {
    exp_minus_delta_h::<Su2>(&[4, 4], 2.0, 2, 1000);
    exp_minus_delta_h::<Su3>(&[4, 4], 4.0, 4, 1000);
    exp_minus_delta_h::<Su3>(&[2, 2, 2, 2], 5.0, 5, 1000);
}

/// 2D SU(N) on an 8×8 torus: u = ⟨Re Tr U_P⟩/N against the exact values (the same as in
/// infinite volume to the digits given): SU(2) β = 2: 0.4331274267; SU(3) β = 2: 0.1286277853.
fn plaquette_2d<G: GaugeGroup>(beta: f64, exact: f64, n: usize) {
    let lat = Lattice::new(&[8, 8]).unwrap();
    let wilson = Wilson::<G>::new(&lat, beta);
    let mut act = leveled(&wilson);
    let space = LinkSpace::<G>::new(2, lat.volume());
    let sched = Schedule::from_params(&params(IntegratorKind::Omelyan2, 5, 1.0), 1).unwrap();
    let mut rng = Stream::new(51, 0);
    let mut u = hot::<G>(&lat, 52);
    for _ in 0..50 {
        hmc_trajectory(&space, &mut act, &mut u, &sched, true, &mut rng).unwrap();
    }
    let mut plaq = Vec::with_capacity(n);
    for _ in 0..n {
        hmc_trajectory(&space, &mut act, &mut u, &sched, true, &mut rng).unwrap();
        plaq.push(mean_plaquette(&lat, u.links()));
    }
    let g = gamma_method(&plaq, S_TAU_DEFAULT).unwrap();
    let z = (g.mean - exact) / g.error;
    eprintln!("SU({}) beta = {beta}: <P> = {} ± {} (exact {exact}, z = {z:.2})", G::NC, g.mean, g.error);
    assert!(z.abs() < 4.0, "<P> = {} ± {} (z = {z})", g.mean, g.error);
}

#[test]
fn su2_and_su3_2d_plaquettes_match_the_exact_values() {
    plaquette_2d::<Su2>(2.0, 0.4331274267, 3000);
    plaquette_2d::<Su3>(2.0, 0.1286277853, 3000);
}

#[test]
fn link_fields_round_trip_the_flat_layout_and_reject_bad_input() {
    let lat = Lattice::new(&[2, 3, 2]).unwrap();
    let u = hot::<Su3>(&lat, 61);
    let mut r = vec![0.0; 18 * lat.volume() * 3];
    u.write_reals(&mut r).unwrap();
    // [site][μ][row][col][re, im]
    assert_eq!(r[18 * 4 + 2 * 3 + 1], u.link(1, 1).0[1][0].im);
    let back = LinkField::<Su3>::from_reals(3, lat.volume(), &r, 1e-12).unwrap();
    assert_eq!(back, u);
    assert_eq!(
        LinkField::<Su3>::from_reals(3, lat.volume(), &r[1..], 1e-12).unwrap_err(),
        FieldError::Length { expected: r.len(), got: r.len() - 1 }
    );
    r[18 * 5] += 0.1;
    assert!(matches!(
        LinkField::<Su3>::from_reals(3, lat.volume(), &r, 1e-12),
        Err(FieldError::NotInGroup { link: 5, .. })
    ));
    r[18 * 5] = f64::NAN;
    assert!(LinkField::<Su3>::from_reals(3, lat.volume(), &r, 1e-12).is_err());
    let mut short = vec![0.0; 5];
    assert!(u.write_reals(&mut short).is_err());
}

#[test]
fn angle_buffers_and_u1_fields_give_the_same_bits() {
    let lat = Lattice::new(&[4, 6]).unwrap();
    let u = hot::<U1Angle>(&lat, 62);
    let theta: Vec<f64> = u.links().iter().map(|l| l.0).collect();
    let a = plaquette_sum::<U1Angle, _, _>(&lat, theta.as_slice());
    let b = plaquette_sum(&lat, u.links());
    assert_eq!(a.to_bits(), b.to_bits());
    let p = plaquette::<U1Angle, _, _>(&lat, theta.as_slice(), 5, 0, 1).0;
    let d = 2;
    let direct = theta[5 * d] + theta[lat.fwd(5, 0) * d + 1] - theta[lat.fwd(5, 1) * d] - theta[5 * d + 1];
    assert_eq!(p.to_bits(), direct.to_bits());
}

#[test]
fn hot_fields_are_thread_count_independent() {
    let lat = Lattice::new(&[4, 4, 4, 4]).unwrap();
    let make = |threads: usize| {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
            let mut rng = Stream::new(63, 0);
            let u = LinkField::<Su3>::random(4, lat.volume(), &mut rng).unwrap();
            let p = LinkSpace::<Su3>::new(4, lat.volume()).sample_momentum(&u, &mut rng);
            (u, p, rng.state())
        })
    };
    let (u1, p1, s1) = make(1);
    let (u2, p2, s2) = make(2);
    assert_eq!(u1, u2);
    assert_eq!(p1, p2);
    assert_eq!(s1, s2);
}
