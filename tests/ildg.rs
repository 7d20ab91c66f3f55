//! ILDG files end to end: `latflow export --ildg` of SU(3) ensembles, `latflow import` back,
//! bit-identical at 64 bits, every refusal through the command line, and runs that start
//! from a stored configuration (`[run] start = { file = … }`).
//!
//! SU(N) ensembles are written here with the host's ensemble writer and random links from
//! `core::gauge` (no theory plugin needed).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::{analyze_json, expect_failure, run_ok, write_card};
use latflow_core::gauge::{mean_plaquette, GaugeGroup, LinkField, Su2, Su3};
use latflow_core::lattice::Lattice;
use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_core::rng::Stream;
use latflow_host::ensemble::{self, ConfigDef, EnsembleWriter, ObservableDef, Provenance};

/// HDF5 opens files without O_CLOEXEC: a `latflow` child spawned while this process has an
/// ensemble open would inherit (and lock) it. The tests here run one at a time (each takes
/// this lock before it opens a file or spawns a child) and close their files before spawning.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Random links of SU(N) (N = 2, 3) on `shape`, in the flat layout.
fn random_links(shape: &[usize], n: u32, seed: u64) -> Vec<f64> {
    let (d, v) = (shape.len(), shape.iter().product::<usize>());
    let mut rng = Stream::new(seed, 1);
    fn fill<G: GaugeGroup>(d: usize, v: usize, rng: &mut Stream) -> Vec<f64> {
        let f = LinkField::<G>::random(d, v, rng).unwrap();
        let mut out = vec![0.0; d * v * G::REALS];
        f.write_reals(&mut out).unwrap();
        out
    }
    match n {
        2 => fill::<Su2>(d, v, &mut rng),
        _ => fill::<Su3>(d, v, &mut rng),
    }
}

fn plaquette(shape: &[usize], links: &[f64]) -> f64 {
    let lat = Lattice::new(&shape.iter().map(|&l| l as i64).collect::<Vec<_>>()).unwrap();
    let u: Vec<Su3> = links.chunks_exact(18).map(Su3::from_reals).collect();
    mean_plaquette(&lat, u.as_slice())
}

/// Writes an ensemble of the given layout holding `configs` (sweeps 10, 20, …).
fn write_ensemble(path: &Path, layout: &FieldLayout, configs: &[Vec<f64>]) {
    let prov = Provenance {
        latflow_version: "test".into(),
        run_card: "# written by tests/ildg.rs\n".into(),
        card_path: "none".into(),
        card_hash: "0".into(),
        seed: 1,
        plugin_name: "sun".into(),
        plugin_version: "0".into(),
        plugin_path: "".into(),
        created: "2026-01-01T00:00:00Z".into(),
        theory_params: "{}".into(),
        layout: serde_json::to_string(layout).unwrap(),
        model: String::new(),
    };
    let obs = [ObservableDef {
        name: "x".into(),
        len: 1,
        description: "index".into(),
    }];
    let def = (!configs.is_empty()).then(|| ConfigDef {
        config_len: layout.config_len(),
        shape: layout.config_dims(),
    });
    let mut w = EnsembleWriter::create(path, &prov, &obs, &[], def.as_ref(), true).unwrap();
    for (i, c) in configs.iter().enumerate() {
        w.push_measurement(0, 10 * (i as u64 + 1), &[i as f64])
            .unwrap();
        w.push_config(0, 10 * (i as u64 + 1), c).unwrap();
    }
    if configs.is_empty() {
        w.push_measurement(0, 0, &[0.0]).unwrap();
    }
    w.flush().unwrap().first();
}

fn su_layout(shape: &[usize], n: u32) -> FieldLayout {
    FieldLayout::single(
        shape,
        "links",
        Support::Link,
        ElementKind::complex_matrix(n),
    )
}

/// The SU(3) 4⁴-like ensemble most tests use: 3 configurations on 4×4×2×6.
const SHAPE: [usize; 4] = [4, 4, 2, 6];

fn su3_ensemble(dir: &Path) -> (PathBuf, Vec<Vec<f64>>) {
    let path = dir.join("ens.h5");
    let configs: Vec<Vec<f64>> = (0..3).map(|i| random_links(&SHAPE, 3, 100 + i)).collect();
    write_ensemble(&path, &su_layout(&SHAPE, 3), &configs);
    (path, configs)
}

/// The exported files and plaquettes `latflow export` printed.
fn exported(stdout: &str) -> Vec<(PathBuf, usize, u64, f64)> {
    stdout
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!((w[1], w[3], w[5]), ("index", "sweep", "plaquette"), "{l}");
            (
                PathBuf::from(w[0]),
                w[2].parse().unwrap(),
                w[4].parse().unwrap(),
                w[6].parse().unwrap(),
            )
        })
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn export_then_import_is_bit_identical_at_64_bits() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let (ens, configs) = su3_ensemble(dir.path());
    let out = dir.path().join("ildg");
    let printed = exported(&run_ok(&["export", s(&ens), "--ildg", s(&out)]));
    assert_eq!(printed.len(), 3);
    for (i, (file, index, sweep, plaq)) in printed.iter().enumerate() {
        assert_eq!(file, &out.join(format!("ens.{i:05}.lime")));
        assert_eq!((*index, *sweep), (i, 10 * (i as u64 + 1)));
        // the printed plaquette is the configuration's, to the last bit
        assert_eq!(plaq.to_bits(), plaquette(&SHAPE, &configs[i]).to_bits());
        // 144-byte headers, 8-byte padding: the data record is V·4·9·16 bytes
        let bytes = std::fs::read(file).unwrap();
        assert!(bytes.len() > 4 * 4 * 2 * 6 * 4 * 144 && bytes[..4] == [0x45, 0x67, 0x89, 0xab]);
    }
    let files: Vec<String> = printed.iter().map(|p| p.0.display().to_string()).collect();
    let imported = dir.path().join("imported.h5");
    let mut args = vec!["import"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["--output", s(&imported)]);
    let text = run_ok(&args);
    assert!(
        text.contains(
            "ILDG, 64 bits, SciDAC checksum verified, LFN lfn://latflow/ens/ens.00001.lime"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("wrote {}", imported.display())),
        "{text}"
    );
    let back = ensemble::read_configs(&imported, 0, 3).unwrap();
    let original: Vec<f64> = configs.concat();
    assert_eq!(back.len(), original.len());
    assert!(
        back.iter()
            .zip(&original)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "round trip is not bit-identical"
    );

    // the imported ensemble is an ordinary latflow ensemble
    let info = run_ok(&["inspect", s(&imported)]);
    assert!(
        info.contains("/configs         [3, 13824], shape [4, 4, 2, 6, 4, 3, 3, 2]"),
        "{info}"
    );
    assert!(info.contains("ens.00002.lime (ILDG, 64 bits"), "{info}");
    let json = analyze_json(&imported);
    let mean = json["observables"]["plaquette"]["mean"].as_f64().unwrap();
    let want = configs.iter().map(|c| plaquette(&SHAPE, c)).sum::<f64>() / 3.0;
    assert!((mean - want).abs() < 1e-14, "{mean} vs {want}");

    // and exports again to the same bytes (apart from the creation times in the XML)
    let again = dir.path().join("again");
    let second = exported(&run_ok(&[
        "export",
        s(&imported),
        "--ildg",
        s(&again),
        "--index",
        "1",
    ]));
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].3.to_bits(), printed[1].3.to_bits());
}

#[test]
fn export_at_32_bits_chooses_configurations_and_imports_within_float_rounding() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let (ens, configs) = su3_ensemble(dir.path());
    let out = dir.path().join("single");
    let printed = exported(&run_ok(&[
        "export",
        s(&ens),
        "--ildg",
        s(&out),
        "--precision",
        "32",
        "--range",
        "1..3",
        "--lfn",
        "lfn://test",
    ]));
    let idx: Vec<usize> = printed.iter().map(|p| p.1).collect();
    assert_eq!(idx, [1, 2]);
    let rounded: Vec<f64> = configs[1].iter().map(|&x| x as f32 as f64).collect();
    assert_eq!(
        printed[0].3.to_bits(),
        plaquette(&SHAPE, &rounded).to_bits()
    );
    let imported = dir.path().join("single.h5");
    let text = run_ok(&["import", s(&printed[0].0), "-o", s(&imported)]);
    assert!(
        text.contains("ILDG, 32 bits, SciDAC checksum verified, reunitarised")
            && text.contains("LFN lfn://test/ens.00001.lime"),
        "{text}"
    );
    let back = ensemble::read_configs(&imported, 0, 1).unwrap();
    let worst = back
        .iter()
        .zip(&configs[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst > 0.0 && worst <= 4.0 * f32::EPSILON as f64, "{worst}");
    let chosen = exported(&run_ok(&[
        "export",
        s(&ens),
        "--ildg",
        s(&out),
        "--index",
        "0,2,0",
        "--force",
    ]));
    assert_eq!(chosen.iter().map(|p| p.1).collect::<Vec<_>>(), [0, 2]);
}

#[test]
fn export_refuses_what_ildg_cannot_hold() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    type Case<'a> = (&'a str, FieldLayout, Vec<Vec<f64>>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "three_d.h5",
            su_layout(&[4, 4, 4], 3),
            vec![random_links(&[4, 4, 4], 3, 1)],
            &["four-dimensional", "[4, 4, 4] (d = 3)"],
        ),
        (
            "su2.h5",
            su_layout(&[2, 2, 2, 2], 2),
            vec![random_links(&[2, 2, 2, 2], 2, 2)],
            &["only su3gauge", "SU(2)"],
        ),
        (
            "phi.h5",
            FieldLayout::single(&[2, 2, 2, 2], "phi", Support::Site, ElementKind::Real),
            vec![vec![0.5; 16]],
            &["SU(3) link matrices", "reals on the sites"],
        ),
        (
            "empty.h5",
            su_layout(&SHAPE, 3),
            vec![],
            &["stores no configurations"],
        ),
    ];
    for (name, layout, configs, needles) in cases {
        let path = d.join(name);
        write_ensemble(&path, &layout, &configs);
        let mut all = vec![path.to_str().unwrap()];
        all.extend_from_slice(needles);
        expect_failure(&["export", s(&path), "--ildg", s(&d.join("out"))], &all);
    }
    // a link off SU(3) by 1e-9
    let mut bad = random_links(&SHAPE, 3, 7);
    bad[18 * 5 + 3] *= 1.0 + 1e-9;
    let path = d.join("drift.h5");
    write_ensemble(&path, &su_layout(&SHAPE, 3), &[bad]);
    expect_failure(
        &["export", s(&path), "--ildg", s(&d.join("out"))],
        &[
            "configuration 0",
            "U_1(x, y, z, t = 0, 0, 0, 1)",
            "not an SU(3) matrix",
        ],
    );

    let (ens, _) = su3_ensemble(d);
    let out = d.join("out");
    expect_failure(
        &["export", s(&ens), "--ildg", s(&out), "--index", "3"],
        &["index 3 out of range", "stores 3"],
    );
    expect_failure(
        &["export", s(&ens), "--ildg", s(&out), "--range", "2..1"],
        &["--range", "START must be below END"],
    );
    // an argument error (clap's exit code 2)
    let o = common::run(&["export", s(&ens), "--ildg", s(&out), "--precision", "48"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(2) && err.contains("--precision") && err.contains("32 or 64"),
        "{err}"
    );
    expect_failure(
        &["export", s(&ens), "--ildg", s(&out), "--coupling", "1"],
        &["--coupling 1", "1 coupling"],
    );
    run_ok(&["export", s(&ens), "--ildg", s(&out), "--index", "0"]);
    expect_failure(
        &["export", s(&ens), "--ildg", s(&out), "--index", "0"],
        &["ens.00000.lime", "already exists", "--force"],
    );
}

#[test]
fn import_refuses_damaged_and_mismatched_files() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ens, _) = su3_ensemble(d);
    let out = d.join("x");
    let printed = exported(&run_ok(&[
        "export",
        s(&ens),
        "--ildg",
        s(&out),
        "--index",
        "0",
    ]));
    let good = std::fs::read(&printed[0].0).unwrap();
    let cut = d.join("cut.lime");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    expect_failure(
        &["import", s(&cut), "-o", s(&d.join("a.h5"))],
        &["cut.lime: LIME structure: truncated"],
    );
    // a flipped low bit in the binary data: the checksum catches it
    let flipped = d.join("flipped.lime");
    let mut f = good.clone();
    let at = good.len() - 1000;
    f[at] ^= 1;
    std::fs::write(&flipped, &f).unwrap();
    expect_failure(
        &["import", s(&flipped), "-o", s(&d.join("a.h5"))],
        &["flipped.lime: record scidac-checksum", "damaged"],
    );
    assert!(!d.join("a.h5").exists());
    // two lattices in one import
    let other = d.join("other.h5");
    write_ensemble(
        &other,
        &su_layout(&[2, 2, 2, 2], 3),
        &[random_links(&[2, 2, 2, 2], 3, 9)],
    );
    let o = exported(&run_ok(&["export", s(&other), "--ildg", s(&out)]));
    expect_failure(
        &[
            "import",
            s(&printed[0].0),
            s(&o[0].0),
            "-o",
            s(&d.join("a.h5")),
        ],
        &["other.00000.lime: lattice 2×2×2×2", "differs from 4×4×2×6"],
    );
    expect_failure(
        &["import", s(&printed[0].0), "-o", s(&ens)],
        &["ens.h5", "already exists"],
    );
    expect_failure(
        &["import", s(&ens), "-o", s(&d.join("a.h5"))],
        &["ens.h5: file: neither an ILDG/LIME file"],
    );
}

const PHI4: &str = r#"
[theory]
plugin = "phi4"
lattice = [6, 4]
m2 = -4.0
lambda = 8.0

[[chain]]
kind = "hmc"
md_steps = {MD}
trajectory_length = {TAU}

[run]
seed = 3
thermalization = {THERM}
measurements = {MEAS}
save_every = 1
output = "{OUT}"
{START}
"#;

fn phi4_card(md: u32, tau: f64, therm: u32, meas: u32, start: &str) -> String {
    PHI4.replace("{MD}", &md.to_string())
        .replace("{TAU}", &tau.to_string())
        .replace("{THERM}", &therm.to_string())
        .replace("{MEAS}", &meas.to_string())
        .replace("{START}", start)
}

#[test]
fn a_run_starts_from_a_stored_configuration() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (card, first) = write_card(d, "first", &phi4_card(8, 1.0, 50, 5, ""));
    run_ok(&["run", s(&card)]);
    let m_first = ensemble::read_ensemble(&first)
        .unwrap()
        .observables
        .iter()
        .find(|o| o.name == "magnetization")
        .unwrap()
        .values
        .clone();
    // one trajectory of length 1e-6 barely moves the field: the first measurement of a run
    // started from configuration 2 is that configuration's magnetisation
    let start = format!("start = {{ file = \"{}\", index = 2 }}", first.display());
    let (card, second) = write_card(d, "second", &phi4_card(1, 1e-6, 0, 1, &start));
    run_ok(&["run", s(&card)]);
    let m = ensemble::read_ensemble(&second)
        .unwrap()
        .observables
        .iter()
        .find(|o| o.name == "magnetization")
        .unwrap()
        .values[0];
    assert!((m - m_first[2]).abs() < 1e-6, "{m} vs {}", m_first[2]);
    // which no other stored configuration matches
    assert!(
        [0, 1, 3, 4]
            .iter()
            .all(|&j| (m_first[j] - m_first[2]).abs() > 1e-4),
        "{m_first:?}"
    );
    // the default is the last configuration
    let start = format!("start = {{ file = \"{}\" }}", first.display());
    let (card, third) = write_card(d, "third", &phi4_card(1, 1e-6, 0, 1, &start));
    run_ok(&["run", s(&card)]);
    let m = ensemble::read_ensemble(&third)
        .unwrap()
        .observables
        .iter()
        .find(|o| o.name == "magnetization")
        .unwrap()
        .values[0];
    assert!((m - m_first[4]).abs() < 1e-6, "{m} vs {}", m_first[4]);

    // refusals, each naming run.start and the file
    let bad = |name: &str, start: &str, needles: &[&str]| {
        let (card, _) = write_card(d, name, &phi4_card(1, 0.1, 0, 1, start));
        expect_failure(&["run", s(&card)], needles);
    };
    bad(
        "b1",
        &format!("start = {{ file = \"{}\", index = 5 }}", first.display()),
        &["run.start", "index = 5 is out of range", "stores 5"],
    );
    bad(
        "b2",
        "start = { file = \"/nonexistent/conf.lime\" }",
        &["run.start.file", "does not exist"],
    );
    bad(
        "b3",
        "start = \"warm\"",
        &["run.start", "unknown start \"warm\""],
    );
    bad(
        "b4",
        &format!("start = {{ file = \"{}\", seed = 1 }}", first.display()),
        &["run.start", "unknown key 'seed'"],
    );
    bad("b5", "start = 3", &["run.start", "expected \"cold\""]);
    // an SU(3) configuration for a scalar theory
    let (ens, _) = su3_ensemble(d);
    bad(
        "b6",
        &format!("start = {{ file = \"{}\" }}", ens.display()),
        &[
            "run.start",
            "does not fit the theory",
            "3×3 complex matrices on the links of a [4, 4, 2, 6] lattice",
            "reals on the sites of a [6, 4] lattice",
        ],
    );
}

#[test]
fn an_imported_ildg_configuration_is_refused_by_a_theory_of_another_layout() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ens, _) = su3_ensemble(d);
    let printed = exported(&run_ok(&[
        "export",
        s(&ens),
        "--ildg",
        s(&d.join("x")),
        "--index",
        "1",
    ]));
    let card = format!(
        "[theory]\nplugin = \"u1\"\nlattice = [4, 4, 2, 6]\nbeta = 1.0\n\n[[chain]]\nkind = \"hmc\"\nmd_steps = 4\n\n[run]\nseed = 1\nmeasurements = 1\noutput = \"{{OUT}}\"\nstart = {{ file = \"{}\" }}\n",
        printed[0].0.display()
    );
    let (card, out) = write_card(d, "u1", &card);
    expect_failure(
        &["run", s(&card)],
        &[
            "run.start",
            "ens.00001.lime",
            "does not fit the theory",
            "3×3 complex matrices on the links",
            "angles on the links of a [4, 4, 2, 6] lattice",
        ],
    );
    assert!(!out.exists());
}

/// lyncs_io, a third-party ILDG reader, reads exported files (64 and 32 bits) and gives the
/// plaquette latflow printed to 1e-12 and the same link values. It needs a python with
/// lyncs_io (`tools/ildg_check.sh` makes one): LATFLOW_LYNCS_PYTHON names it. With
/// LATFLOW_REQUIRE_LYNCS=1 (set by that script) the check is mandatory; otherwise it is skipped,
/// with a message, when no such python is given.
#[test]
fn a_third_party_reader_agrees_on_the_plaquette() {
    let python = std::env::var_os("LATFLOW_LYNCS_PYTHON");
    let Some(python) = python else {
        assert!(
            std::env::var_os("LATFLOW_REQUIRE_LYNCS").is_none(),
            "LATFLOW_REQUIRE_LYNCS is set but LATFLOW_LYNCS_PYTHON is not"
        );
        eprintln!("LATFLOW_LYNCS_PYTHON not set: skipping the lyncs_io check (tools/ildg_check.sh runs it)");
        return;
    };
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // a smooth-ish field (links near 1) on a lattice with four different extents, so that
    // plaquettes are far from 0 and any axis mix-up shows in the link comparison
    let shape = [4, 6, 2, 8];
    let mut configs = Vec::new();
    for seed in 0..2 {
        let hot = random_links(&shape, 3, 50 + seed);
        let v: usize = shape.iter().product();
        let mut u: Vec<Su3> = hot.chunks_exact(18).map(Su3::from_reals).collect();
        // U → (1 + ε H) projected: near the identity, still in SU(3)
        for l in &mut u {
            let mut m = Su3::identity();
            m.axpy(0.3, l);
            latflow_core::gauge::su3::reunitarize(&mut m);
            *l = m;
        }
        let mut flat = vec![0.0; v * 4 * 18];
        LinkField::from_links(4, u).write_reals(&mut flat).unwrap();
        configs.push(flat);
    }
    let ens = d.join("smooth.h5");
    write_ensemble(&ens, &su_layout(&shape, 3), &configs);
    let script = common::workspace_root().join("tools/ildg_check.py");
    let (x, y, z, t, mu) = (3, 5, 1, 6, 2);
    let site = ((x * shape[1] + y) * shape[2] + z) * shape[3] + t;
    for precision in ["64", "32"] {
        let out = d.join(format!("p{precision}"));
        let printed = exported(&run_ok(&[
            "export",
            s(&ens),
            "--ildg",
            s(&out),
            "--precision",
            precision,
        ]));
        for (file, i, _, plaq) in &printed {
            let res = std::process::Command::new(&python)
                .arg(&script)
                .arg(file)
                .args([
                    "--link",
                    &x.to_string(),
                    &y.to_string(),
                    &z.to_string(),
                    &t.to_string(),
                    &mu.to_string(),
                ])
                .output()
                .unwrap();
            assert!(
                res.status.success(),
                "{}",
                String::from_utf8_lossy(&res.stderr)
            );
            let j: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
            let theirs = j["plaquette"].as_f64().unwrap();
            eprintln!(
                "lyncs_io {precision}-bit {}: shape {} dtype {}: plaquette latflow {plaq} numpy {theirs} |diff| {:.1e}",
                file.file_name().unwrap().to_string_lossy(),
                j["shape"],
                j["dtype"],
                (plaq - theirs).abs()
            );
            assert!((plaq - theirs).abs() < 1e-12, "{plaq} vs {theirs}");
            assert!(plaq.abs() > 0.3, "{plaq}");
            assert_eq!(j["shape"], serde_json::json!([8, 2, 6, 4, 4, 3, 3]));
            let link: Vec<f64> = j["link"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let ours = &configs[*i][(site * 4 + mu) * 18..(site * 4 + mu + 1) * 18];
            for (a, b) in link.iter().zip(ours) {
                let want = if precision == "32" {
                    *b as f32 as f64
                } else {
                    *b
                };
                assert_eq!(
                    a.to_bits(),
                    want.to_bits(),
                    "link U_{mu}({x}, {y}, {z}, {t}): {link:?} vs {ours:?}"
                );
            }
        }
    }
}

/// With the SU(N) theory plugin (`plugin = "sun"`, built with the workspace): a 4D SU(3) run
/// starts from an exported ILDG file (its first measured plaquette, after one trajectory of
/// length 10⁻⁶, is the file's), and an SU(2) theory or another lattice refuses the same file.
#[test]
fn an_su3_run_starts_from_an_ildg_file() {
    // before any child is spawned (see SERIAL)
    let _s = serial();
    let listing = run_ok(&["plugins"]);
    assert!(listing.lines().any(|l| l.starts_with("sun ")), "no sun plugin on the search path:\n{listing}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ens, configs) = su3_ensemble(d);
    let printed = exported(&run_ok(&[
        "export",
        s(&ens),
        "--ildg",
        s(&d.join("x")),
        "--index",
        "2",
    ]));
    let (file, _, _, plaq) = &printed[0];
    assert_eq!(plaq.to_bits(), plaquette(&SHAPE, &configs[2]).to_bits());
    let card = |n: u32, lattice: &str| {
        format!(
            "[theory]\nplugin = \"sun\"\nlattice = {lattice}\nn = {n}\nbeta = 5.7\n\n[[chain]]\nkind = \"hmc\"\nmd_steps = 1\n\
             trajectory_length = 1e-6\n\n[run]\nseed = 1\nmeasurements = 1\noutput = \"{{OUT}}\"\nstart = {{ file = \"{}\" }}\n",
            file.display()
        )
    };
    let (c, out) = write_card(d, "su3", &card(3, "[4, 4, 2, 6]"));
    run_ok(&["run", s(&c)]);
    let e = ensemble::read_ensemble(&out).unwrap();
    let p = e
        .observables
        .iter()
        .find(|o| o.name == "plaquette")
        .unwrap()
        .values[0];
    assert!((p - plaq).abs() < 1e-5, "{p} vs {plaq}");
    // the same configuration through `latflow import`: a run starts from the imported ensemble
    let imported = d.join("imported.h5");
    run_ok(&["import", s(file), "-o", s(&imported)]);
    let text = card(3, "[4, 4, 2, 6]")
        .replace(&file.display().to_string(), &imported.display().to_string());
    let (c, out) = write_card(d, "su3_imported", &text);
    run_ok(&["run", s(&c)]);
    let e = ensemble::read_ensemble(&out).unwrap();
    let p2 = e
        .observables
        .iter()
        .find(|o| o.name == "plaquette")
        .unwrap()
        .values[0];
    assert_eq!(
        p2.to_bits(),
        p.to_bits(),
        "same start, same seed: same first measurement"
    );
    let (c, _) = write_card(d, "su2", &card(2, "[4, 4, 2, 6]"));
    expect_failure(
        &["run", s(&c)],
        &[
            "run.start",
            "does not fit the theory",
            "2×2 complex matrices",
        ],
    );
    let (c, _) = write_card(d, "l8", &card(3, "[4, 4, 2, 8]"));
    expect_failure(
        &["run", s(&c)],
        &[
            "run.start",
            "lattice [4, 4, 2, 6] differs from [4, 4, 2, 8]",
        ],
    );
}
