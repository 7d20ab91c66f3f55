//! Tests of the decomposed lattice: geometry against the global lattice, halos, gathers,
//! random draws and reductions against one rank, and decomposed HMC trajectories against the
//! single-domain HMC of the same seed. Ranks are threads (`comm::threads`).

use super::*;
use crate::comm;
use crate::gauge::parallel::{fill_random, fill_sites, sum_sites, CHUNK_SITES};
use crate::gauge::{gauge_transform, plaquette_sum, LinkField, LinkSpace, Su2, Su3};
use crate::hmc::{hmc_trajectory, LeveledAction, LevelSchedule, Schedule, Scheme};
use crate::rng::Stream;

/// Runs `f(comm)` on `n` thread-ranks; the results in rank order.
fn on_ranks<T: Send>(n: usize, f: impl Fn(CommBox) -> T + Sync) -> Vec<T> {
    let comms = comm::threads(n as u32);
    std::thread::scope(|s| {
        let hs: Vec<_> = comms.into_iter().map(|c| s.spawn(|| f(c))).collect();
        hs.into_iter().map(|h| h.join().expect("a rank panicked")).collect()
    })
}

fn lattice(shape: &[usize]) -> Lattice {
    Lattice::new(&shape.iter().map(|&l| l as i64).collect::<Vec<_>>()).unwrap()
}

/// The global site of a stored site of `dom` (halo sites wrap periodically).
fn global_of(dom: &Domain, lat: &Lattice, s: usize) -> usize {
    let (e, rest) = dom.split(s);
    let l0 = dom.shape()[0] as isize;
    let slice0 = (dom.first_site() / dom.slice_sites()) as isize;
    let g0 = (slice0 + e).rem_euclid(l0) as usize;
    let _ = lat;
    g0 * dom.slice_sites() + rest
}

#[test]
fn neighbours_of_every_stored_site_are_the_global_neighbours() {
    for (shape, size, width) in [(vec![4, 3], 2, 1), (vec![6, 2, 3], 3, 2), (vec![4, 4, 2], 1, 1), (vec![8, 2, 2, 2], 4, 2)] {
        let lat = lattice(&shape);
        for rank in 0..size {
            let dom = Domain::new(&shape, rank, size, width).unwrap();
            assert_eq!(dom.sites() * size, lat.volume());
            for s in 0..dom.stored() {
                let g = global_of(&dom, &lat, s);
                for mu in 0..shape.len() {
                    for (step, global_step) in [(dom.up(s, mu), lat.fwd(g, mu)), (dom.dn(s, mu), lat.bwd(g, mu))] {
                        if step == u32::MAX as usize {
                            // only a step off the stored slices, from the outermost halo slice
                            assert_eq!(mu, 0);
                            assert!(s >= dom.sites());
                        } else {
                            assert_eq!(global_of(&dom, &lat, step), global_step, "{shape:?} rank {rank} site {s} μ {mu}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn halo_exchange_and_gather_give_the_global_field() {
    let shape = [6, 3, 2];
    let per_site = 2;
    let global: Vec<f64> = (0..36 * per_site).map(|i| i as f64 * 0.5 - 7.0).collect();
    for (size, width) in [(1, 1), (2, 1), (3, 2), (6, 1)] {
        on_ranks(size, |c| {
            let dom = Domain::for_comm(&shape, &c, width).unwrap();
            let want = dom.scatter(&global, per_site);
            let mut field = want.clone();
            let owned = dom.sites() * per_site;
            field[owned..].iter_mut().for_each(|x| *x = f64::NAN);
            dom.exchange(&c, &mut field, per_site).unwrap();
            assert!(field.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{size} ranks, width {width}");
            assert_eq!(dom.gather(&c, &field, per_site).unwrap(), global);
            assert_eq!(dom.halo_reals(per_site), 2 * width * 6 * per_site);
        });
    }
}

#[test]
fn a_lattice_that_does_not_split_is_a_clear_error() {
    let e = Domain::new(&[6, 4], 0, 4, 1).unwrap_err();
    assert_eq!(e, DomainError::NotDivisible { extent: 6, ranks: 4 });
    assert!(e.to_string().contains("extent 6 along axis 0 is not divisible by the 4 ranks"), "{e}");
    let e = Domain::new(&[4, 4], 0, 4, 2).unwrap_err();
    assert!(e.to_string().contains("holds 1 slice(s)") && e.to_string().contains("halo of 2"), "{e}");
    assert!(matches!(Domain::new(&[8], 0, 2, 1), Err(DomainError::Shape(_))));
    assert!(matches!(Domain::new(&[8, 1], 0, 2, 1), Err(DomainError::Shape(_))));
    assert!(matches!(Domain::new(&[8, 4], 2, 2, 1), Err(DomainError::Rank { .. })));
    assert!(matches!(Domain::new(&[8, 4], 0, 2, 0), Err(DomainError::Shape(_))));
}

#[test]
fn a_part_of_a_random_fill_is_that_part_of_the_whole_fill() {
    let total = 1000;
    let draw = |s: &mut Stream, x: &mut f64| *x = s.normal();
    let mut whole_rng = Stream::new(5, 9);
    let mut whole = vec![0.0; total];
    fill_random(&mut whole, &mut whole_rng, draw).unwrap();
    for (first, len) in [(0, 1000), (0, 256), (100, 300), (255, 2), (256, 744), (999, 1), (500, 0)] {
        let mut rng = Stream::new(5, 9);
        let mut part = vec![0.0; len];
        fill_random_part(&mut part, first, total, &mut rng, draw).unwrap();
        assert!(part.iter().zip(&whole[first..]).all(|(a, b)| a.to_bits() == b.to_bits()), "{first}+{len}");
        assert_eq!(rng.state(), whole_rng.state(), "the stream advances as for the whole fill");
    }
}

#[test]
fn sums_over_ranks_holding_whole_chunks_have_the_bits_of_one_rank() {
    // 2048 sites: on 2 ranks each holds two whole chunks of CHUNK_SITES sites
    let shape = [8, 4, 8, 8];
    assert_eq!(shape.iter().product::<usize>(), 2 * CHUNK_SITES);
    let term = |g: usize| ((g as f64) * 0.37).sin() * 1e3 + 1e-9 * g as f64;
    let one = sum_sites(2048, |x, s| s.add(term(x)));
    for size in [1, 2] {
        for total in on_ranks(size, |c| {
            let dom = Domain::for_comm(&shape, &c, 1).unwrap();
            let first = dom.first_site();
            dom.sum(&c, |x, s| s.add(term(first + x))).unwrap()
        }) {
            assert_eq!(total.to_bits(), one.to_bits(), "{size} ranks");
        }
    }
    // 4 ranks hold half chunks: equal to rounding, and the same bits on every rank
    let sums = on_ranks(4, |c| {
        let dom = Domain::for_comm(&shape, &c, 1).unwrap();
        let first = dom.first_site();
        dom.sum(&c, |x, s| s.add(term(first + x))).unwrap()
    });
    assert!(sums.iter().all(|s| s.to_bits() == sums[0].to_bits()));
    assert!((sums[0] - one).abs() <= 1e-12 * one.abs().max(1.0), "{} vs {one}", sums[0]);
}

// ------------------------------------------------------------------------------------------
// Decomposed HMC against the single-domain HMC
// ------------------------------------------------------------------------------------------

/// The Wilson action on one domain, written as a plugin writes it (core's `staple` and
/// `plaquette_sum` on the global lattice): the reference the decomposed term must match.
struct Reference {
    lat: Lattice,
    beta: f64,
}

impl<G: GaugeGroup> ActionTerm<LinkSpace<G>> for Reference {
    fn name(&self) -> &str {
        "wilson"
    }
    fn action(&self, u: &LinkField<G>) -> Result<f64, TermError> {
        Ok(-(self.beta / G::NC as f64) * plaquette_sum(&self.lat, u.links()))
    }
    fn force(&self, u: &LinkField<G>, out: &mut Vec<G::Algebra>) -> Result<(), TermError> {
        let d = self.lat.dim();
        let w = self.beta / G::NC as f64;
        let links = u.links();
        fill_sites(out, d, |x, fs, _| {
            for (mu, f) in fs.iter_mut().enumerate() {
                *f = links[x * d + mu].re_trace_derivative(&staple(&self.lat, links, x, mu)).scale(-w);
            }
        });
        Ok(())
    }
}

fn schedule() -> Schedule {
    Schedule { tau: 1.0, levels: vec![LevelSchedule { steps: 6, scheme: Scheme::Omelyan2 { lambda: 0.1931833 } }], jitter: 0.0 }
}

/// (ΔH, accepted, mean plaquette, links) after each of `n` trajectories from a hot start.
type History<G> = Vec<(f64, bool, f64, Vec<G>)>;

fn reference_history<G: GaugeGroup + Pod>(shape: &[usize], beta: f64, n: usize) -> History<G>
where
    G::Algebra: Pod,
{
    let lat = lattice(shape);
    let space = LinkSpace::<G>::new(shape.len(), lat.volume());
    let mut rng = Stream::new(31, 4);
    let mut u = LinkField::<G>::random(shape.len(), lat.volume(), &mut rng).unwrap();
    let term = Reference { lat: lat.clone(), beta };
    let mut action = LeveledAction::single(Box::new(term));
    (0..n)
        .map(|_| {
            let rec = hmc_trajectory(&space, &mut action, &mut u, &schedule(), true, &mut rng).unwrap();
            let plaq = crate::gauge::mean_plaquette(&lat, u.links());
            (rec.delta_h, rec.accepted, plaq, u.links().to_vec())
        })
        .collect()
}

fn decomposed_history<G: GaugeGroup + Pod>(shape: &[usize], beta: f64, n: usize, ranks: usize) -> Vec<History<G>>
where
    G::Algebra: Pod,
{
    let lat = lattice(shape);
    on_ranks(ranks, |c| {
        let dom = Domain::for_comm(shape, &c, 1).unwrap();
        let count = CommCount::default();
        let space = DomainLinkSpace::<G>::new(&dom, &c, &count);
        // the same hot start: every rank draws its slab of the global field
        let mut rng = Stream::new(31, 4);
        let mut u = space.random(&mut rng).unwrap();
        let global = LinkField::<G>::random(shape.len(), lat.volume(), &mut Stream::new(31, 4)).unwrap();
        assert!(u == dom.scatter(global.links(), shape.len()), "the slab of one rank's hot start");
        let term = DomainWilson::new(&dom, &c, &count, beta);
        let mut action = LeveledAction::single(Box::new(&term));
        let history = (0..n)
            .map(|_| {
                let rec = hmc_trajectory(&space, &mut action, &mut u, &schedule(), true, &mut rng).unwrap();
                let plaq = term.mean_plaquette(&u).unwrap();
                (rec.delta_h, rec.accepted, plaq, dom.gather(&c, &u, shape.len()).unwrap())
            })
            .collect();
        let (exchanges, reals, _) = count.get();
        assert!(exchanges > 0 && reals == exchanges * dom.halo_reals(shape.len() * G::REALS) as u64 / 2);
        history
    })
}

/// Every rank's history equals the reference: links bit for bit, accept decisions equal, ΔH
/// and the plaquette to `tol` (0: bit for bit).
fn assert_same<G: GaugeGroup + PartialEq + std::fmt::Debug>(what: &str, reference: &History<G>, ranks: &[History<G>], tol: f64) {
    let mut accepted = 0;
    for (r, history) in ranks.iter().enumerate() {
        for (t, (a, b)) in reference.iter().zip(history).enumerate() {
            let at = format!("{what}, rank {r}, trajectory {t}");
            assert!(a.3 == b.3, "{at}: the link field differs");
            assert_eq!(a.1, b.1, "{at}: accept decision");
            if tol == 0.0 {
                assert_eq!(a.0.to_bits(), b.0.to_bits(), "{at}: ΔH {} vs {}", a.0, b.0);
                assert_eq!(a.2.to_bits(), b.2.to_bits(), "{at}: plaquette");
            } else {
                assert!((a.0 - b.0).abs() <= tol, "{at}: ΔH {} vs {}", a.0, b.0);
                assert!((a.2 - b.2).abs() <= tol, "{at}: plaquette {} vs {}", a.2, b.2);
            }
            accepted += usize::from(b.1);
        }
    }
    assert!(accepted > 0, "{what}: no trajectory was accepted, the test would see no evolution");
}

#[test]
fn decomposed_su3_hmc_on_ranks_holding_whole_chunks_has_the_bits_of_one_rank() {
    // 2048 sites: 2 ranks hold whole reduction chunks, so even ΔH has the bits of one rank
    let shape = [8, 4, 8, 8];
    let reference = reference_history::<Su3>(&shape, 5.7, 3);
    assert_same("SU(3) 8×4×8×8, 2 ranks", &reference, &decomposed_history::<Su3>(&shape, 5.7, 3, 2), 0.0);
}

#[test]
fn decomposed_hmc_on_any_split_gives_the_links_of_one_rank_and_h_to_rounding() {
    // 4⁴ (one chunk on one rank) over 2 and 4 ranks; 2D SU(2) over 3 ranks
    let shape = [4, 4, 4, 4];
    let reference = reference_history::<Su3>(&shape, 6.0, 4);
    for ranks in [1, 2, 4] {
        let tol = if ranks == 1 { 0.0 } else { 1e-10 };
        assert_same(&format!("SU(3) 4⁴, {ranks} ranks"), &reference, &decomposed_history::<Su3>(&shape, 6.0, 4, ranks), tol);
    }
    let shape = [6, 5];
    let reference = reference_history::<Su2>(&shape, 2.0, 5);
    assert_same("SU(2) 6×5, 3 ranks", &reference, &decomposed_history::<Su2>(&shape, 2.0, 5, 3), 1e-10);
}

#[test]
fn the_decomposed_action_is_gauge_invariant_and_its_force_is_the_global_force() {
    let shape = [4, 2, 3, 2];
    let lat = lattice(&shape);
    let d = shape.len();
    let mut rng = Stream::new(8, 8);
    let u = LinkField::<Su3>::random(d, lat.volume(), &mut rng).unwrap();
    let gauge: Vec<Su3> = LinkField::<Su3>::random(1, lat.volume(), &mut rng).unwrap().links().to_vec();
    let mut v = u.clone();
    gauge_transform(&lat, v.links_mut(), &gauge);
    let reference = Reference { lat: lat.clone(), beta: 5.5 };
    let mut f_ref = vec![<Su3 as GaugeGroup>::Algebra::zero(); lat.volume() * d];
    ActionTerm::<LinkSpace<Su3>>::force(&reference, &u, &mut f_ref).unwrap();
    let s_ref = ActionTerm::<LinkSpace<Su3>>::action(&reference, &u).unwrap();
    on_ranks(2, |c| {
        let dom = Domain::for_comm(&shape, &c, 1).unwrap();
        let count = CommCount::default();
        let term = DomainWilson::new(&dom, &c, &count, 5.5);
        let (su, sv) = (dom.scatter(u.links(), d), dom.scatter(v.links(), d));
        let (a, b) = (
            ActionTerm::<DomainLinkSpace<Su3>>::action(&term, &su).unwrap(),
            ActionTerm::<DomainLinkSpace<Su3>>::action(&term, &sv).unwrap(),
        );
        assert!((a - b).abs() < 1e-11 * a.abs(), "gauge invariance: {a} vs {b}");
        assert!((a - s_ref).abs() < 1e-11 * a.abs());
        let mut f = vec![<Su3 as GaugeGroup>::Algebra::zero(); dom.sites() * d];
        ActionTerm::<DomainLinkSpace<Su3>>::force(&term, &su, &mut f).unwrap();
        let first = dom.first_site() * d;
        assert!(f == f_ref[first..first + f.len()], "the force on owned links is the global force, bit for bit");
    });
}

#[test]
fn split_heatbath_and_overrelaxation_give_the_links_of_the_whole_lattice_sweeps() {
    use crate::gauge::{heatbath_sweep, heatbath_sweep_split, overrelax_sweep, overrelax_sweep_split};
    // slabs of 2 slices (4D, and 2D on 3 and 4 ranks): the passes' parity lists cut mid-chunk
    for (shape, ranks) in [(vec![4usize, 4, 2, 2], 2usize), (vec![6, 4], 3), (vec![8, 6], 4)] {
        let lat = lattice(&shape);
        let d = shape.len();
        let start = LinkField::<Su3>::random(d, lat.volume(), &mut Stream::new(5, 1)).unwrap();
        let mut whole = start.links().to_vec();
        let mut rng = Stream::new(6, 2);
        for _ in 0..2 {
            heatbath_sweep(&lat, &mut whole, 5.0, &mut rng).unwrap();
            overrelax_sweep(&lat, &mut whole, 5.0).unwrap();
        }
        let end = rng.word_pos();
        let parts = on_ranks(ranks, |c| {
            let dom = Domain::for_comm(&shape, &c, 1).unwrap();
            let count = CommCount::default();
            let sites = DomainSites { domain: &dom, comm: &c, count: &count };
            let mut u = dom.scatter(start.links(), d);
            let mut rng = Stream::new(6, 2);
            for _ in 0..2 {
                heatbath_sweep_split(&lat, &sites, &mut u, 5.0, &mut rng).unwrap();
                overrelax_sweep_split(&lat, &sites, &mut u, 5.0).unwrap();
            }
            assert_eq!(rng.word_pos(), end, "the stream advances as on one rank");
            // 2 sweeps × 2 kinds × d directions × 2 parities: one halo refresh per pass
            assert_eq!(count.get().0, (2 * 2 * d * 2) as u64);
            dom.gather(&c, &u, d).unwrap()
        });
        assert!(start.links() != &whole[..], "the sweeps moved the links");
        for (r, p) in parts.iter().enumerate() {
            assert!(*p == whole, "{shape:?}, rank {r} of {ranks}: the links differ from the whole-lattice sweeps");
        }
    }
}

#[test]
fn a_split_heatbath_refuses_bad_input_before_changing_anything() {
    use crate::gauge::heatbath_sweep_split;
    let shape = [4usize, 3];
    let lat = lattice(&shape);
    on_ranks(2, |c| {
        let dom = Domain::for_comm(&shape, &c, 1).unwrap();
        let count = CommCount::default();
        let sites = DomainSites { domain: &dom, comm: &c, count: &count };
        let mut u = vec![Su2::identity(); dom.stored() * 2];
        let before = u.clone();
        let e = heatbath_sweep_split(&lat, &sites, &mut u, 2.0, &mut Stream::new(1, 1)).unwrap_err();
        assert!(e.to_string().contains("extent 3 along axis 1 is odd"), "{e}");
        let e = heatbath_sweep_split(&lattice(&[4, 4]), &sites, &mut u[..4], 2.0, &mut Stream::new(1, 1)).unwrap_err();
        assert!(e.to_string().contains("got 4"), "{e}");
        assert!(u == before);
    });
}

