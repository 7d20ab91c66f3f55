//! lattice-qcd-rs 0.2.1's HMC on SU(3), 4^4, beta = 5.7, one thread, for sun_bench: cold start,
//! `--warm` trajectories with 40 steps of 1/40, then `--trajectories` timed trajectories with
//! 15 steps of 1/15 (tau = 1), its `SymplecticEuler` integrator with one thread. The plaquette
//! is its `average_trace_plaquette` / 3 after each timed trajectory (included in the timing,
//! as in latflow's and the PyTorch peer's runs). The last stdout line is one JSON object.
//!
//! lattice-qcd-rs takes `size` (the physical extent) and `number_of_points`; its action and
//! momentum normalisations are its own, so its β is used as given and the plaquette it samples
//! is reported for comparison with the known value (0.5602 at β = 5.7 on 4^4).

use std::time::Instant;

use lattice_qcd_rs::integrator::SymplecticEuler;
use lattice_qcd_rs::simulation::{HybridMonteCarloDiagnostic, LatticeState, LatticeStateDefault};
use rand::SeedableRng;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|e| panic!("{name}: {e}")))
        .unwrap_or(default)
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat (Linux; 100 ticks
/// per second), or NaN where that is not readable.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    match (fields.get(11).and_then(|v| v.parse::<f64>().ok()), fields.get(12).and_then(|v| v.parse::<f64>().ok())) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = arg("--trajectories", 10);
    let warm = arg("--warm", 2);
    let seed = arg("--seed", 2026);
    let (l, beta) = (4usize, 5.7);
    let rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut state = LatticeStateDefault::<4>::new_cold(1.0, beta, l)?;
    let mut warm_hmc = HybridMonteCarloDiagnostic::new(1.0 / 40.0, 40, SymplecticEuler::new(1), rng.clone());
    for _ in 0..warm {
        state = state.monte_carlo_step(&mut warm_hmc)?;
    }
    let mut hmc = HybridMonteCarloDiagnostic::new(1.0 / 15.0, 15, SymplecticEuler::new(1), rng);
    let (mut accepted, mut plaq) = (0u64, 0.0);
    let (start, cpu) = (Instant::now(), cpu_seconds());
    for i in 0..n {
        let (t, c) = (Instant::now(), cpu_seconds());
        state = state.monte_carlo_step(&mut hmc)?;
        let (t, c) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
        eprintln!("trajectory {i}: {t:.2} s wall, {c:.2} s CPU, accepted {}", hmc.has_replace_last());
        accepted += u64::from(hmc.has_replace_last());
        plaq += state.average_trace_plaquette().map(|p| p.re / 3.0).unwrap_or(f64::NAN);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let cpu = if cpu.is_finite() { cpu.to_string() } else { "null".to_string() };
    let (traj_per_s, acc, p) = (n as f64 / secs, accepted as f64 / n as f64, plaq / n as f64);
    eprintln!("lattice-qcd-rs 0.2.1, SU(3) 4^4 beta {beta}: {traj_per_s:.3} traj/s, acceptance {acc:.2}, plaquette {p:.4}");
    println!(
        "{{\"benchmark\": \"lattice_qcd_rs_hmc\", \"version\": \"0.2.1\", \"L\": {l}, \"beta\": {beta}, \
         \"warm\": {warm}, \"trajectories\": {n}, \"seconds\": {secs}, \"traj_per_s\": {traj_per_s}, \"cpu_seconds\": {cpu}, \
         \"acceptance\": {acc}, \"plaquette\": {p}}}"
    );
    Ok(())
}
