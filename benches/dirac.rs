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
        }
    }
    g.finish();
}

criterion_group!(benches, dirac);
criterion_main!(benches);
