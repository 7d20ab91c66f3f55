//! The lanes layout ([`crate::gauge::fermion::lanes`]): its operators against the per-site
//! ones bit for bit, its packing, and the solves that run in it.

use super::{hot, noise, op};
use crate::gauge::fermion::lanes::{LaneDirac, LaneLayout, SpinorLanes, lanes_simd_level, LANES};
use crate::gauge::fermion::*;
use crate::gauge::Su3;
use crate::lattice::Lattice;

type Field = Vec<SpinorOf<Su3, 4>>;

fn records(f: &[SpinorOf<Su3, 4>]) -> &[[f64; 24]] {
    bytemuck::cast_slice(bytemuck::cast_slice::<_, f64>(f))
}

fn records_mut(f: &mut [SpinorOf<Su3, 4>]) -> &mut [[f64; 24]] {
    bytemuck::cast_slice_mut(bytemuck::cast_slice_mut::<_, f64>(f))
}

fn same_bits(a: &[SpinorOf<Su3, 4>], b: &[SpinorOf<Su3, 4>]) -> bool {
    let (a, b): (&[f64], &[f64]) = (bytemuck::cast_slice(a), bytemuck::cast_slice(b));
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

/// D, D† (and with every extent even D̂, D̂†) in the lanes layout, at every compiled level and
/// on 1 and 2 threads, unpacked: the per-site operators' bits. Packing round-trips.
fn check_bits(shape: &[i64], kappa: f64, seed: u64) {
    let d = op::<Su3, 4>(shape, kappa, 0.0);
    let (v, h) = (d.volume(), d.volume() / 2);
    let u = hot::<Su3>(d.lattice(), seed);
    let psi = noise::<Su3, 4>(v, seed + 1);
    let layout = LaneLayout::new(d.lattice()).expect("a lanes layout");
    assert_eq!(layout.outer_sites() * LANES, v);
    let (mut want, mut back) = (vec![SpinorOf::<Su3, 4>::default(); v], vec![SpinorOf::<Su3, 4>::default(); v]);
    let even = d.lattice().shape().iter().all(|e| e % 2 == 0);
    for level in 0..=lanes_simd_level() {
        for threads in [1, 2] {
            in_pool(threads, || {
                let mut ld = LaneDirac::new(layout.clone(), kappa, level);
                ld.set_links(bytemuck::cast_slice(u.links())).unwrap();
                let n = layout.outer_sites();
                let (mut pb, mut ob, mut tb) =
                    (vec![SpinorLanes::default(); n], vec![SpinorLanes::default(); n], vec![SpinorLanes::default(); n]);
                ld.pack_full(records(&psi), &mut pb).unwrap();
                ld.unpack_full(&pb, records_mut(&mut back)).unwrap();
                assert!(same_bits(&back, &psi), "full pack round trip, {shape:?}");
                for dag in [false, true] {
                    if dag {
                        d.apply_dagger(u.links(), &psi, &mut want).unwrap();
                    } else {
                        d.apply(u.links(), &psi, &mut want).unwrap();
                    }
                    ld.apply(&pb, &mut ob, dag).unwrap();
                    ld.unpack_full(&ob, records_mut(&mut back)).unwrap();
                    assert!(same_bits(&back, &want), "D (dag {dag}) on {shape:?}, level {level}, {threads} threads");
                }
                // D†D
                let mut t = want.clone();
                d.apply_normal(u.links(), &psi, &mut t, &mut want).unwrap();
                ld.apply_normal(&pb, &mut tb, &mut ob).unwrap();
                ld.unpack_full(&ob, records_mut(&mut back)).unwrap();
                assert!(same_bits(&back, &want), "D†D on {shape:?}, level {level}");
                if !even {
                    return;
                }
                let (psi_e, mut want_e, mut back_e) = (psi[..h].to_vec(), want[..h].to_vec(), want[..h].to_vec());
                let mut to = want_e.clone();
                let (mut pe, mut oe, mut te) =
                    (vec![SpinorLanes::default(); n / 2], vec![SpinorLanes::default(); n / 2], vec![SpinorLanes::default(); n / 2]);
                ld.pack_half(false, records(&psi_e), &mut pe).unwrap();
                ld.unpack_half(&pe, records_mut(&mut back_e)).unwrap();
                assert!(same_bits(&back_e, &psi_e), "half pack round trip, {shape:?}");
                let psi_o = psi[h..].to_vec();
                ld.pack_half(true, records(&psi_o), &mut te).unwrap();
                ld.unpack_half(&te, records_mut(&mut back_e)).unwrap();
                assert!(same_bits(&back_e, &psi_o), "odd half pack round trip, {shape:?}");
                for dag in [false, true] {
                    if dag {
                        d.apply_schur_dagger(u.links(), &psi_e, &mut to, &mut want_e).unwrap();
                    } else {
                        d.apply_schur(u.links(), &psi_e, &mut to, &mut want_e).unwrap();
                    }
                    ld.schur(&pe, &mut te, &mut oe, dag).unwrap();
                    ld.unpack_half(&oe, records_mut(&mut back_e)).unwrap();
                    assert!(same_bits(&back_e, &want_e), "D̂ (dag {dag}) on {shape:?}, level {level}, {threads} threads");
                }
            });
        }
    }
}

#[test]
fn lanes_operators_give_the_per_site_bits() {
    // q = L/4 = 2, 4, 6; one shape with odd extents (full lattice only)
    check_bits(&[2, 2, 2, 8], 0.12, 11);
    check_bits(&[4, 2, 6, 16], 0.13, 12);
    check_bits(&[2, 4, 2, 24], 0.11, 13);
    check_bits(&[3, 2, 5, 8], 0.12, 14);
}

#[test]
fn the_layout_applies_only_where_it_can() {
    for shape in [&[4i64, 4, 4, 4][..], &[4, 4, 4, 12], &[8, 8, 8, 6], &[8, 8]] {
        assert!(LaneLayout::new(&Lattice::new(shape).unwrap()).is_none(), "{shape:?}");
    }
    assert!(LaneLayout::new(&Lattice::new(&[2, 2, 2, 16]).unwrap()).is_some());
    // wrong lengths are errors, not panics
    let layout = LaneLayout::new(&Lattice::new(&[2, 2, 2, 8]).unwrap()).unwrap();
    let mut ld = LaneDirac::new(layout, 0.1, 0);
    assert!(matches!(ld.set_links(&[0.0; 7]), Err(FermionError::Length { .. })));
    let n = 2 * 2 * 2 * 8 / LANES;
    let (a, mut b) = (vec![SpinorLanes::default(); n], vec![SpinorLanes::default(); n - 1]);
    assert!(matches!(ld.apply(&a, &mut b, false), Err(FermionError::Length { .. })));
    assert!(matches!(ld.pack_full(&[[0.0; 24]; 3], &mut b), Err(FermionError::Length { .. })));
    let mut c = vec![SpinorLanes::default(); n / 2];
    assert!(matches!(ld.schur(&c.clone(), &mut b, &mut c, false), Err(FermionError::Length { .. })));
}

/// |b − A x| / |b| with the per-site operators (A = D̂†D̂ on half fields, else D†D).
fn residual(d: &WilsonDirac<Su3, 4>, u: &[Su3], b: &[SpinorOf<Su3, 4>], x: &[SpinorOf<Su3, 4>]) -> f64 {
    let n = x.len();
    let (mut t0, mut t1, mut ax) = (vec![Default::default(); n], vec![Default::default(); n], vec![SpinorOf::<Su3, 4>::default(); n]);
    if n == d.volume() {
        d.apply_normal(u, x, &mut t0, &mut ax).unwrap();
    } else {
        d.apply_schur_normal(u, x, &mut t0, &mut t1, &mut ax).unwrap();
    }
    let mut r = b.to_vec();
    axpy(-1.0, &ax, &mut r);
    (norm2(&r) / norm2(b)).sqrt()
}

/// Every solve, in the lanes layout (`on`) or the site layout, on `threads` threads: the
/// solutions and reports.
fn solves(shape: &[i64], on: bool, threads: usize) -> (Vec<Field>, Vec<CgReport>, WilsonDirac<Su3, 4>, Vec<Su3>, Field) {
    in_pool(threads, || {
        let d = op::<Su3, 4>(shape, 0.12, 0.0).with_layout(if on { SolverLayout::Auto } else { SolverLayout::Sites });
        let (v, h) = (d.volume(), d.volume() / 2);
        let u = hot::<Su3>(d.lattice(), 21);
        let eta = noise::<Su3, 4>(v, 22);
        let mut work = SolverWork::new(v);
        let p = CgParams::new(1e-11, 3000).unwrap();
        let (mut x, mut xe, mut psi, mut psi_eo) =
            (vec![Default::default(); v], vec![Default::default(); h], vec![Default::default(); v], vec![Default::default(); v]);
        let reps = vec![
            d.solve_normal(u.links(), &eta, &mut x, &mut work, &p).unwrap(),
            d.solve_schur_normal(u.links(), &eta[..h], &mut xe, &mut work, &p).unwrap(),
            d.solve(u.links(), &eta, &mut psi, &mut work, &p).unwrap(),
            d.solve_eo(u.links(), &eta, &mut psi_eo, &mut work, &p).unwrap(),
        ];
        (vec![x, xe, psi, psi_eo], reps, d, u.links().to_vec(), eta)
    })
}

#[test]
fn lanes_solves_meet_their_target_and_agree_with_the_site_layout() {
    for shape in [&[2i64, 2, 2, 8][..], &[4, 2, 2, 16]] {
        let (lanes, lrep, d, u, eta) = solves(shape, true, 1);
        let (sites, srep, ..) = solves(shape, false, 1);
        let h = d.volume() / 2;
        // the lanes solves: residuals recomputed with the per-site operators meet the target
        for (x, b, rep) in [(&lanes[0], &eta[..], lrep[0]), (&lanes[1], &eta[..h], lrep[1])] {
            let r = residual(&d, &u, b, x);
            assert!(rep.residual <= 1e-11 && r <= 1e-11 && (r - rep.residual).abs() <= 1e-3 * r + 1e-15, "{shape:?}: {r:e} vs {rep:?}");
        }
        for psi in [&lanes[2], &lanes[3]] {
            let mut dpsi = vec![SpinorOf::<Su3, 4>::default(); d.volume()];
            d.apply(&u[..], psi, &mut dpsi).unwrap();
            let mut r = eta.clone();
            axpy(-1.0, &dpsi, &mut r);
            assert!((norm2(&r) / norm2(&eta)).sqrt() < 1e-9);
        }
        // both layouts solve the same systems to the tolerance, in about as many iterations
        for ((a, b), (ra, rb)) in lanes.iter().zip(&sites).zip(lrep.iter().zip(&srep)) {
            let mut diff = a.clone();
            axpy(-1.0, b, &mut diff);
            let rel = (norm2(&diff) / norm2(b)).sqrt();
            assert!(rel < 1e-8, "{shape:?}: the layouts' solutions differ by {rel:e}");
            assert!(ra.iterations.abs_diff(rb.iterations) <= 2, "{ra:?} vs {rb:?}");
        }
    }
    // the lanes solves have the same bits on 1 and 2 threads
    let (a, ra, ..) = solves(&[4, 4, 2, 16], true, 1);
    let (b, rb, ..) = solves(&[4, 4, 2, 16], true, 2);
    assert!(a.iter().zip(&b).all(|(x, y)| same_bits(x, y)) && ra == rb);
}

/// The solvers' layout setting: `Auto` takes the lanes layout where the fields stay in cache
/// (8⁴: 3.9 MB) and not above (16⁴: 63 MB), `Lanes` takes it at every volume, `Sites` never;
/// and no setting takes it where it does not apply (a clover term, twisted mass, SU(2), a time
/// extent that is not a multiple of 8).
#[test]
fn the_solver_layout_setting_picks_the_layout() {
    use crate::gauge::fermion::tests::op_sw;
    let small = op::<Su3, 4>(&[8, 8, 8, 8], 0.12, 0.0);
    let big = op::<Su3, 4>(&[16, 16, 16, 16], 0.12, 0.0);
    assert_eq!(small.layout(), SolverLayout::Auto);
    assert!(small.solves_in_lanes() && !big.solves_in_lanes());
    for d in [&small, &big] {
        assert!(d.lanes_apply());
        assert!(d.clone().with_layout(SolverLayout::Lanes).solves_in_lanes());
        assert!(!d.clone().with_layout(SolverLayout::Sites).solves_in_lanes());
        assert_eq!(d.clone().with_layout(SolverLayout::Auto).solves_in_lanes(), d.solves_in_lanes());
    }
    let refuse = [
        op_sw::<Su3, 4>(&[4, 4, 4, 8], 0.12, 0.0, 1.0),
        op::<Su3, 4>(&[4, 4, 4, 8], 0.12, 0.1),
        op::<Su3, 4>(&[4, 4, 4, 12], 0.12, 0.0),
    ];
    for (d, why) in refuse.into_iter().zip(["no csw", "no mu", "multiple of 8, got 12"]) {
        assert!(d.lanes_unavailable().is_some_and(|e| e.contains(why)), "{:?}", d.lanes_unavailable());
        assert!(!d.lanes_apply() && !d.with_layout(SolverLayout::Lanes).solves_in_lanes());
    }
    let su2 = op::<crate::gauge::Su2, 4>(&[4, 4, 4, 8], 0.12, 0.0);
    assert!(su2.lanes_unavailable().is_some_and(|e| e.contains("SU(3) in 4D")));
    assert!(!su2.lanes_apply() && !su2.with_layout(SolverLayout::Lanes).solves_in_lanes());
    // the names of run cards
    for l in SolverLayout::ALL {
        assert_eq!(SolverLayout::parse(l.name()), Some(l));
    }
    assert_eq!(SolverLayout::parse("simd"), None);
}
