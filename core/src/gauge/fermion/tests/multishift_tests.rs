//! Multi-shift CG ([`crate::gauge::fermion::multishift`]): every shift's solution against a
//! plain CG solve of its own system, true residuals, zero sources, thread counts and bad input.

use super::{hot, noise, op};
use crate::gauge::fermion::*;
use crate::gauge::group::U1Angle;
use crate::gauge::Su3;

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

/// |b − (D†D + σ) x| / |b| with the operator applied afresh.
fn residual<G: WilsonGroup, const NS: usize>(d: &WilsonDirac<G, NS>, u: &[G], sigma: f64, b: &[SpinorOf<G, NS>], x: &[SpinorOf<G, NS>]) -> f64 {
    let n = x.len();
    let (mut t, mut ax) = (vec![SpinorOf::<G, NS>::default(); n], vec![SpinorOf::<G, NS>::default(); n]);
    d.apply_normal(u, x, &mut t, &mut ax).unwrap();
    axpy(sigma, x, &mut ax);
    let mut r = b.to_vec();
    axpy(-1.0, &ax, &mut r);
    (norm2(&r) / norm2(b)).sqrt()
}

/// Multi-shift solutions of (D†D + σ_k) x_k = b against plain CG per shift, on `threads`.
fn check<G: WilsonGroup, const NS: usize>(shape: &[i64], kappa: f64, shifts: &[f64], seed: u64) {
    let d = op::<G, NS>(shape, kappa, 0.0);
    let v = d.volume();
    let u = hot::<G>(d.lattice(), seed);
    let b = noise::<G, NS>(v, seed + 1);
    let tol = 1e-11;
    let p = CgParams::new(tol, 5000).unwrap();
    let mut t0 = vec![SpinorOf::<G, NS>::default(); v];
    let mut normal = |x: &[SpinorOf<G, NS>], out: &mut [SpinorOf<G, NS>]| {
        d.apply(u.links(), x, &mut t0)?;
        d.apply_dagger(u.links(), &t0, out)
    };
    let mut work = MultiShiftWork::new(v, shifts.len());
    // garbage on entry: multi-shift CG ignores it
    let mut xs = vec![noise::<G, NS>(v, seed + 2); shifts.len()];
    let reps = multi_shift_cg(&mut normal, shifts, &b, &mut xs, &mut work, &p).unwrap();
    let base_iters = reps.iter().map(|r| r.iterations).min().unwrap();
    let mut cgw = CgWork::new(v);
    for (k, &sigma) in shifts.iter().enumerate() {
        let r = residual(&d, u.links(), sigma, &b, &xs[k]);
        assert!(reps[k].residual <= tol && r <= tol, "{shape:?} shift {sigma}: {r:e}, {:?}", reps[k]);
        assert!((r - reps[k].residual).abs() <= 1e-3 * r + 1e-15, "{r:e} vs {:?}", reps[k]);
        let mut x = vec![SpinorOf::<G, NS>::default(); v];
        let mut shifted = |v: &[SpinorOf<G, NS>], out: &mut [SpinorOf<G, NS>]| {
            normal(v, out)?;
            axpy(sigma, v, out);
            Ok(())
        };
        let rep = cg(&mut shifted, &b, &mut x, &mut cgw, &p).unwrap();
        let mut diff = x.clone();
        axpy(-1.0, &xs[k], &mut diff);
        let rel = (norm2(&diff) / norm2(&x)).sqrt();
        println!("{shape:?} shift {sigma}: CG {} its, multi-shift {:?}, |x − x_cg|/|x| = {rel:.1e}", rep.iterations, reps[k]);
        assert!(rel < 1e-8, "shift {sigma}: {rel:e}");
        // the larger the shift, the better conditioned: no shift needs more than the base's
        // shared iterations plus a short refinement
        assert!(reps[k].iterations <= base_iters + rep.iterations / 4 + 2, "{:?} vs CG {}", reps[k], rep.iterations);
    }
}

#[test]
fn multi_shift_solutions_agree_with_plain_cg_per_shift() {
    check::<U1Angle, 2>(&[8, 8], 0.24, &[0.3, 0.0, 50.0, 0.01, 2.0], 301);
    check::<Su3, 4>(&[2, 2, 2, 4], 0.12, &[1e-3, 0.1, 0.0, 5.0], 311);
    // one shift: plain CG on A + σ
    check::<U1Angle, 2>(&[4, 6], 0.2, &[0.5], 321);
}

#[test]
fn multi_shift_gives_the_same_bits_on_any_thread_count() {
    let d = op::<U1Angle, 2>(&[32, 32], 0.2, 0.0);
    let v = d.volume();
    let u = hot::<U1Angle>(d.lattice(), 331);
    let b = noise::<U1Angle, 2>(v, 332);
    let shifts = [0.0, 0.05, 1.0];
    let solve = || {
        let mut t = vec![SpinorOf::<U1Angle, 2>::default(); v];
        let mut normal = |x: &[SpinorOf<U1Angle, 2>], out: &mut [SpinorOf<U1Angle, 2>]| {
            d.apply(u.links(), x, &mut t)?;
            d.apply_dagger(u.links(), &t, out)
        };
        let mut xs = vec![vec![SpinorOf::<U1Angle, 2>::default(); v]; 3];
        let reps = multi_shift_cg(&mut normal, &shifts, &b, &mut xs, &mut MultiShiftWork::new(v, 3), &CgParams::new(1e-10, 2000).unwrap()).unwrap();
        (xs, reps)
    };
    let (a, b2) = (in_pool(1, solve), in_pool(2, solve));
    assert_eq!(a.1, b2.1);
    let bits = |xs: &[Vec<SpinorOf<U1Angle, 2>>]| xs.iter().flat_map(|x| bytemuck::cast_slice::<_, f64>(x).iter().map(|v| v.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>();
    assert_eq!(bits(&a.0), bits(&b2.0));
}

#[test]
fn multi_shift_zero_source_and_bad_input() {
    let d = op::<U1Angle, 2>(&[4, 4], 0.2, 0.0);
    let v = d.volume();
    let u = hot::<U1Angle>(d.lattice(), 341);
    let mut t = vec![SpinorOf::<U1Angle, 2>::default(); v];
    let mut normal = |x: &[SpinorOf<U1Angle, 2>], out: &mut [SpinorOf<U1Angle, 2>]| {
        d.apply(u.links(), x, &mut t)?;
        d.apply_dagger(u.links(), &t, out)
    };
    let p = CgParams::new(1e-10, 1000).unwrap();
    let mut work = MultiShiftWork::new(v, 2);
    let zero = vec![SpinorOf::<U1Angle, 2>::default(); v];
    let mut xs = vec![noise::<U1Angle, 2>(v, 342); 2];
    let reps = multi_shift_cg(&mut normal, &[0.0, 1.0], &zero, &mut xs, &mut work, &p).unwrap();
    assert!(reps.iter().all(|r| r.iterations == 0 && r.residual == 0.0));
    assert!(xs.iter().all(|x| norm2(x) == 0.0));
    let b = noise::<U1Angle, 2>(v, 343);
    for bad in [-0.1, f64::NAN, f64::INFINITY] {
        let e = multi_shift_cg(&mut normal, &[0.0, bad], &b, &mut xs, &mut work, &p).unwrap_err();
        assert!(matches!(e, FermionError::Shift(_)) && e.to_string().contains("shift"), "{e}");
    }
    // one solution per shift, work space for as many shifts
    let e = multi_shift_cg(&mut normal, &[0.0], &b, &mut xs, &mut work, &p).unwrap_err();
    assert!(matches!(e, FermionError::Length { .. }), "{e}");
    let mut three = vec![vec![SpinorOf::<U1Angle, 2>::default(); v]; 3];
    let e = multi_shift_cg(&mut normal, &[0.0, 1.0, 2.0], &b, &mut three, &mut work, &p).unwrap_err();
    assert!(matches!(e, FermionError::Length { .. }), "{e}");
    // no shifts: nothing to do
    assert!(multi_shift_cg(&mut normal, &[], &b, &mut [], &mut work, &p).unwrap().is_empty());
    // an iteration cap too small: an error with the residual reached
    let e = multi_shift_cg(&mut normal, &[0.0, 1.0], &b, &mut xs, &mut work, &CgParams::new(1e-12, 3).unwrap()).unwrap_err();
    assert!(matches!(e, FermionError::NotConverged { iterations: 3, .. }), "{e}");
}
