//! Pieces the benches and benchmark examples share: loading a model plugin through the plugin
//! ABI (as `latflow train` and `latflow run` do), building a model, Adam settings matching the
//! peers', rayon pools and timing. Included with `mod common;`; each bench uses a subset.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use abi_stable::library::lib_header_from_path;
use abi_stable::std_types::RStr;
use latflow_core::abi::{LrSchedule, ModelBox, PluginModRef, TrainSettings};
use latflow_core::layout::FieldLayout;

/// Builds (if needed) and loads the model plugin of cargo package `package` (e.g.
/// `latflow-flow-u1`) from this executable's release target directory. Runs
/// `cargo build --release -p <package>` first, a no-op when it is up to date. Panics with the
/// library's path when it cannot be built or opened (benches have no caller to report to).
pub fn model_plugin(package: &str) -> PluginModRef {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", package])
        .current_dir(&root)
        .status()
        .unwrap_or_else(|e| panic!("could not start cargo to build {package}: {e}"));
    assert!(status.success(), "cargo build --release -p {package} failed");
    // target/release/deps/<bench>-… or target/release/examples/<example> → target/release
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target directory").to_path_buf();
    let stem = package.replace('-', "_");
    let lib = dir.join(format!("{}{stem}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX));
    let header = lib_header_from_path(&lib).unwrap_or_else(|e| panic!("cannot open {}: {e}", lib.display()));
    header
        .init_root_module::<PluginModRef>()
        .unwrap_or_else(|e| panic!("{} is not a latflow plugin: {e}", lib.display()))
}

/// A model of plugin `lib` built from the JSON `config` for `layout`, with `threads` threads.
pub fn new_model(lib: PluginModRef, config: &str, layout: &FieldLayout, threads: u32) -> ModelBox {
    let ctor = lib.new_model().flatten().expect("a model plugin");
    let mut m = ctor(RStr::from_str(config), layout).into_result().unwrap_or_else(|e| panic!("model config: {e}"));
    m.set_threads(threads).into_result().expect("model threads");
    m
}

/// Adam at learning rate 1e-3 (β₁ = 0.9, β₂ = 0.999, ε = 1e-8), constant schedule, no decay,
/// no clipping, plain (not path) gradients: the peers' training settings.
pub fn adam_settings(batch: u32) -> TrainSettings {
    TrainSettings {
        batch,
        learning_rate: 1e-3,
        schedule: LrSchedule::Constant,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        grad_clip: 0.0,
        path_gradients: false,
    }
}

/// A rayon pool of `threads` threads.
pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon pool")
}

/// Wall time of `iters` calls of `f` inside `pool`.
pub fn timed(pool: &rayon::ThreadPool, iters: u64, mut f: impl FnMut() + Send) -> Duration {
    pool.install(|| {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        t.elapsed()
    })
}

/// The machine's 1-, 5- and 15-minute load averages (empty where /proc/loadavg is absent), to
/// record beside timings on a shared machine.
pub fn load_average() -> serde_json::Value {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = s.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
    serde_json::json!(v)
}

/// The Dirac benchmarks' setup: the 4D SU(3) Wilson operator on an L⁴ lattice (κ = 0.12, μ = 0),
/// Haar-random links (seed 1) and a Gaussian source (seed 2).
#[allow(dead_code)]
pub fn su3_dirac(
    l: i64,
) -> (
    latflow_core::gauge::fermion::WilsonDirac<latflow_core::gauge::Su3, 4>,
    latflow_core::gauge::LinkField<latflow_core::gauge::Su3>,
    Vec<latflow_core::gauge::fermion::SpinorOf<latflow_core::gauge::Su3, 4>>,
) {
    use latflow_core::gauge::fermion::{fill_gaussian, SpinorOf, WilsonDirac, WilsonParams};
    use latflow_core::gauge::{LinkField, Su3};
    use latflow_core::{Lattice, Stream};
    let lat = Lattice::new(&[l, l, l, l]).expect("lattice");
    let d = WilsonDirac::<Su3, 4>::new(&lat, WilsonParams::wilson(0.12)).expect("operator");
    let v = lat.volume();
    let u = LinkField::<Su3>::random(4, v, &mut Stream::new(1, 1)).expect("links");
    let mut psi = vec![SpinorOf::<Su3, 4>::default(); v];
    fill_gaussian(&mut psi, &mut Stream::new(2, 2)).expect("source");
    (d, u, psi)
}

/// The lanes-layout operator of [`su3_dirac`]'s operator and links, and the source packed
/// (`latflow_core::gauge::fermion::lanes`; the time extent must be a multiple of 8).
#[allow(dead_code)]
pub fn su3_lanes(
    d: &latflow_core::gauge::fermion::WilsonDirac<latflow_core::gauge::Su3, 4>,
    u: &latflow_core::gauge::LinkField<latflow_core::gauge::Su3>,
    psi: &[latflow_core::gauge::fermion::SpinorOf<latflow_core::gauge::Su3, 4>],
) -> (latflow_core::gauge::fermion::lanes::LaneDirac, Vec<latflow_core::gauge::fermion::lanes::SpinorLanes>) {
    use latflow_core::gauge::fermion::lanes::{LaneDirac, LaneLayout, SpinorLanes, lanes_simd_level};
    let layout = LaneLayout::new(d.lattice()).expect("a time extent that is a multiple of 8");
    let n = layout.outer_sites();
    let mut ld = LaneDirac::new(layout, d.kappa(), lanes_simd_level());
    ld.set_links(bytemuck::cast_slice(u.links())).expect("links");
    let mut packed = vec![SpinorLanes::default(); n];
    ld.pack_full(bytemuck::cast_slice(bytemuck::cast_slice::<_, f64>(psi)), &mut packed).expect("source");
    (ld, packed)
}
