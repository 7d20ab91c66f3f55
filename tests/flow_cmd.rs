//! `latflow flow FILE.h5` end to end: ensembles of SU(2)/SU(3) configurations written through
//! the host's ensemble writer, flowed by the command, and its numbers checked against the core
//! gradient-flow functions; bad input refused with clear messages; the input never modified;
//! results independent of the thread count.

mod common;

use std::path::{Path, PathBuf};

use common::{expect_failure, latflow, run_ok};
use latflow_core::gauge::gradflow::{self, FlowOptions, FlowPoint, SCALE_REFERENCE};
use latflow_core::gauge::{FlowGroup, GaugeGroup, LieAlgebra, Su2, Su3};
use latflow_core::layout::{ElementKind, FieldLayout, Support};
use latflow_core::{Lattice, Stream};
use latflow_host::ensemble::{ConfigDef, EnsembleWriter, Provenance};
use serde_json::Value;

fn provenance(layout: &FieldLayout) -> Provenance {
    Provenance {
        latflow_version: "test".into(),
        run_card: String::new(),
        card_path: String::new(),
        card_hash: "0".into(),
        seed: 1,
        plugin_name: "test".into(),
        plugin_version: "0".into(),
        plugin_path: String::new(),
        created: "2026-01-01T00:00:00Z".into(),
        theory_params: "{}".into(),
        layout: serde_json::to_string(layout).unwrap(),
        model: String::new(),
    }
}

/// Writes an ensemble with `configs` (flat reals) under `layout`.
fn write_ensemble(path: &Path, layout: &FieldLayout, configs: &[Vec<f64>]) {
    let def = ConfigDef {
        config_len: layout.config_len(),
        shape: layout.config_dims(),
    };
    let mut w =
        EnsembleWriter::create(path, &provenance(layout), &[], &[], Some(&def), true).unwrap();
    for (i, c) in configs.iter().enumerate() {
        w.push_config(0, i as u64, c).unwrap();
    }
    w.flush().unwrap().first();
}

/// `count` configurations of Haar-random links (`hot`) or of links exp(0.6 X) with Gaussian X.
fn gauge_configs<G: FlowGroup>(lat: &Lattice, count: usize, hot: bool, seed: u64) -> Vec<Vec<G>> {
    let mut rng = Stream::new(seed, 0);
    let n_links = lat.volume() * lat.dim();
    let mut link = || {
        if hot {
            G::random(&mut rng)
        } else {
            G::exp(&G::Algebra::gaussian(&mut rng).scale(0.6))
        }
    };
    (0..count)
        .map(|_| (0..n_links).map(|_| link()).collect())
        .collect()
}

fn flat<G: GaugeGroup>(links: &[G]) -> Vec<f64> {
    let mut r = vec![0.0; links.len() * G::REALS];
    for (u, o) in links.iter().zip(r.chunks_exact_mut(G::REALS)) {
        u.write_reals(o);
    }
    r
}

fn su_layout(extents: &[usize], n: u32) -> FieldLayout {
    FieldLayout::single(
        extents,
        "links",
        Support::Link,
        ElementKind::complex_matrix(n),
    )
}

/// What the core functions give for the same configurations and options.
fn core_points<G: FlowGroup>(
    lat: &Lattice,
    configs: &[Vec<G>],
    times: &[f64],
    o: &FlowOptions,
) -> Vec<Vec<FlowPoint>> {
    configs
        .iter()
        .map(|c| {
            let mut u = c.clone();
            gradflow::flow_measurements(lat, &mut u, times, o).unwrap()
        })
        .collect()
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let x: Vec<f64> = v.collect();
    x.iter().sum::<f64>() / x.len() as f64
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
        "{what}: {a} vs {b}"
    );
}

fn flow_json(file: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["flow", file.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&run_ok(&args)).expect("flow --json printed invalid JSON")
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The linearised Γ-method errors of t0 and w0 in `json` against a leave-one-out jackknife of
/// the scales re-solved from the per-configuration flow points `pts` at `times`.
fn check_scale_errors_against_a_jackknife(json: &serde_json::Value, pts: &[Vec<FlowPoint>], times: &[f64]) {
    for (name, solve, sqrt) in [
        (
            "t0",
            gradflow::t0_crossing as fn(&[f64], &[f64], f64) -> _,
            false,
        ),
        ("w0", gradflow::w0_crossing, true),
    ] {
        let n = pts.len() as f64;
        let loo: Vec<f64> = (0..pts.len())
            .map(|i| {
                let c: Vec<f64> = (0..times.len())
                    .map(|k| {
                        pts.iter()
                            .enumerate()
                            .filter(|(j, _)| *j != i)
                            .map(|(_, p)| p[k].t2e)
                            .sum::<f64>()
                            / (n - 1.0)
                    })
                    .collect();
                let t = solve(times, &c, SCALE_REFERENCE).unwrap().t;
                if sqrt {
                    t.sqrt()
                } else {
                    t
                }
            })
            .collect();
        let m = mean(loo.iter().copied());
        let jk = ((n - 1.0) / n * loo.iter().map(|x| (x - m).powi(2)).sum::<f64>()).sqrt();
        let err = json[name]["value"]["error"].as_f64().unwrap();
        eprintln!("{name}: Γ-method error {err:e}, jackknife {jk:e}");
        assert!(
            err > 0.8 * jk && err < 1.25 * jk,
            "{name}: error {err} vs jackknife {jk}"
        );
    }
}

/// Each row of the flow table against the core's flow points: t, and the means of t²E, the
/// plaquette E, Q and Q² over the configurations; errors present after t = 0.
fn check_table_rows(table: &[Value], json: &Value, pts: &[Vec<FlowPoint>], times: &[f64]) {
    for (k, row) in table.iter().enumerate() {
        close(row["t"].as_f64().unwrap(), times[k], "t");
        close(
            row["t2e"]["mean"].as_f64().unwrap(),
            mean(pts.iter().map(|p| p[k].t2e)),
            "t2e",
        );
        close(
            row["e_plaq"]["mean"].as_f64().unwrap(),
            mean(pts.iter().map(|p| p[k].e_plaq)),
            "e_plaq",
        );
        close(
            row["q"]["mean"].as_f64().unwrap(),
            mean(pts.iter().map(|p| p[k].q.unwrap())),
            "q",
        );
        close(
            row["q2"]["mean"].as_f64().unwrap(),
            mean(pts.iter().map(|p| p[k].q.unwrap().powi(2))),
            "q2",
        );
        if k > 0 {
            assert!(
                row["t2e"]["error"].as_f64().is_some_and(|e| e > 0.0),
                "{row}: {}",
                json["notes"]
            );
        }
    }
}

#[test]
fn su3_4d_table_and_scales_match_the_core_functions() {
    let dir = tmp();
    let file = dir.path().join("su3.h5");
    let lat = Lattice::new(&[4, 4, 4, 4]).unwrap();
    let configs = gauge_configs::<Su3>(&lat, 24, true, 101);
    write_ensemble(
        &file,
        &su_layout(&[4, 4, 4, 4], 3),
        &configs.iter().map(|c| flat(c)).collect::<Vec<_>>(),
    );
    let before = std::fs::read(&file).unwrap();
    let csv = dir.path().join("flow.csv");
    let json = flow_json(
        &file,
        &[
            "--tmax",
            "1.2",
            "--dt",
            "0.1",
            "--eps",
            "0.02",
            "--out",
            csv.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the input ensemble was modified"
    );

    let times = gradflow::flow_grid(1.2, 0.1).unwrap();
    let o = FlowOptions {
        eps: 0.02,
        ..FlowOptions::default()
    };
    let pts = core_points(&lat, &configs, &times, &o);
    let table = json["table"].as_array().unwrap();
    assert_eq!(table.len(), times.len());
    assert_eq!(json["configs"], 24);
    assert_eq!(json["group"], "SU(3)");
    check_table_rows(table, &json, &pts, &times);
    // t0 and w0 on the mean curve, as the core solves them
    let curve: Vec<f64> = (0..times.len())
        .map(|k| mean(pts.iter().map(|p| p[k].t2e)))
        .collect();
    let t0 = gradflow::t0_crossing(&times, &curve, SCALE_REFERENCE).unwrap();
    close(json["t0"]["value"]["mean"].as_f64().unwrap(), t0.t, "t0");
    let w0 = gradflow::w0_crossing(&times, &curve, SCALE_REFERENCE).unwrap();
    close(
        json["w0"]["value"]["mean"].as_f64().unwrap(),
        w0.t.sqrt(),
        "w0",
    );
    check_scale_errors_against_a_jackknife(&json, &pts, &times);
    // the CSV holds the same table
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "t,t2e,t2e_err,e,e_err,e_plaq,e_plaq_err,q,q_err,q2,q2_err"
    );
    assert_eq!(lines.len(), times.len() + 1);
    let last: Vec<f64> = lines[times.len()]
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    close(last[1], curve[times.len() - 1], "csv t2e");
    // the text table names the scales
    let text = run_ok(&[
        "flow",
        file.to_str().unwrap(),
        "--tmax",
        "1.2",
        "--dt",
        "0.1",
        "--eps",
        "0.02",
    ]);
    assert!(
        text.contains("t0/a^2") && text.contains("w0/a") && text.contains("<Q^2>"),
        "{text}"
    );
}

#[test]
fn su2_3d_adaptive_symanzik_and_thread_independence() {
    let dir = tmp();
    let file = dir.path().join("su2.h5");
    let lat = Lattice::new(&[4, 6, 4]).unwrap();
    let configs = gauge_configs::<Su2>(&lat, 5, false, 202);
    write_ensemble(
        &file,
        &su_layout(&[4, 6, 4], 2),
        &configs.iter().map(|c| flat(c)).collect::<Vec<_>>(),
    );
    let args = [
        "--times",
        "0,0.2,0.5,1",
        "--scheme",
        "symanzik",
        "--adaptive",
        "1e-5",
        "--eps",
        "0.05",
    ];
    let json = flow_json(&file, &args);
    let o = FlowOptions {
        eps: 0.05,
        scheme: gradflow::FlowScheme::Symanzik,
        adaptive: Some(1e-5),
    };
    let times = [0.0, 0.2, 0.5, 1.0];
    let pts = core_points(&lat, &configs, &times, &o);
    for (k, row) in json["table"].as_array().unwrap().iter().enumerate() {
        close(
            row["t2e"]["mean"].as_f64().unwrap(),
            mean(pts.iter().map(|p| p[k].t2e)),
            "t2e",
        );
        close(
            row["e"]["mean"].as_f64().unwrap(),
            mean(pts.iter().map(|p| p[k].e_clover)),
            "e",
        );
        assert!(row["q"].is_null() && row["q2"].is_null());
    }
    let notes = json["notes"].to_string();
    assert!(
        notes.contains("d = 3") && notes.contains("Q and Q^2 are omitted"),
        "{notes}"
    );
    assert_eq!(json["scheme"], "symanzik");
    // same bits on one thread and on two
    let run = |threads: &str| {
        let mut a = vec!["flow", file.to_str().unwrap(), "--json"];
        a.extend_from_slice(&args);
        let out = latflow()
            .env("RAYON_NUM_THREADS", threads)
            .args(&a)
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    assert_eq!(run("1"), run("2"));
}

fn write_raw(dir: &Path, name: &str, layout: &FieldLayout, configs: &[Vec<f64>]) -> PathBuf {
    let f = dir.join(name);
    write_ensemble(&f, layout, configs);
    f
}

#[test]
fn bad_input_is_refused_clearly() {
    let dir = tmp();
    let d = dir.path();
    let lat = Lattice::new(&[4, 4]).unwrap();
    let good = gauge_configs::<Su3>(&lat, 2, true, 303);
    let good_file = write_raw(
        d,
        "good.h5",
        &su_layout(&[4, 4], 3),
        &good.iter().map(|c| flat(c)).collect::<Vec<_>>(),
    );
    let g = good_file.to_str().unwrap();
    // a U(1) angle field
    let angles = FieldLayout::single(&[4, 4], "links", Support::Link, ElementKind::Angle);
    let f = write_raw(d, "u1.h5", &angles, &[vec![0.1; 32]]);
    expect_failure(
        &["flow", f.to_str().unwrap()],
        &["not a gauge field", "Angle"],
    );
    // a site field of matrices
    let site = FieldLayout::single(&[4, 4], "m", Support::Site, ElementKind::complex_matrix(3));
    let f = write_raw(d, "site.h5", &site, &[vec![0.0; 16 * 18]]);
    expect_failure(
        &["flow", f.to_str().unwrap()],
        &["not a gauge field", "lives on sites"],
    );
    // SU(4) links
    let f = write_raw(d, "su4.h5", &su_layout(&[4, 4], 4), &[vec![0.0; 32 * 32]]);
    expect_failure(
        &["flow", f.to_str().unwrap()],
        &["4x4 matrices", "SU(2) and SU(3)"],
    );
    // a link that is not in SU(3)
    let mut broken = flat(&good[0]);
    broken[18 * 5 + 2] += 0.01;
    let f = write_raw(d, "broken.h5", &su_layout(&[4, 4], 3), &[broken]);
    expect_failure(
        &["flow", f.to_str().unwrap()],
        &["configuration 0: link 5", "not an SU(3) matrix"],
    );
    // no configurations
    let f = write_raw(d, "empty.h5", &su_layout(&[4, 4], 3), &[]);
    expect_failure(&["flow", f.to_str().unwrap()], &["holds no configurations"]);
    let f = d.join("noconfigs.h5");
    let layout = su_layout(&[4, 4], 3);
    EnsembleWriter::create(&f, &provenance(&layout), &[], &[], None, true)
        .unwrap()
        .flush()
        .unwrap();
    expect_failure(
        &["flow", f.to_str().unwrap()],
        &["stores no configurations"],
    );
    // times, steps, schemes
    expect_failure(
        &["flow", g, "--times", "0.5,0.2"],
        &["--times", "must increase", "entry 1 is 0.2"],
    );
    expect_failure(
        &["flow", g, "--times", "-1,2"],
        &["--times", "flow time -1"],
    );
    expect_failure(&["flow", g, "--tmax", "-1"], &["--tmax -1"]);
    expect_failure(&["flow", g, "--dt", "0"], &["--dt 0"]);
    expect_failure(&["flow", g, "--eps", "0"], &["eps = 0"]);
    expect_failure(&["flow", g, "--adaptive", "-1"], &["tolerance -1"]);
    expect_failure(
        &["flow", g, "--scheme", "zeuthen"],
        &["--scheme \"zeuthen\"", "wilson, symanzik"],
    );
    expect_failure(
        &["flow", g, "--coupling", "3"],
        &["--coupling 3", "1 coupling"],
    );
    // t0 out of reach is reported, not fatal; --out never overwrites the input
    let before = std::fs::read(&good_file).unwrap();
    expect_failure(
        &["flow", g, "--tmax", "0.1", "--out", g],
        &["--out", "input ensemble"],
    );
    assert_eq!(std::fs::read(&good_file).unwrap(), before);
    let out = run_ok(&["flow", g, "--times", "0,0.01,0.02"]);
    assert!(
        out.contains("t0/a^2 : not determined") && out.contains("flow to larger times"),
        "{out}"
    );
}
