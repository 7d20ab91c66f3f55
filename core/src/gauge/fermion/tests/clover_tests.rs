//! The clover term: its leaves, the even–odd determinant factorisation, the force of the
//! clover determinant term, and misuse.

use super::dense::Dense;
use super::{hot, noise, op_sw};
use crate::gauge::complex::Complex;
use crate::gauge::fermion::*;
use crate::gauge::group::{GaugeGroup, LieAlgebra, U1Angle};
use crate::gauge::{plaquette, Su2, Su3};
use crate::rng::Stream;

#[test]
fn u1_clover_leaves_are_the_four_plaquettes_at_a_site() {
    let d = op_sw::<U1Angle, 2>(&[4, 6], 0.2, 0.0, 1.0);
    let lat = d.lattice().clone();
    let u = hot::<U1Angle>(&lat, 401);
    for x in 0..lat.volume() {
        let (xm, xn) = (lat.bwd(x, 0), lat.bwd(x, 1));
        let want = [x, xm, lat.bwd(xm, 1), xn]
            .iter()
            .fold(Complex::ZERO, |q, &z| q + Complex::cis(plaquette(&lat, u.links(), z, 0, 1).0));
        let q = d.clover_leaves(u.links(), x, 0, 1);
        assert!((q - want).abs() < 1e-13, "site {x}: {q:?} vs {want:?}");
    }
}

/// det(D†D) = det(A_oo†A_oo) · det(D̂†D̂), by dense determinants, with clover and twist.
fn check_factorisation<G: WilsonGroup, const NS: usize>(shape: &[i64], kappa: f64, mu: f64, csw: f64, seed: u64) {
    let d = op_sw::<G, NS>(shape, kappa, mu, csw);
    let (v, h) = (d.volume(), d.volume() / 2);
    let u = hot::<G>(d.lattice(), seed);
    let mut cf = d.new_clover_field().unwrap();
    let g = d.clover_gauge(u.links(), &mut cf).unwrap();
    let (full, _) = Dense::of::<G::Colour, NS>(v, |x, out| d.apply(&g, x, out).unwrap()).log_det();
    let mut tmp = vec![SpinorOf::<G, NS>::default(); h];
    let (schur, _) = Dense::of::<G::Colour, NS>(h, |x, out| d.apply_schur(&g, x, &mut tmp, out).unwrap()).log_det();
    let odd = d.clover_log_det(&g, Some(1)).unwrap();
    let even = d.clover_log_det(&g, Some(0)).unwrap();
    assert!((d.clover_log_det(&g, None).unwrap() - odd - even).abs() < 1e-12);
    // 2 ln|det D| = ln det(A_oo†A_oo) + 2 ln|det D̂|
    assert!((2.0 * full - odd - 2.0 * schur).abs() < 1e-9, "{} vs {} + {}", 2.0 * full, odd, 2.0 * schur);
}

#[test]
fn even_odd_determinant_factorises_with_the_clover_term() {
    check_factorisation::<U1Angle, 2>(&[4, 4], 0.22, 0.0, 1.5, 411);
    check_factorisation::<Su2, 2>(&[4, 4], 0.2, 0.3, 1.1, 412);
    check_factorisation::<Su3, 4>(&[2, 2, 2, 2], 0.13, 0.2, 1.7, 413);
}

/// The force of S_det = −Σ_{x odd} ln det(A†A) against a finite difference.
fn check_log_det_force<G: WilsonGroup, const NS: usize>(shape: &[i64], kappa: f64, mu: f64, csw: f64, seed: u64) {
    let d = op_sw::<G, NS>(shape, kappa, mu, csw);
    let v = d.volume();
    let u = hot::<G>(d.lattice(), seed);
    let s_det = |links: &[G], parity: Option<usize>| {
        let mut cf = d.new_clover_field().unwrap();
        let g = d.clover_gauge(links, &mut cf).unwrap();
        -d.clover_log_det(&g, parity).unwrap()
    };
    let mut cf = d.new_clover_field().unwrap();
    let g = d.clover_gauge(u.links(), &mut cf).unwrap();
    let mut rng = Stream::new(seed + 1, 4);
    for parity in [Some(1), None] {
        let mut f = vec![G::Algebra::zero(); v * NS];
        d.clover_log_det_force(&g, parity, &mut f).unwrap();
        let z: Vec<G::Algebra> = (0..v * NS).map(|_| G::Algebra::gaussian(&mut rng)).collect();
        let moved = |e: f64| -> Vec<G> { u.links().iter().zip(&z).map(|(l, a)| G::exp(&a.scale(e)).mul(l)).collect() };
        let h = 1e-3;
        let fd = (8.0 * (s_det(&moved(h), parity) - s_det(&moved(-h), parity))
            - (s_det(&moved(2.0 * h), parity) - s_det(&moved(-2.0 * h), parity)))
            / (12.0 * h);
        let mut c = (vec![0.0; G::Algebra::N_GEN], vec![0.0; G::Algebra::N_GEN]);
        let an: f64 = f
            .iter()
            .zip(&z)
            .map(|(p, q)| {
                p.write_coeffs(&mut c.0);
                q.write_coeffs(&mut c.1);
                c.0.iter().zip(&c.1).map(|(a, b)| a * b).sum::<f64>()
            })
            .sum();
        assert!((fd - an).abs() < 1e-7 * fd.abs().max(1.0), "{parity:?}: finite difference {fd} vs {an}");
        assert!(an.abs() > 1e-6, "the clover determinant must depend on the links");
    }
}

#[test]
fn clover_determinant_force_matches_finite_differences() {
    check_log_det_force::<U1Angle, 2>(&[4, 4], 0.2, 0.0, 1.3, 421);
    check_log_det_force::<Su2, 4>(&[2, 2, 2, 2], 0.12, 0.1, 1.5, 422);
    check_log_det_force::<Su3, 4>(&[2, 2, 2, 2], 0.125, 0.0, 1.9, 423);
}

#[test]
fn clover_misuse_is_an_error() {
    let d = op_sw::<Su3, 4>(&[2, 2, 2, 4], 0.12, 0.0, 1.5);
    let v = d.volume();
    let u = hot::<Su3>(d.lattice(), 431);
    let psi = noise::<Su3, 4>(v, 432);
    let mut out = psi.clone();
    // bare links for an operator with c_sw ≠ 0
    let e = d.apply(u.links(), &psi, &mut out).unwrap_err();
    assert_eq!(e, FermionError::MissingClover);
    assert!(e.to_string().contains("clover_gauge"));
    // a clover field made by an operator with other parameters
    let other = op_sw::<Su3, 4>(&[2, 2, 2, 4], 0.12, 0.0, 1.4);
    let mut cf = other.new_clover_field().unwrap();
    assert_eq!(d.clover_gauge(u.links(), &mut cf).unwrap_err(), FermionError::CloverMismatch);
    let g = other.clover_gauge(u.links(), &mut cf).unwrap();
    assert_eq!(d.apply(&g, &psi, &mut out).unwrap_err(), FermionError::CloverMismatch);
    // blocks too large: SU(5) in 4D needs 10×10
    let big = op_sw::<crate::gauge::SuN<5>, 4>(&[2, 2, 2, 2], 0.1, 0.0, 1.0);
    assert!(matches!(big.new_clover_field().unwrap_err(), FermionError::CloverBlock { block: 10, max: 8 }));
    // c_sw = 0 ignores a clover field, so both kinds of gauge data give the same bits
    let plain = op_sw::<Su3, 4>(&[2, 2, 2, 4], 0.12, 0.3, 0.0);
    let mut cf0 = plain.new_clover_field().unwrap();
    let g0 = plain.clover_gauge(u.links(), &mut cf0).unwrap();
    let mut out2 = psi.clone();
    plain.apply(&g0, &psi, &mut out).unwrap();
    plain.apply(u.links(), &psi, &mut out2).unwrap();
    assert_eq!(out, out2);
}

#[test]
fn clover_results_are_bit_identical_for_one_and_two_threads() {
    let run = |threads: usize| -> Vec<f64> {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
            let d = op_sw::<Su3, 4>(&[4, 4, 4, 8], 0.12, 0.05, 1.7);
            let v = d.volume();
            let u = hot::<Su3>(d.lattice(), 441);
            let mut cf = d.new_clover_field().unwrap();
            let g = d.clover_gauge(u.links(), &mut cf).unwrap();
            let eta = noise::<Su3, 4>(v, 442);
            let mut work = SolverWork::new(v);
            let mut psi = vec![SpinorOf::<Su3, 4>::default(); v];
            d.solve_eo(&g, &eta, &mut psi, &mut work, &CgParams::new(1e-9, 5000).unwrap()).unwrap();
            let mut f = vec![<Su3 as GaugeGroup>::Algebra::zero(); v * 4];
            d.force(&g, &psi, &eta, &mut f).unwrap();
            let mut out = crate::gauge::flat::reals(&psi).to_vec();
            out.extend_from_slice(crate::gauge::flat::reals(&f));
            out.push(d.clover_log_det(&g, Some(1)).unwrap());
            d.clover_log_det_force(&g, Some(1), &mut f).unwrap();
            out.extend_from_slice(crate::gauge::flat::reals(&f));
            out
        })
    };
    let (a, b) = (run(1), run(2));
    assert!(a.len() == b.len() && a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
}
