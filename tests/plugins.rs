//! Plugins as shared libraries: the in-tree phi4 plugin is loaded from its .so; the
//! out-of-tree example (examples/xy-plugin) builds on its own, loads through `--plugin-dir`
//! and reproduces the exact 1D XY ring; broken plugins (tests/fixtures) are refused or
//! reported with errors that name the plugin and the call, and never abort the host.
//!
//! The example and the fixtures are separate cargo workspaces. They are built here, once per
//! test binary, in the dev profile, into `target/external`: one target directory for both, so
//! abi_stable and latflow-core are compiled once and later runs are incremental.

mod common;

use std::env::consts::DLL_SUFFIX;
use std::path::Path;
use std::time::Instant;
use std::process::Output;

use common::{analyze_json, assert_z, fixtures_dir, latflow, library, run_ok, scalar, write_card, xy_plugin_dir};


// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `latflow --plugin-dir DIR ARGS`, without backtraces (they would only lengthen stderr).
fn run_with_dir(dir: &Path, args: &[&str]) -> Output {
    latflow()
        .env_remove("RUST_BACKTRACE")
        .arg("--plugin-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("failed to start latflow")
}

/// The exit code, asserting that the process exited by itself (not killed by a signal, as an
/// abort from a panic crossing the plugin boundary would be).
fn exit_code(out: &Output) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            None,
            "latflow was killed by a signal:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.code().expect("latflow has no exit code")
}

/// The `latflow plugins` entry for `path`: its first line and the indented lines below it.
fn listing_entry<'a>(listing: &'a str, path: &Path) -> (&'a str, Vec<&'a str>) {
    let lines: Vec<&str> = listing.lines().collect();
    let name = path.file_name().unwrap().to_str().unwrap();
    let i = lines
        .iter()
        .position(|l| !l.starts_with(' ') && l.contains(name))
        .unwrap_or_else(|| panic!("{name} is not listed:\n{listing}"));
    let details = lines[i + 1..].iter().copied().take_while(|l| l.starts_with(' ')).collect();
    (lines[i], details)
}

/// The path of a loaded plugin in its `latflow plugins` header line
/// (`NAME VERSION [Kind] PATH[ (shadowed ...)]`).
fn listed_path(header: &str) -> &str {
    let rest = header.split_once("] ").map(|(_, r)| r).unwrap_or_else(|| panic!("not a plugin line: {header}"));
    rest.split(" (shadowed").next().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The in-tree plugin
// ---------------------------------------------------------------------------------------------

/// `latflow plugins` finds phi4 as a shared library (cargo builds it beside the host), and a
/// run with `plugin = "phi4"` loads it from there: the ensemble records that library's path.
#[test]
fn phi4_is_loaded_from_its_shared_library() {
    let listing = run_ok(&["plugins"]);
    let header = listing
        .lines()
        .find(|l| l.starts_with("phi4 ") && l.contains("[Theory]") && !l.contains("shadowed"))
        .unwrap_or_else(|| panic!("phi4 is not listed:\n{listing}"));
    let path = listed_path(header);
    assert!(path.ends_with(DLL_SUFFIX), "phi4's path does not end in {DLL_SUFFIX}: {header}");
    assert!(Path::new(path).is_file(), "{path} does not exist");

    let dir = tempfile::tempdir().unwrap();
    let (card, out) = write_card(
        dir.path(),
        "phi4",
        r#"
[theory]
plugin = "phi4"
lattice = [4, 4]
m2 = 1.0
lambda = 0.5

[[chain]]
kind = "hmc"
md_steps = 6

[run]
seed = 3
thermalization = 10
measurements = 50
output = "{OUT}"
"#,
    );
    run_ok(&["run", card.to_str().unwrap()]);
    let json = analyze_json(&out);
    assert_eq!(json["observables"]["phi2"]["n"], 50, "{json}");
    let inspect = run_ok(&["inspect", out.to_str().unwrap()]);
    let line = inspect.lines().find(|l| l.starts_with("plugin")).unwrap_or_else(|| panic!("{inspect}"));
    assert!(line.contains("phi4") && line.contains(path), "run used another library than listed ({path}): {line}");
}

// ---------------------------------------------------------------------------------------------
// The out-of-tree example: the XY model
// ---------------------------------------------------------------------------------------------

/// Modified Bessel function I_n(x) from its power series Σ_k (x/2)^{2k+|n|} / (k! (k+|n|)!),
/// summed until the terms fall below 1e-17 of the sum.
fn bessel_i(n: i32, x: f64) -> f64 {
    let n = f64::from(n.unsigned_abs());
    let h = 0.5 * x;
    let mut term = (1..=n as u32).fold(1.0, |t, j| t * h / f64::from(j));
    let mut sum = term;
    let mut k = 0.0;
    while term > 1e-17 * sum {
        k += 1.0;
        term *= h * h / (k * (k + n));
        sum += term;
    }
    sum
}

/// ⟨cos(θ(x+1) − θ(x))⟩ on a periodic ring of L sites at coupling β:
/// Σ_n I_n(β)^{L−1} I_n'(β) / Σ_n I_n(β)^L, with I_n' = (I_{n−1} + I_{n+1})/2 (character
/// expansion of e^{β cos}; the sums over n run over −30..30).
fn xy_ring_energy(beta: f64, l: i32) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for n in -30..=30 {
        let i = bessel_i(n, beta);
        let di = 0.5 * (bessel_i(n - 1, beta) + bessel_i(n + 1, beta));
        num += i.powi(l - 1) * di;
        den += i.powi(l);
    }
    num / den
}

#[test]
fn the_exact_ring_reference_is_right() {
    // tabulated values (Abramowitz & Stegun 9.8 / mpmath)
    assert!((bessel_i(0, 1.0) - 1.266_065_877_752_008_4).abs() < 1e-15);
    assert!((bessel_i(1, 1.0) - 0.565_159_103_992_485).abs() < 1e-15);
    assert!((bessel_i(-2, 1.0) - 0.135_747_669_767_038_3).abs() < 1e-15);
    // a long ring is an open chain: <cos> = I_1(β)/I_0(β)
    let open = bessel_i(1, 1.0) / bessel_i(0, 1.0);
    assert!((xy_ring_energy(1.0, 200) - open).abs() < 1e-14);
    // two sites: S = −2β cos(θ_1 − θ_0), so <cos> = I_1(2β)/I_0(2β) (and Σ_n I_n(β)² = I_0(2β))
    let two = xy_ring_energy(0.7, 2);
    let direct = bessel_i(1, 1.4) / bessel_i(0, 1.4);
    assert!((two - direct).abs() < 1e-13, "{two} vs {direct}");
}

/// The example plugin builds as its own cargo project, is listed by `latflow plugins` from
/// `--plugin-dir` (next to the broken fixtures, which must not get in the way), and runs on
/// rings of 16 and 4 sites at β = 1 reproduce the exact energy and action density.
#[test]
fn out_of_tree_xy_plugin_reproduces_the_exact_ring() {
    let dir = xy_plugin_dir();
    assert_eq!(fixtures_dir(), dir, "the example and the fixtures share one target directory");
    let lib = library(dir, "latflow_xy");

    let listing = run_with_dir(dir, &["plugins"]);
    assert_eq!(exit_code(&listing), 0);
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let (header, details) = listing_entry(&listing, &lib);
    assert!(header.starts_with("xy ") && header.contains("[Theory]"), "{header}");
    assert_eq!(Path::new(listed_path(header)), lib, "{header}");
    assert!(details.iter().any(|l| l.contains("keys: lattice, beta")), "{details:?}");

    // L = 16 is the example card's ring (within 4e-6 of the open chain, I_1/I_0); on L = 4 the
    // periodic boundary shifts <cos> from 0.446 to 0.505.
    let beta = 1.0;
    for l in [16, 4] {
        let tmp = tempfile::tempdir().unwrap();
        let (card, out) = write_card(
            tmp.path(),
            "xy",
            &format!(
                r#"
[theory]
plugin = "xy"
lattice = [{l}]
beta = {beta:?}

[[chain]]
kind = "hmc"
trajectory_length = 1.0
md_steps = 6

[run]
seed = {l}
start = "hot"
thermalization = 200
measurements = 150000
output = "{{OUT}}"
"#
            ),
        );
        let start = Instant::now();
        let run = run_with_dir(dir, &["run", card.to_str().unwrap()]);
        assert_eq!(exit_code(&run), 0, "xy run failed:\n{}", String::from_utf8_lossy(&run.stderr));
        println!("xy run, L = {l}: {:.1} s", start.elapsed().as_secs_f64());

        let json = analyze_json(&out);
        let exact = xy_ring_energy(beta, l);
        assert_z(&format!("xy ring L={l} beta=1 energy"), scalar(&json, "energy"), exact, 0.0);
        assert_z(&format!("xy ring L={l} beta=1 action_density"), scalar(&json, "action_density"), -beta * exact, 0.0);
        let acc = json["acceptance"]["hmc"].as_f64().unwrap();
        assert!(acc > 0.8, "L = {l}: acceptance {acc}");
    }
}

// ---------------------------------------------------------------------------------------------
// Broken plugins
// ---------------------------------------------------------------------------------------------

/// A plugin built against another interface is listed as BROKEN with a one- or two-line
/// reason (and `latflow plugins` still succeeds); running it fails with a short error, exit
/// code 1, no panic.
fn assert_refused(lib_name: &str) -> String {
    let dir = fixtures_dir();
    let lib = library(dir, lib_name);

    let listing = run_with_dir(dir, &["plugins"]);
    assert_eq!(exit_code(&listing), 0, "{}", String::from_utf8_lossy(&listing.stderr));
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let (header, details) = listing_entry(&listing, &lib);
    assert!(header.starts_with("BROKEN "), "{header}");
    assert!((1..=2).contains(&details.len()), "reason is not one or two lines: {details:#?}");
    assert!(details.iter().all(|l| l.len() < 400), "reason lines are too long: {details:#?}");
    // the other plugins in the directory are unaffected
    assert!(listing.lines().any(|l| l.starts_with("faulty ")), "{listing}");

    let tmp = tempfile::tempdir().unwrap();
    let (card, _) = write_card(
        tmp.path(),
        "card",
        &format!(
            "[theory]\nplugin = {:?}\nlattice = [4]\n\n[[chain]]\nkind = \"hmc\"\nmd_steps = 4\n\n\
             [run]\nseed = 1\nmeasurements = 5\noutput = \"{{OUT}}\"\n",
            lib.to_str().unwrap()
        ),
    );
    let run = run_with_dir(dir, &["run", card.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(exit_code(&run), 1, "{stderr}");
    assert!(stderr.contains("error:"), "{stderr}");
    assert!(stderr.len() < 800, "{} bytes of stderr:\n{stderr}", stderr.len());
    assert!(!stderr.contains("panicked"), "{stderr}");
    println!("{lib_name} refused:\n  plugins: {}\n  run:     {}", details.join(" / ").trim(), stderr.trim());
    stderr
}

/// Interface version 99.0.0 against the host's: refused by the version check, and the message
/// shows the plugin's version.
#[test]
fn plugin_built_for_another_interface_version_is_refused() {
    let stderr = assert_refused("latflow_badabi");
    assert!(stderr.contains("99.0.0"), "{stderr}");
    // one message with both versions and what to do
    let host = env!("CARGO_PKG_VERSION"); // latflow-core shares the workspace version
    let advice = format!("rebuild the plugin against latflow-core {host}");
    assert!(stderr.contains(&format!("latflow-core 99.0.0, but this latflow has latflow-core {host}")), "{stderr}");
    assert_eq!(stderr.matches(&advice).count(), 1, "{stderr}");
}

/// `latflow run` with a plugin name whose library exists but is refused says what it found
/// and why, instead of "no plugin named …".
#[test]
fn a_refused_library_named_like_the_plugin_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let copy = plugins.join(format!("{}latflow_o3{DLL_SUFFIX}", std::env::consts::DLL_PREFIX));
    std::fs::copy(library(fixtures_dir(), "latflow_badabi"), &copy).unwrap();
    let (card, _) = write_card(
        tmp.path(),
        "card",
        "[theory]\nplugin = \"o3\"\nlattice = [4]\n\n[[chain]]\nkind = \"hmc\"\nmd_steps = 4\n\n\
         [run]\nseed = 1\nmeasurements = 5\noutput = \"{OUT}\"\n",
    );
    let run = run_with_dir(&plugins, &["run", card.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(exit_code(&run), 1, "{stderr}");
    assert!(!stderr.contains("no plugin named"), "{stderr}");
    for want in ["plugin 'o3' was found but refused", copy.to_str().unwrap(), "99.0.0", "rebuild the plugin against latflow-core"] {
        assert!(stderr.contains(want), "expected {want:?} in:\n{stderr}");
    }
    println!("{}", stderr.trim());
}

/// `latflow plugins` shows the latflow-core version each plugin was built against.
#[test]
fn plugins_shows_the_core_version_of_each_plugin() {
    let listing = run_ok(&["plugins"]);
    let (header, details) = {
        let lines: Vec<&str> = listing.lines().collect();
        let i = lines.iter().position(|l| l.starts_with("phi4 ")).unwrap_or_else(|| panic!("{listing}"));
        (lines[i], lines[i + 1..].iter().take_while(|l| l.starts_with(' ')).copied().collect::<Vec<_>>())
    };
    let want = format!("built against latflow-core {}", env!("CARGO_PKG_VERSION"));
    assert!(details.iter().any(|l| l.trim() == want), "{header}: {details:#?}");
}

/// A stale build (the current interface version, an older root-module layout): refused by the
/// layout check.
#[test]
fn stale_plugin_with_another_layout_is_refused() {
    assert_refused("latflow_badlayout");
}

/// Runs the faulty fixture with `fault = MODE` through `latflow run`.
fn run_fault(mode: &str) -> (i32, String) {
    let dir = fixtures_dir();
    let tmp = tempfile::tempdir().unwrap();
    let (card, _) = write_card(
        tmp.path(),
        "card",
        &format!(
            "[theory]\nplugin = \"faulty\"\nlattice = [4]\nfault = \"{mode}\"\n\n\
             [[chain]]\nkind = \"hmc\"\nmd_steps = 4\n\n\
             [run]\nseed = 1\nthermalization = 2\nmeasurements = 5\noutput = \"{{OUT}}\"\n"
        ),
    );
    let out = run_with_dir(dir, &["run", card.to_str().unwrap()]);
    (exit_code(&out), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A fault in the plugin ends the run with exit code 1 and one error line that names the
/// plugin and the call (one of `calls`) and mentions each of `mentions`. A panic inside the
/// plugin is caught there: the only "panicked at" report allowed is the plugin's own panic
/// message (from its copy of std, pointing into the fixture's source), never the host's.
fn assert_fault(mode: &str, calls: &[&str], mentions: &[&str]) {
    let (code, stderr) = run_fault(mode);
    assert_eq!(code, 1, "fault {mode}: exit code {code}:\n{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("fault {mode}: no error line:\n{stderr}"));
    assert!(error.contains("'faulty'"), "fault {mode}: the error does not name the plugin: {error}");
    assert!(
        calls.iter().any(|c| error.contains(&format!("`{c}`"))),
        "fault {mode}: the error names none of the calls {calls:?}: {error}"
    );
    for m in mentions {
        assert!(error.contains(m), "fault {mode}: the error does not mention {m:?}: {error}");
    }
    for line in stderr.lines().filter(|l| l.contains("panicked at")) {
        assert!(line.contains("faulty-plugin/src/"), "fault {mode}: the host panicked:\n{stderr}");
    }
    assert!(stderr.len() < 1500, "fault {mode}: {} bytes of stderr:\n{stderr}", stderr.len());
    println!("fault {mode}: {error}");
}

#[test]
fn faulty_plugin_without_a_fault_runs() {
    let (code, stderr) = run_fault("none");
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn fault_panic_in_new_theory_is_an_error() {
    assert_fault("panic_new", &["new_theory"], &["panic"]);
}

/// The host does not call `action` during a run; HMC evaluates the action inside the plugin,
/// so the fault surfaces in `hmc` (or in `action`, should the host start checking it).
#[test]
fn fault_panic_in_action_is_an_error() {
    assert_fault("panic_action", &["hmc", "action"], &["panic", "action"]);
}

#[test]
fn fault_nan_action_is_an_error() {
    assert_fault("nan_action", &["hmc", "action"], &["action", "NaN"]);
}

#[test]
fn fault_wrong_size_measure_is_an_error() {
    assert_fault("wrong_size_measure", &["measure"], &["1", "2"]);
}

#[test]
fn fault_nan_measure_is_an_error() {
    assert_fault("nan_measure", &["measure"], &["NaN"]);
}

#[test]
fn fault_panic_in_hmc_is_an_error() {
    assert_fault("panic_hmc", &["hmc"], &["panic"]);
}

#[test]
fn fault_wrong_size_initial_is_an_error() {
    assert_fault("wrong_size_initial", &["initial"], &["3", "4"]);
}

#[test]
fn fault_nan_left_by_hmc_is_an_error() {
    assert_fault("nan_hmc", &["hmc"], &["NaN"]);
}

/// A plugin that aborts the process (an unguarded panic does that) cannot be survived, but the
/// host names the plugin and the call before the process ends.
#[cfg(unix)]
#[test]
fn a_plugin_that_aborts_is_named_with_its_call() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let (card, _) = write_card(
        tmp.path(),
        "card",
        "[theory]\nplugin = \"faulty\"\nlattice = [4]\nfault = \"abort_measure\"\n\n\
         [[chain]]\nkind = \"hmc\"\nmd_steps = 4\n\n\
         [run]\nseed = 1\nthermalization = 2\nmeasurements = 5\noutput = \"{OUT}\"\n",
    );
    let out = run_with_dir(fixtures_dir(), &["run", card.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc_sigabrt()), "expected an abort:\n{stderr}");
    assert!(stderr.contains("latflow: plugin 'faulty' aborted the process in `measure`"), "{stderr}");
    println!("{}", stderr.trim());
    // the aborted run left an output without measurements or checkpoint: a rerun replaces it
    // (it aborts again, in the same call, rather than stopping at "already exists")
    let again = run_with_dir(fixtures_dir(), &["run", card.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("holds no measurement and has no checkpoint"), "{stderr}");
    assert!(stderr.contains("aborted the process in `measure`"), "{stderr}");
}

#[cfg(unix)]
fn libc_sigabrt() -> i32 {
    6 // SIGABRT on every unix latflow builds for (Linux, macOS, the BSDs)
}
