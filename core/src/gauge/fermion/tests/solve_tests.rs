//! CG, even–odd solves, the pseudofermion force against finite differences, and
//! thread-count independence.

use super::{hot, noise, op, op_sw};
use crate::gauge::fermion::*;
use crate::gauge::group::{LieAlgebra, U1Angle};

/// a − b, site by site.
fn sub<G: WilsonGroup, const NS: usize>(a: &[SpinorOf<G, NS>], b: &[SpinorOf<G, NS>]) -> Vec<SpinorOf<G, NS>> {
    a.iter().zip(b).map(|(p, q)| Spinor(std::array::from_fn(|s| p.0[s].sub(&q.0[s])))).collect()
}
use crate::gauge::{Su2, Su3};
use crate::rng::Stream;

/// |b − A x| / |b| recomputed independently of the solver.
fn normal_residual<G: WilsonGroup, const NS: usize>(
    d: &WilsonDirac<G, NS>,
    u: &(impl DiracGauge<G> + ?Sized),
    b: &[SpinorOf<G, NS>],
    x: &[SpinorOf<G, NS>],
) -> f64 {
    let v = d.volume();
    let (mut t, mut ax) = (vec![SpinorOf::<G, NS>::default(); v], vec![SpinorOf::<G, NS>::default(); v]);
    d.apply(u, x, &mut t).unwrap();
    d.apply_dagger(u, &t, &mut ax).unwrap();
    let r = sub::<G, NS>(b, &ax);
    (norm2(&r) / norm2(b)).sqrt()
}

fn check_cg<G: WilsonGroup, const NS: usize>(shape: &[i64], kappa: f64, mu: f64, csw: f64, seed: u64) {
    let d = op_sw::<G, NS>(shape, kappa, mu, csw);
    let v = d.volume();
    let u = hot::<G>(d.lattice(), seed);
    let mut cf = d.new_clover_field().unwrap();
    let ug = d.clover_gauge(u.links(), &mut cf).unwrap();
    let eta = noise::<G, NS>(v, seed + 1);
    let mut work = SolverWork::new(v);
    let params = CgParams::new(1e-10, 2000).unwrap();
    // D†D x = η: the reported residual is the true one and meets the target
    let mut x = vec![SpinorOf::<G, NS>::default(); v];
    let rep = d.solve_normal(&ug, &eta, &mut x, &mut work, &params).unwrap();
    let true_res = normal_residual(&d, &ug, &eta, &x);
    assert!(rep.residual <= 1e-10 && true_res <= 1e-10, "{rep:?}, recomputed {true_res:e}");
    assert!((rep.residual - true_res).abs() <= 1e-3 * true_res.max(1e-300) + 1e-15);
    assert!(rep.iterations > 0);
    // the iteration cap gives an error that names the residual reached
    let mut y = vec![SpinorOf::<G, NS>::default(); v];
    let capped = CgParams::new(1e-10, 3).unwrap();
    match d.solve_normal(&ug, &eta, &mut y, &mut work, &capped).unwrap_err() {
        FermionError::NotConverged { iterations, residual, target } => {
            assert_eq!(iterations, 3);
            assert!(residual > 1e-10 && residual.is_finite() && target == 1e-10);
            let e = FermionError::NotConverged { iterations, residual, target }.to_string();
            assert!(e.contains("residual") && e.contains(&format!("{residual:e}")), "{e}");
        }
        e => panic!("expected NotConverged, got {e}"),
    }
    // D ψ = η, full and even–odd, agree, and solve D ψ = η
    let (mut psi, mut psi_eo) = (vec![SpinorOf::<G, NS>::default(); v], vec![SpinorOf::<G, NS>::default(); v]);
    let tight = CgParams::new(1e-12, 4000).unwrap();
    let full = d.solve(&ug, &eta, &mut psi, &mut work, &tight).unwrap();
    let eo = d.solve_eo(&ug, &eta, &mut psi_eo, &mut work, &tight).unwrap();
    let mut dpsi = vec![SpinorOf::<G, NS>::default(); v];
    for p in [&psi, &psi_eo] {
        d.apply(&ug, p, &mut dpsi).unwrap();
        let r = sub::<G, NS>(&eta, &dpsi);
        let rel = (norm2(&r) / norm2(&eta)).sqrt();
        assert!(rel < 1e-9, "|η − Dψ|/|η| = {rel:e}");
    }
    let diff = sub::<G, NS>(&psi, &psi_eo);
    let rel = (norm2(&diff) / norm2(&psi)).sqrt();
    assert!(rel < 1e-9, "full and even–odd solutions differ by {rel:e}");
    assert!(eo.iterations < full.iterations, "even–odd {} vs full {} iterations", eo.iterations, full.iterations);
    // the Schur normal solve meets its target
    let h = v / 2;
    let mut xe = vec![SpinorOf::<G, NS>::default(); h];
    let rep = d.solve_schur_normal(&ug, &eta[..h], &mut xe, &mut work, &params).unwrap();
    let (mut to, mut te, mut ax) =
        (vec![Default::default(); h], vec![Default::default(); h], vec![SpinorOf::<G, NS>::default(); h]);
    d.apply_schur_normal(&ug, &xe, &mut to, &mut te, &mut ax).unwrap();
    let r = sub::<G, NS>(&eta[..h], &ax);
    let rel = (norm2(&r) / norm2(&eta[..h])).sqrt();
    assert!(rel <= 1e-10 && (rel - rep.residual).abs() <= 1e-3 * rel + 1e-15, "{rel:e} vs {rep:?}");
    // b = 0 gives x = 0 without iterating
    let zero = vec![SpinorOf::<G, NS>::default(); v];
    let rep = d.solve_normal(&ug, &zero, &mut x, &mut work, &params).unwrap();
    assert_eq!((rep.iterations, rep.residual), (0, 0.0));
    assert!(x.iter().all(|s| s.norm2() == 0.0));
}

#[test]
fn cg_meets_its_target_caps_and_even_odd_agrees() {
    check_cg::<U1Angle, 2>(&[8, 8], 0.24, 0.0, 0.0, 101);
    check_cg::<Su2, 2>(&[4, 6], 0.2, 0.05, 0.0, 102);
    check_cg::<Su3, 4>(&[2, 2, 2, 4], 0.12, 0.0, 0.0, 103);
    check_cg::<Su3, 4>(&[2, 2, 4, 4], 0.13, 0.1, 0.0, 104);
    // time extent 8: the solves run in the lanes layout
    check_cg::<Su3, 4>(&[2, 2, 2, 8], 0.12, 0.0, 0.0, 107);
    // with a clover term
    check_cg::<U1Angle, 2>(&[6, 4], 0.22, 0.0, 1.5, 105);
    check_cg::<Su3, 4>(&[2, 2, 2, 4], 0.12, 0.05, 1.8, 106);
}

/// The 4-point central difference of f at 0 with step h.
fn derivative(f: impl Fn(f64) -> f64, h: f64) -> f64 {
    (8.0 * (f(h) - f(-h)) - (f(2.0 * h) - f(-2.0 * h))) / (12.0 * h)
}

/// Links moved along a random tangent direction: exp(ε Z_l) U_l.
fn moved<G: WilsonGroup>(u: &[G], z: &[G::Algebra], eps: f64) -> Vec<G> {
    u.iter().zip(z).map(|(l, a)| G::exp(&a.scale(eps)).mul(l)).collect()
}

/// Σ_l F_l · Z_l in the coefficient metric.
fn pair<A: LieAlgebra>(f: &[A], z: &[A]) -> f64 {
    let (mut a, mut b) = (vec![0.0; A::N_GEN], vec![0.0; A::N_GEN]);
    f.iter()
        .zip(z)
        .map(|(x, y)| {
            x.write_coeffs(&mut a);
            y.write_coeffs(&mut b);
            a.iter().zip(&b).map(|(p, q)| p * q).sum::<f64>()
        })
        .sum()
}

fn check_force<G: WilsonGroup, const NS: usize>(shape: &[i64], kappa: f64, mu: f64, csw: f64, seed: u64) {
    let d = op_sw::<G, NS>(shape, kappa, mu, csw);
    let v = d.volume();
    let h = v / 2;
    let u = hot::<G>(d.lattice(), seed);
    let phi = noise::<G, NS>(v, seed + 1);
    let mut work = SolverWork::new(v);
    let tight = CgParams::new(1e-13, 10_000).unwrap();
    let action = |links: &[G], work: &mut SolverWork<SpinorOf<G, NS>>| -> f64 {
        let mut x = vec![SpinorOf::<G, NS>::default(); v];
        let mut cf = d.new_clover_field().unwrap();
        let g = d.clover_gauge(links, &mut cf).unwrap();
        d.solve_normal(&g, &phi, &mut x, work, &tight).unwrap();
        re_dot(&phi, &x)
    };
    let action_eo = |links: &[G], work: &mut SolverWork<SpinorOf<G, NS>>| -> f64 {
        let mut x = vec![SpinorOf::<G, NS>::default(); h];
        let mut cf = d.new_clover_field().unwrap();
        let g = d.clover_gauge(links, &mut cf).unwrap();
        d.solve_schur_normal(&g, &phi[..h], &mut x, work, &tight).unwrap();
        re_dot(&phi[..h], &x)
    };
    // the forces at u
    let mut cf = d.new_clover_field().unwrap();
    let ug = d.clover_gauge(u.links(), &mut cf).unwrap();
    let mut x = vec![SpinorOf::<G, NS>::default(); v];
    let mut y = vec![SpinorOf::<G, NS>::default(); v];
    d.solve_normal(&ug, &phi, &mut x, &mut work, &tight).unwrap();
    d.apply(&ug, &x, &mut y).unwrap();
    let mut f = vec![G::Algebra::zero(); v * NS];
    d.force(&ug, &x, &y, &mut f).unwrap();
    let (mut xe, mut ye, mut tmp) =
        (vec![SpinorOf::<G, NS>::default(); h], vec![Default::default(); h], vec![Default::default(); h]);
    d.solve_schur_normal(&ug, &phi[..h], &mut xe, &mut work, &tight).unwrap();
    d.apply_schur(&ug, &xe, &mut tmp, &mut ye).unwrap();
    let mut f_eo = vec![G::Algebra::zero(); v * NS];
    d.force_eo(&ug, &xe, &ye, &mut work, &mut f_eo).unwrap();
    let mut rng = Stream::new(seed + 2, 9);
    for _ in 0..2 {
        let z: Vec<G::Algebra> = (0..v * NS).map(|_| G::Algebra::gaussian(&mut rng)).collect();
        let fd = derivative(|e| action(&moved(u.links(), &z, e), &mut SolverWork::new(v)), 1e-3);
        let an = pair(&f, &z);
        assert!((fd - an).abs() < 1e-7 * fd.abs().max(1.0), "force: finite difference {fd} vs {an}");
        let fd = derivative(|e| action_eo(&moved(u.links(), &z, e), &mut SolverWork::new(v)), 1e-3);
        let an = pair(&f_eo, &z);
        assert!((fd - an).abs() < 1e-7 * fd.abs().max(1.0), "even–odd force: finite difference {fd} vs {an}");
    }
    // one link, one generator: the last time-direction link at t = T − 1 crosses the boundary
    let l = (v - 1) * NS + NS - 1;
    let mut z = vec![G::Algebra::zero(); v * NS];
    let mut c = vec![0.0; G::Algebra::N_GEN];
    c[0] = 1.0;
    z[l] = G::Algebra::from_coeffs(&c);
    let fd = derivative(|e| action(&moved(u.links(), &z, e), &mut SolverWork::new(v)), 1e-3);
    assert!((fd - pair(&f, &z)).abs() < 1e-7 * fd.abs().max(1.0), "boundary link: {fd} vs {}", pair(&f, &z));
}

#[test]
fn force_matches_finite_differences() {
    check_force::<U1Angle, 2>(&[4, 4], 0.22, 0.0, 0.0, 201);
    check_force::<Su2, 2>(&[4, 4], 0.2, 0.15, 0.0, 202);
    check_force::<Su3, 2>(&[4, 4], 0.21, 0.0, 0.0, 203);
    check_force::<Su3, 4>(&[2, 2, 2, 2], 0.12, 0.08, 0.0, 204);
    // with a clover term
    check_force::<U1Angle, 2>(&[4, 4], 0.2, 0.0, 1.4, 205);
    check_force::<Su2, 2>(&[4, 4], 0.19, 0.1, 1.2, 206);
    check_force::<Su3, 4>(&[2, 2, 2, 2], 0.11, 0.05, 1.6, 207);
}

/// Solves, forces and the operator under 1 and 2 threads: the same bits.
fn run_all<G: WilsonGroup, const NS: usize>(shape: &[i64], kappa: f64, threads: usize) -> Vec<f64> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
        let d = op::<G, NS>(shape, kappa, 0.1);
        let v = d.volume();
        let u = hot::<G>(d.lattice(), 301);
        let eta = noise::<G, NS>(v, 302);
        let mut work = SolverWork::new(v);
        let params = CgParams::new(1e-9, 5000).unwrap();
        let (mut x, mut y, mut psi) =
            (vec![SpinorOf::<G, NS>::default(); v], vec![Default::default(); v], vec![Default::default(); v]);
        let rep = d.solve_normal(u.links(), &eta, &mut x, &mut work, &params).unwrap();
        d.apply(u.links(), &x, &mut y).unwrap();
        let mut f = vec![G::Algebra::zero(); v * NS];
        d.force(u.links(), &x, &y, &mut f).unwrap();
        let rep_eo = d.solve_eo(u.links(), &eta, &mut psi, &mut work, &params).unwrap();
        let mut out: Vec<f64> = crate::gauge::flat::reals(&x).to_vec();
        out.extend_from_slice(crate::gauge::flat::reals(&psi));
        let mut c = vec![0.0; G::Algebra::N_GEN];
        for a in &f {
            a.write_coeffs(&mut c);
            out.extend_from_slice(&c);
        }
        out.extend([rep.residual, rep_eo.residual, rep.iterations as f64, rep_eo.iterations as f64]);
        out
    })
}

#[test]
fn results_are_bit_identical_for_one_and_two_threads() {
    // 128 × 64 sites: above the parallel thresholds of both the site loops and the reductions
    let a = run_all::<U1Angle, 2>(&[128, 64], 0.2, 1);
    let b = run_all::<U1Angle, 2>(&[128, 64], 0.2, 2);
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()) && a.len() == b.len());
    let a = run_all::<Su3, 4>(&[4, 4, 4, 8], 0.11, 1);
    let b = run_all::<Su3, 4>(&[4, 4, 4, 8], 0.11, 2);
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()) && a.len() == b.len());
}

/// A Hasenbusch ratio S = φ†D₂(D₁†D₁)⁻¹D₂†φ (and its even–odd form with D̂): the force
/// D₁.force(X, Y) − D₂.force(X, φ) with X = (D₁†D₁)⁻¹D₂†φ, Y = D₁X, against a finite
/// difference; and `add_force` accumulates.
fn check_hasenbusch<G: WilsonGroup, const NS: usize>(shape: &[i64], k1: f64, k2: f64, csw: f64, seed: u64) {
    let (d1, d2) = (op_sw::<G, NS>(shape, k1, 0.05, csw), op_sw::<G, NS>(shape, k2, 0.05, csw));
    let (v, h) = (d1.volume(), d1.volume() / 2);
    let u = hot::<G>(d1.lattice(), seed);
    let phi = noise::<G, NS>(v, seed + 1);
    let tight = CgParams::new(1e-13, 10_000).unwrap();
    // (X, Y, φ) of the full and the even–odd ratio at some links
    let solve = |links: &[G], eo: bool| -> (Vec<SpinorOf<G, NS>>, Vec<SpinorOf<G, NS>>, f64) {
        let (mut c1, mut c2) = (d1.new_clover_field().unwrap(), d2.new_clover_field().unwrap());
        let (g1, g2) = (d1.clover_gauge(links, &mut c1).unwrap(), d2.clover_gauge(links, &mut c2).unwrap());
        let mut work = SolverWork::new(v);
        let n = if eo { h } else { v };
        let (mut chi, mut x, mut y, mut tmp) =
            (phi[..n].to_vec(), phi[..n].to_vec(), phi[..n].to_vec(), phi[..h].to_vec());
        x.iter_mut().for_each(|s| *s = Default::default());
        if eo {
            d2.apply_schur_dagger(&g2, &phi[..h], &mut tmp, &mut chi).unwrap();
            d1.solve_schur_normal(&g1, &chi, &mut x, &mut work, &tight).unwrap();
            d1.apply_schur(&g1, &x, &mut tmp, &mut y).unwrap();
        } else {
            d2.apply_dagger(&g2, &phi, &mut chi).unwrap();
            d1.solve_normal(&g1, &chi, &mut x, &mut work, &tight).unwrap();
            d1.apply(&g1, &x, &mut y).unwrap();
        }
        let s = re_dot(&chi, &x);
        (x, y, s)
    };
    let mut rng = Stream::new(seed + 2, 5);
    for eo in [false, true] {
        let (x, y, _) = solve(u.links(), eo);
        let (mut c1, mut c2) = (d1.new_clover_field().unwrap(), d2.new_clover_field().unwrap());
        let (g1, g2) = (d1.clover_gauge(u.links(), &mut c1).unwrap(), d2.clover_gauge(u.links(), &mut c2).unwrap());
        let mut work = SolverWork::new(v);
        let mut f = vec![G::Algebra::zero(); v * NS];
        let n = x.len();
        if eo {
            d1.force_eo(&g1, &x, &y, &mut work, &mut f).unwrap();
            d2.add_force_eo(&g2, &x, &phi[..n], -1.0, &mut work, &mut f).unwrap();
        } else {
            d1.force(&g1, &x, &y, &mut f).unwrap();
            d2.add_force(&g2, &x, &phi, -1.0, &mut f).unwrap();
        }
        let z: Vec<G::Algebra> = (0..v * NS).map(|_| G::Algebra::gaussian(&mut rng)).collect();
        let fd = derivative(|e| solve(&moved(u.links(), &z, e), eo).2, 1e-3);
        let an = pair(&f, &z);
        assert!((fd - an).abs() < 1e-7 * fd.abs().max(1.0), "Hasenbusch (eo {eo}): finite difference {fd} vs {an}");
        // add_force accumulates: F + 2F = 3F
        if !eo {
            let mut f1 = vec![G::Algebra::zero(); v * NS];
            d1.force(&g1, &x, &y, &mut f1).unwrap();
            let mut acc = f1.clone();
            d1.add_force(&g1, &x, &y, 2.0, &mut acc).unwrap();
            for (a, b) in acc.iter().zip(&f1) {
                let mut diff = *a;
                diff.axpy(-3.0, b);
                assert!(diff.norm2() <= 1e-24 * (1.0 + b.norm2()));
            }
        }
    }
}

#[test]
fn hasenbusch_ratio_force_matches_finite_differences() {
    check_hasenbusch::<U1Angle, 2>(&[4, 4], 0.22, 0.18, 0.0, 501);
    check_hasenbusch::<Su2, 2>(&[4, 4], 0.21, 0.17, 1.1, 502);
    check_hasenbusch::<Su3, 4>(&[2, 2, 2, 2], 0.12, 0.1, 1.4, 503);
}

#[test]
fn cg_refuses_bad_work_space_and_reports_breakdown() {
    let b = noise::<U1Angle, 2>(16, 601);
    let mut x = vec![SpinorOf::<U1Angle, 2>::default(); 16];
    let params = CgParams::new(1e-10, 50).unwrap();
    // an operator that is not positive definite: −1
    let neg = |v: &[SpinorOf<U1Angle, 2>], out: &mut [SpinorOf<U1Angle, 2>]| {
        for (o, i) in out.iter_mut().zip(v) {
            *o = Spinor(std::array::from_fn(|s| i.0[s].scale(-1.0)));
        }
        Ok(())
    };
    match cg(neg, &b, &mut x, &mut CgWork::new(16), &params).unwrap_err() {
        FermionError::NotConverged { iterations, residual, .. } => assert!(iterations == 1 && residual == 1.0),
        e => panic!("expected NotConverged, got {e}"),
    }
    // the identity converges in one iteration to x = b
    let id = |v: &[SpinorOf<U1Angle, 2>], out: &mut [SpinorOf<U1Angle, 2>]| {
        out.copy_from_slice(v);
        Ok(())
    };
    let rep = cg(id, &b, &mut x, &mut CgWork::new(16), &params).unwrap();
    assert!(rep.iterations == 1 && rep.residual <= 1e-15 && x == b);
    // work space and solution of the wrong size
    assert!(matches!(cg(id, &b, &mut x, &mut CgWork::new(8), &params).unwrap_err(), FermionError::Length { .. }));
    assert!(matches!(cg(id, &b, &mut x[..8], &mut CgWork::new(16), &params).unwrap_err(), FermionError::Length { .. }));
    let d = op::<U1Angle, 2>(&[4, 4], 0.2, 0.0);
    let u = hot::<U1Angle>(d.lattice(), 602);
    let e = d.solve_normal(u.links(), &b, &mut x, &mut SolverWork::new(8), &params).unwrap_err();
    assert!(matches!(e, FermionError::Length { .. }) && e.to_string().contains("work"), "{e}");
}
