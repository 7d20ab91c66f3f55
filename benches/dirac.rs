//! Criterion benchmarks of the Wilson–Dirac operator of `latflow_core::gauge::fermion`.
//!
//! Run: `cargo bench --bench dirac` (about a minute), or `cargo bench --bench dirac -- --quick`.
//! Setup: 4D SU(3), κ = 0.12, μ = 0, Haar-random links and a Gaussian source, at 8⁴ and
//! 16⁴, on 1 and 2 threads (explicit rayon pools).
//!
//! Groups, with throughput `Elements(1320 · sites)`: the customary 1320 flops per site of the
//! SU(3) Wilson hopping term ([`WILSON_FLOPS_PER_SITE_SU3_4D`]), so that criterion's `elem/s`
//! reads as **flop/s** (`Gelem/s` = GFLOP/s):
//! * `dirac_su3_4d/apply/L/threads`: one full-lattice D ψ (V sites), with the widest kernel
//!   variant this CPU runs (`WilsonDirac::simd_level`).
//! * `dirac_su3_4d/apply_baseline/L/1`: the same on the generic kernel (where a SIMD variant
//!   exists), for the variant's gain.
//! * `dirac_su3_4d/schur/L/threads`: one even–odd Schur complement D̂ ψ_e, which applies the
//!   hopping term to V/2 + V/2 sites, so it counts 1320 · V flops as well.
//! * `dirac_su3_4d/{apply_lanes,schur_lanes}/L/threads`: D and D̂ in the lanes layout the
//!   solvers use (`latflow_core::gauge::fermion::lanes`), on packed fields (the same bits).
//!
//! * `dirac_su3_4d_cg/{schur_rayon,schur_team}/L/threads`: one even–odd CG solve of
//!   D̂†D̂ x_e = φ_e from a zero guess to relative residual 10⁻¹⁰
//!   (`WilsonDirac::solve_schur_normal`, the solve of the pseudofermion force) on a rayon pool
//!   or on a spinning `par::Team` (what the qcd plugin's workers are), throughput
//!   `Elements(1)` (solves per second). The bits, and so the iteration count, do not depend on
//!   the threads; its reductions and vector updates are in the timing, so this is the solver's
//!   thread scaling, not the operator's alone. `schur_team_sites`, `schur_team_lanes`: the
//!   same solve in each layout (`WilsonDirac::with_layout`), whichever the default picks at
//!   that volume (the lanes layout up to 16 MiB of fields: 8⁴ but not 16⁴).
//!
//! Compulsory memory traffic of one D ψ, for a bandwidth reading: each link (144 bytes) and
//! each input and output spinor (192 bytes each) once, 4 · 144 + 2 · 192 = 960 bytes per site.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use latflow_core::gauge::fermion::wilson::WILSON_FLOPS_PER_SITE_SU3_4D;

fn dirac(c: &mut Criterion) {
    let mut g = c.benchmark_group("dirac_su3_4d");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for l in [8i64, 16] {
        let (d, u, psi) = common::su3_dirac(l);
        let v = d.volume();
        let mut out = psi.clone();
        let (mut tmp_o, mut out_e) = (psi[..v / 2].to_vec(), psi[..v / 2].to_vec());
        g.throughput(Throughput::Elements((WILSON_FLOPS_PER_SITE_SU3_4D as u64) * v as u64));
        for threads in [1usize, 2] {
            let p = common::pool(threads);
            let id = format!("{l}/{threads}");
            g.bench_function(BenchmarkId::new("apply", &id), |b| {
                b.iter_custom(|n| {
                    p.install(|| {
                        let t = Instant::now();
                        for _ in 0..n {
                            d.apply(u.links(), black_box(&psi), &mut out).expect("apply");
                        }
                        t.elapsed()
                    })
                })
            });
            if threads == 1 && d.simd_level() > 0 {
                // the same operator on the generic (baseline) kernel, for the SIMD kernel's gain
                let base = d.clone().with_simd_level(0);
                g.bench_function(BenchmarkId::new("apply_baseline", &id), |b| {
                    b.iter_custom(|n| {
                        p.install(|| {
                            let t = Instant::now();
                            for _ in 0..n {
                                base.apply(u.links(), black_box(&psi), &mut out).expect("apply");
                            }
                            t.elapsed()
                        })
                    })
                });
            }
            g.bench_function(BenchmarkId::new("schur", &id), |b| {
                b.iter_custom(|n| {
                    p.install(|| {
                        let t = Instant::now();
                        for _ in 0..n {
                            d.apply_schur(u.links(), black_box(&psi[..v / 2]), &mut tmp_o, &mut out_e).expect("schur");
                        }
                        t.elapsed()
                    })
                })
            });
            // the lanes layout the solvers use: D and D̂ on packed fields
            let (ld, packed) = common::su3_lanes(&d, &u, &psi);
            let (mut pout, mut pto, mut pte) = (packed.clone(), packed.clone(), packed.clone());
            let half = packed.len() / 2;
            g.bench_function(BenchmarkId::new("apply_lanes", &id), |b| {
                b.iter_custom(|n| {
                    p.install(|| {
                        let t = Instant::now();
                        for _ in 0..n {
                            ld.apply(black_box(&packed), &mut pout, false).expect("apply");
                        }
                        t.elapsed()
                    })
                })
            });
            g.bench_function(BenchmarkId::new("schur_lanes", &id), |b| {
                b.iter_custom(|n| {
                    p.install(|| {
                        let t = Instant::now();
                        for _ in 0..n {
                            ld.schur(black_box(&packed[..half]), &mut pto[..half], &mut pte[..half], false).expect("schur");
                        }
                        t.elapsed()
                    })
                })
            });
        }
    }
    g.finish();
}

/// One even–odd CG solve on 1 and 2 threads.
fn cg(c: &mut Criterion) {
    use latflow_core::gauge::fermion::{CgParams, SolverLayout, SolverWork};
    let mut g = c.benchmark_group("dirac_su3_4d_cg");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    let params = CgParams::new(1e-10, 10_000).expect("CG parameters");
    for l in [8i64, 16] {
        let (d, u, psi) = common::su3_dirac(l);
        let half = d.volume() / 2;
        let mut work = SolverWork::new(d.volume());
        let mut x = psi[..half].to_vec();
        for threads in [1usize, 2] {
            let pool = common::pool(threads);
            let team = latflow_core::par::Team::new(threads).expect("team");
            let mut solve = |n: u64| {
                let t = Instant::now();
                for _ in 0..n {
                    x.iter_mut().for_each(|s| *s = Default::default());
                    d.solve_schur_normal(u.links(), black_box(&psi[..half]), &mut x, &mut work, &params).expect("CG");
                }
                t.elapsed()
            };
            g.bench_function(BenchmarkId::new("schur_rayon", format!("{l}/{threads}")), |b| {
                b.iter_custom(|n| pool.install(|| solve(n)))
            });
            g.bench_function(BenchmarkId::new("schur_team", format!("{l}/{threads}")), |b| {
                b.iter_custom(|n| team.enter(|| solve(n)))
            });
            // the same solve in each layout, whatever the default picks at this volume
            for (name, layout) in [("schur_team_sites", SolverLayout::Sites), ("schur_team_lanes", SolverLayout::Lanes)] {
                let d = d.clone().with_layout(layout);
                g.bench_function(BenchmarkId::new(name, format!("{l}/{threads}")), |b| {
                    b.iter_custom(|n| {
                        team.enter(|| {
                            let t = Instant::now();
                            for _ in 0..n {
                                x.iter_mut().for_each(|s| *s = Default::default());
                                d.solve_schur_normal(u.links(), black_box(&psi[..half]), &mut x, &mut work, &params).expect("CG");
                            }
                            t.elapsed()
                        })
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, dirac, cg);
criterion_main!(benches);
