//! Tests of ensemble writing, resuming and reading.

use super::*;
use hdf5::File;
use std::sync::{RwLock, RwLockReadGuard};

/// HDF5 opens files without `O_CLOEXEC`. The ensemble code marks its own descriptors
/// close-on-exec (`h5::close_on_exec`), but these tests also open files through `hdf5::File`
/// directly, and a child process spawned while such a file is open inherits the descriptor and
/// its lock (opening the file then fails with "unable to lock file" until the child exits).
/// Tests hold this lock for reading; the tests that spawn a child hold it for writing while
/// they spawn.
static OPEN_FILES: RwLock<()> = RwLock::new(());

fn files() -> RwLockReadGuard<'static, ()> {
    OPEN_FILES.read().unwrap_or_else(|e| e.into_inner())
}

fn prov() -> Provenance {
    Provenance {
        latflow_version: "0.1.0".into(),
        run_card: "[theory]\nname = \"phi4\"\n# ünïcödé\n".into(),
        card_path: "cards/phi4.toml".into(),
        card_hash: "deadbeef".into(),
        seed: u64::MAX - 7,
        plugin_name: "phi4".into(),
        plugin_version: "0.1.0".into(),
        plugin_path: "/tmp/libphi4.so".into(),
        created: "2025-01-02T03:04:05Z".into(),
        theory_params: r#"{"kappa":0.18,"lambda":1.1}"#.into(),
        model: String::new(),
        layout: r#"{"shape":[4,4],"components":1}"#.into(),
    }
}

fn obs() -> Vec<ObservableDef> {
    vec![
        ObservableDef {
            name: "mag".into(),
            len: 1,
            description: "magnetisation".into(),
        },
        ObservableDef {
            name: "corr".into(),
            len: 3,
            description: "correlator".into(),
        },
        ObservableDef {
            name: "action".into(),
            len: 1,
            description: "action density".into(),
        },
    ]
}

fn steps() -> Vec<StepDef> {
    vec![
        StepDef {
            label: "hmc".into(),
            kind: "hmc".into(),
            index: 0,
            params: r#"{"n_md":10}"#.into(),
            columns: vec!["delta_h".into()],
        },
        StepDef {
            label: "flip".into(),
            kind: "global_flip".into(),
            index: 1,
            params: "{}".into(),
            columns: vec!["log_q".into(), "action".into()],
        },
    ]
}

fn cdef() -> ConfigDef {
    ConfigDef {
        config_len: 16,
        shape: vec![4, 4],
    }
}

/// Deterministic, bit-pattern-rich values (negative zero, subnormals, NaN payloads excluded).
fn val(i: usize, j: usize) -> f64 {
    let x = (i as f64 + 1.0) * 0.1 + (j as f64) * 1e-7;
    if (i + j).is_multiple_of(5) {
        -x / 3.0
    } else {
        x.sqrt() * 1e300_f64.powf((j % 3) as f64 / 10.0)
    }
}

fn row(i: usize) -> Vec<f64> {
    (0..5).map(|j| val(i, j)).collect()
}

fn config(i: usize) -> Vec<f64> {
    (0..16).map(|j| val(i + 1000, j)).collect()
}

/// Pushes measurements [from, to), one hmc record per measurement, a flip record every other
/// one and a config every third one.
fn push_range(w: &mut EnsembleWriter, from: usize, to: usize) {
    for i in from..to {
        w.push_measurement(0, 10 * i as u64, &row(i)).unwrap();
        w.push_step_record(0, 0, i % 3 != 0, &[val(i, 7)]).unwrap();
        if i % 2 == 0 {
            w.push_step_record(0, 1, i % 4 == 0, &[val(i, 8), val(i, 9)])
                .unwrap();
        }
        if i % 3 == 0 {
            w.push_config(0, 10 * i as u64, &config(i)).unwrap();
        }
    }
}

fn create(path: &Path) -> EnsembleWriter {
    EnsembleWriter::create(path, &prov(), &obs(), &steps(), Some(&cdef()), false).unwrap()
}

fn check_contents(path: &Path, n: usize) {
    let e = read_ensemble(path).unwrap();
    assert_eq!(e.schema_version, SCHEMA_VERSION);
    assert_eq!(e.provenance, prov());
    assert_eq!(e.sweeps, (0..n).map(|i| 10 * i as u64).collect::<Vec<_>>());
    let names: Vec<_> = e.observables.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["mag", "corr", "action"]);
    let (mag, corr, action) = (&e.observables[0], &e.observables[1], &e.observables[2]);
    assert_eq!((mag.len, corr.len, action.len), (1, 3, 1));
    assert_eq!(corr.description, "correlator");
    assert_eq!((mag.n(), corr.n(), action.n()), (n, n, n));
    for i in 0..n {
        let r = row(i);
        assert_eq!(mag.values[i].to_bits(), r[0].to_bits());
        for j in 0..3 {
            assert_eq!(corr.values[3 * i + j].to_bits(), r[1 + j].to_bits());
        }
        assert_eq!(action.values[i].to_bits(), r[4].to_bits());
    }
    let c1 = corr.component(1);
    assert_eq!(c1.len(), n);
    if n > 0 {
        assert_eq!(c1[n - 1].to_bits(), row(n - 1)[2].to_bits());
    }

    assert_eq!(e.steps.len(), 2);
    let (hmc, flip) = (&e.steps[0], &e.steps[1]);
    assert_eq!(
        (hmc.label.as_str(), hmc.kind.as_str(), hmc.index),
        ("hmc", "hmc", 0)
    );
    assert_eq!(hmc.params, r#"{"n_md":10}"#);
    assert_eq!(
        hmc.accepted,
        (0..n).map(|i| u8::from(i % 3 != 0)).collect::<Vec<_>>()
    );
    assert_eq!(hmc.columns.len(), 1);
    assert_eq!(hmc.columns[0].0, "delta_h");
    let dh: Vec<u64> = hmc.columns[0].1.iter().map(|x| x.to_bits()).collect();
    assert_eq!(dh, (0..n).map(|i| val(i, 7).to_bits()).collect::<Vec<_>>());
    assert_eq!(
        (flip.label.as_str(), flip.kind.as_str(), flip.index),
        ("flip", "global_flip", 1)
    );
    let evens: Vec<usize> = (0..n).filter(|i| i % 2 == 0).collect();
    assert_eq!(
        flip.accepted,
        evens
            .iter()
            .map(|i| u8::from(i % 4 == 0))
            .collect::<Vec<_>>()
    );
    let names: Vec<_> = flip.columns.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(names, ["log_q", "action"]);
    for (k, &i) in evens.iter().enumerate() {
        assert_eq!(flip.columns[0].1[k].to_bits(), val(i, 8).to_bits());
        assert_eq!(flip.columns[1].1[k].to_bits(), val(i, 9).to_bits());
    }

    let ci = e.configs.unwrap();
    let thirds: Vec<usize> = (0..n).filter(|i| i % 3 == 0).collect();
    assert_eq!(
        (ci.count, ci.config_len, ci.shape.clone()),
        (thirds.len(), 16, vec![4, 4])
    );
    assert_eq!(ci.layout, prov().layout);
    let all = read_configs(path, 0, ci.count).unwrap();
    let want: Vec<u64> = thirds
        .iter()
        .flat_map(|&i| config(i))
        .map(f64::to_bits)
        .collect();
    assert_eq!(all.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
    if ci.count >= 2 {
        let one = read_configs(path, 1, 1).unwrap();
        assert_eq!(one, config(thirds[1]));
    }
    assert!(read_configs(path, ci.count, 1).is_err());
}

#[test]
fn round_trip() {
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.h5");
    let mut w = create(&path);
    // Flushes of 1 row (per-row writes of the vector observable) and of many rows
    // (per-component writes), crossing chunk boundaries.
    push_range(&mut w, 0, 1);
    let c = w.flush().unwrap().first();
    assert_eq!(
        c,
        Counts {
            measurements: 1,
            steps: vec![1, 1],
            configs: 1
        }
    );
    push_range(&mut w, 1, 2500);
    assert_eq!(w.counts().first().measurements, 2500);
    let c = w.flush().unwrap().first();
    assert_eq!(c, w.counts().first());
    assert_eq!(
        c,
        Counts {
            measurements: 2500,
            steps: vec![2500, 1250],
            configs: 834
        }
    );
    drop(w);
    check_contents(&path, 2500);
}

#[test]
fn empty_ensemble_reads() {
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.h5");
    drop(create(&path));
    check_contents(&path, 0);
    // No configs, no steps, no observables at all.
    let p2 = dir.path().join("bare.h5");
    let mut w = EnsembleWriter::create(&p2, &prov(), &[], &[], None, false).unwrap();
    w.push_measurement(0, 3, &[]).unwrap();
    assert!(w.push_config(0, 0, &[1.0]).is_err());
    assert_eq!(w.flush().unwrap().first().measurements, 1);
    drop(w);
    let e = read_ensemble(&p2).unwrap();
    assert_eq!(e.sweeps, [3]);
    assert!(e.configs.is_none() && e.steps.is_empty() && e.observables.is_empty());
}

#[test]
fn resume_truncates_to_checkpoint() {
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.h5");
    let mut w = create(&path);
    push_range(&mut w, 0, 1100);
    let checkpoint = w.flush().unwrap().first();
    push_range(&mut w, 1100, 1500); // flushed but not checkpointed
    w.flush().unwrap().first();
    push_range(&mut w, 1500, 1600); // never flushed
    drop(w);

    let mut w = EnsembleWriter::resume(
        &path,
        "deadbeef",
        &obs(),
        &steps(),
        Some(&cdef()),
        &checkpoint,
    )
    .unwrap();
    assert_eq!(w.counts().first(), checkpoint);
    check_contents(&path, 1100);
    push_range(&mut w, 1100, 1700);
    w.flush().unwrap().first();
    drop(w);
    check_contents(&path, 1700);
}

#[test]
fn resume_rejects_mismatches() {
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.h5");
    let mut w = create(&path);
    push_range(&mut w, 0, 10);
    let counts = w.flush().unwrap().first();
    drop(w);
    let resume =
        |hash: &str, o: &[ObservableDef], s: &[StepDef], c: Option<&ConfigDef>, n: &Counts| {
            EnsembleWriter::resume(&path, hash, o, s, c, n)
                .unwrap_err()
                .to_string()
        };
    let msg = resume("cafe", &obs(), &steps(), Some(&cdef()), &counts);
    assert!(
        msg.contains("card_hash") && msg.contains(&*path.to_string_lossy()),
        "{msg}"
    );
    let mut o = obs();
    o[1].len = 4;
    assert!(
        resume("deadbeef", &o, &steps(), Some(&cdef()), &counts).contains("/observables/corr")
    );
    let mut s = steps();
    s[1].columns.pop();
    assert!(resume("deadbeef", &o[..0], &s, Some(&cdef()), &counts).contains("/observables"));
    assert!(resume("deadbeef", &obs(), &s, Some(&cdef()), &counts).contains("/steps/flip"));
    assert!(resume("deadbeef", &obs(), &steps(), None, &counts).contains("/configs"));
    let more = Counts {
        measurements: 11,
        ..counts.clone()
    };
    let msg = resume("deadbeef", &obs(), &steps(), Some(&cdef()), &more);
    assert!(
        msg.contains("/observables/sweep") && msg.contains("checkpoint"),
        "{msg}"
    );
    // The file is untouched by the failed attempts.
    check_contents(&path, 10);
}

#[test]
fn bad_files_give_errors_naming_the_path() {
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let check = |p: &Path| {
        let msg = read_ensemble(p).unwrap_err().to_string();
        assert!(msg.contains(&*p.to_string_lossy()), "{msg}");
        let msg2 = read_configs(p, 0, 1).unwrap_err().to_string();
        assert!(msg2.contains(&*p.to_string_lossy()), "{msg2}");
        msg
    };
    check(&dir.path().join("missing.h5"));

    let random = dir.path().join("random.h5");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&random, bytes).unwrap();
    check(&random);

    let empty = dir.path().join("empty.h5");
    std::fs::write(&empty, b"").unwrap();
    assert!(check(&empty).contains("empty"));

    let real = dir.path().join("real.h5");
    let mut w = create(&real);
    push_range(&mut w, 0, 3000);
    w.flush().unwrap().first();
    drop(w);
    let data = std::fs::read(&real).unwrap();
    for (name, cut) in [
        ("half.h5", data.len() / 2),
        ("head.h5", 100),
        ("almost.h5", data.len() - 1),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, &data[..cut]).unwrap();
        check(&p);
    }

    // A valid HDF5 file that is not an ensemble.
    let other = dir.path().join("other.h5");
    File::create(&other).unwrap();
    let msg = check(&other);
    assert!(msg.contains("schema_version"), "{msg}");

    // A wrong schema version.
    let v3 = dir.path().join("v3.h5");
    std::fs::copy(&real, &v3).unwrap();
    {
        let f = File::open_rw(&v3).unwrap();
        f.attr("schema_version")
            .unwrap()
            .write_scalar(&3u32)
            .unwrap();
    }
    let msg = check(&v3);
    assert!(
        msg.contains("schema version 1") && msg.contains("is 3"),
        "{msg}"
    );

    // Inconsistent lengths.
    let bad = dir.path().join("bad.h5");
    std::fs::copy(&real, &bad).unwrap();
    File::open_rw(&bad)
        .unwrap()
        .dataset("observables/mag")
        .unwrap()
        .resize([5])
        .unwrap();
    let msg = read_ensemble(&bad).unwrap_err().to_string();
    assert!(
        msg.contains("/observables/mag") && msg.contains("rows"),
        "{msg}"
    );
    // Missing dataset.
    File::open_rw(&bad)
        .unwrap()
        .unlink("observables/mag")
        .unwrap();
    let msg = read_ensemble(&bad).unwrap_err().to_string();
    assert!(msg.contains("missing dataset /observables/mag"), "{msg}");
}

#[test]
fn create_errors() {
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/ens.h5");
    let err =
        EnsembleWriter::create(&path, &prov(), &obs(), &steps(), None, false).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, EnsembleError::MissingDirectory { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("ens.h5") && msg.contains("does not exist"),
        "{msg}"
    );

    let path = dir.path().join("ens.h5");
    drop(create(&path));
    let err =
        EnsembleWriter::create(&path, &prov(), &obs(), &steps(), None, false).unwrap_err();
    assert!(matches!(err, EnsembleError::AlreadyExists { .. }), "{err}");
    let w = EnsembleWriter::create(&path, &prov(), &obs(), &[], None, true).unwrap();
    drop(w);
    assert!(read_ensemble(&path).unwrap().steps.is_empty());

    let p = dir.path().join("names.h5");
    for bad in ["", "a/b", "sweep", "."] {
        let o = [ObservableDef {
            name: bad.into(),
            len: 1,
            description: String::new(),
        }];
        let err = EnsembleWriter::create(&p, &prov(), &o, &[], None, false).unwrap_err();
        assert!(matches!(err, EnsembleError::InvalidName { .. }), "{err}");
    }
    let mut s = steps();
    s[0].columns.push("accepted".into());
    assert!(EnsembleWriter::create(&p, &prov(), &[], &s, None, false).is_err());
    let mut s = steps();
    s[1].label = "hmc".into();
    assert!(EnsembleWriter::create(&p, &prov(), &[], &s, None, false).is_err());
    let o = [ObservableDef {
        name: "x".into(),
        len: 0,
        description: String::new(),
    }];
    assert!(EnsembleWriter::create(&p, &prov(), &o, &[], None, false).is_err());
    let mut bad_prov = prov();
    bad_prov.run_card.push('\0');
    let err = EnsembleWriter::create(&p, &bad_prov, &[], &[], None, false).unwrap_err();
    assert!(err.to_string().contains("/run_card"), "{err}");
    assert!(!p.exists(), "a failed create leaves no file");
}

#[test]
fn push_errors() {
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.h5");
    let mut w = create(&path);
    assert!(matches!(
        w.push_measurement(0, 0, &[1.0; 4]),
        Err(EnsembleError::Shape { .. })
    ));
    assert!(matches!(
        w.push_step_record(0, 2, true, &[]),
        Err(EnsembleError::Invalid { .. })
    ));
    assert!(matches!(
        w.push_step_record(0, 1, true, &[1.0]),
        Err(EnsembleError::Shape { .. })
    ));
    assert!(matches!(
        w.push_config(0, 0, &[1.0; 15]),
        Err(EnsembleError::Shape { .. })
    ));
    assert_eq!(
        w.counts().first(),
        Counts {
            measurements: 0,
            steps: vec![0, 0],
            configs: 0
        }
    );
}

/// Through the one writer a plain file is coupling 0 (other couplings, swap records and replica
/// paths are refused), and the one reader sees it as one coupling without a ladder.
#[test]
fn run_writer_and_reader_see_a_plain_file_as_one_coupling() {
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.h5");
    let mut w = create(&path);
    let r = row(0);
    assert_eq!(w.couplings(), 1);
    assert!(matches!(w.push_measurement(1, 0, &r), Err(EnsembleError::Invalid { .. })));
    assert!(matches!(w.push_step_record(1, 0, true, &[1.0, 2.0]), Err(EnsembleError::Invalid { .. })));
    assert!(matches!(w.push_config(1, 0, &config(0)), Err(EnsembleError::Invalid { .. })));
    assert!(matches!(w.push_swap_record(0, true, &[]), Err(EnsembleError::Invalid { .. })));
    assert!(matches!(w.push_path(0, &[0, 1]), Err(EnsembleError::Invalid { .. })));
    w.push_measurement(0, 7, &r).unwrap();
    w.push_config(0, 7, &config(0)).unwrap();
    let c = w.flush().unwrap();
    assert_eq!(c, FileCounts { couplings: vec![Counts { measurements: 1, steps: vec![0, 0], configs: 1 }], exchange: None });
    drop(w);
    let f = read(&path).unwrap();
    assert!(f.ladder().is_none());
    assert_eq!(f.couplings.len(), 1);
    assert_eq!(f.couplings[0].sweeps, vec![7]);
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&f.read_configs(0, 0, 1).unwrap()), bits(&config(0)));
    assert!(f.read_configs(1, 0, 1).is_err());
    assert!(read_replica_ensemble(&path).is_err());
}

/// Child half of `resume_after_sigkill`: runs only when the parent sets the env variable.
#[test]
#[ignore = "helper process for resume_after_sigkill"]
fn sigkill_child() {
    let Ok(dir) = std::env::var("LATFLOW_ENSEMBLE_SIGKILL_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let path = dir.join("ens.h5");
    let mut w = create(&path);
    push_range(&mut w, 0, 1200);
    let checkpoint = w.flush().unwrap().first();
    std::fs::write(
        dir.join("counts.json"),
        serde_json::to_string(&checkpoint).unwrap(),
    )
    .unwrap();
    push_range(&mut w, 1200, 3000);
    w.flush().unwrap().first();
    // Configurations are written through (lots of unflushed chunk-index updates); the
    // rest stays buffered.
    push_range(&mut w, 3000, 30000);
    std::fs::write(dir.join("ready"), b"").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(120));
}

#[test]
fn resume_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let test_name = format!(
        "{}::sigkill_child",
        module_path!()
            .split_once("::")
            .map_or(module_path!(), |(_, rest)| rest)
    );
    let spawn_guard = OPEN_FILES.write().unwrap_or_else(|e| e.into_inner());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            test_name.as_str(),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LATFLOW_ENSEMBLE_SIGKILL_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(spawn_guard);
    let ready = dir.path().join("ready");
    let t0 = std::time::Instant::now();
    while !ready.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("child exited early ({status}): {err}");
        }
        if t0.elapsed().as_secs() > 120 {
            let _ = child.kill();
            panic!("child never got ready");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();

    let path = dir.path().join("ens.h5");
    let counts: Counts =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("counts.json")).unwrap())
            .unwrap();
    // The killed file reads exactly as it was at its last flush ...
    check_contents(&path, 3000);
    // ... and resumes to the checkpoint.
    let mut w =
        EnsembleWriter::resume(&path, "deadbeef", &obs(), &steps(), Some(&cdef()), &counts)
            .unwrap();
    check_contents(&path, 1200);
    push_range(&mut w, 1200, 1300);
    w.flush().unwrap().first();
    drop(w);
    check_contents(&path, 1300);
}

/// A child process started while a writer is open must not inherit the file's descriptor (and
/// with it HDF5's lock): after the writer is dropped, the file opens at once, even though the
/// child still runs.
#[cfg(unix)]
#[test]
fn children_do_not_inherit_open_files() {
    let _spawning = OPEN_FILES.write().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.h5");
    let mut w = create(&path);
    push_range(&mut w, 0, 10);
    let checkpoint = w.flush().unwrap().first();
    let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    drop(w);
    let read = read_ensemble(&path).map(|_| ());
    let resumed =
        EnsembleWriter::resume(&path, "deadbeef", &obs(), &steps(), Some(&cdef()), &checkpoint)
            .map(|_| ());
    child.kill().unwrap();
    child.wait().unwrap();
    read.unwrap();
    resumed.unwrap();
}

/// A flipped bit in a stored value is caught by the chunk checksum: reading fails with an error
/// that names the file and the dataset, instead of returning a wrong number.
#[test]
fn flipped_data_bytes_are_detected() {
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.h5");
    let mut w = create(&path);
    push_range(&mut w, 0, 600);
    w.flush().unwrap().first();
    drop(w);
    read_ensemble(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for (what, value) in [("observables/mag", val(501, 0)), ("configs", config(333)[7])] {
        let pattern = value.to_le_bytes();
        let hits: Vec<usize> = bytes.windows(8).enumerate().filter(|(_, w)| *w == pattern).map(|(i, _)| i).collect();
        assert_eq!(hits.len(), 1, "{what}: the value occurs once in the file");
        let mut damaged = bytes.clone();
        damaged[hits[0] + 2] ^= 0x10;
        let bad = dir.path().join("damaged.h5");
        std::fs::write(&bad, &damaged).unwrap();
        let err = match what {
            "configs" => read_configs(&bad, 111, 1).map(|_| ()).unwrap_err().to_string(),
            _ => read_ensemble(&bad).map(|_| ()).unwrap_err().to_string(),
        };
        assert!(err.contains("damaged.h5"), "{err}");
        assert!(err.contains(what), "{what}: {err}");
        assert!(err.to_lowercase().contains("checksum"), "{err}");
    }
}

/// The lock on an ensemble file is the `flock` that HDF5 tools take, held on latflow's own
/// close-on-exec descriptor. Another holder (here a second descriptor, as h5py or another run
/// would hold it) makes writers and readers fail at once with a clear error, an overwrite
/// leaves the other holder's file alone, and the file opens again as soon as it lets go.
#[cfg(unix)]
#[test]
fn a_file_locked_elsewhere_is_refused_and_left_intact() {
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.h5");
    let mut w = create(&path);
    push_range(&mut w, 0, 30);
    let checkpoint = w.flush().unwrap().first();
    drop(w);
    let before = std::fs::read(&path).unwrap();

    // a writer elsewhere: nobody may read, resume or overwrite
    let other = std::fs::File::open(&path).unwrap();
    other.lock().unwrap();
    let read = read_ensemble(&path).map(|_| ()).unwrap_err().to_string();
    assert!(read.contains("is another process writing it?") && read.contains("ens.h5"), "{read}");
    let resumed = EnsembleWriter::resume(&path, "deadbeef", &obs(), &steps(), Some(&cdef()), &checkpoint)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(resumed.contains("locked"), "{resumed}");
    let overwrite = EnsembleWriter::create(&path, &prov(), &obs(), &steps(), None, true).map(|_| ()).unwrap_err();
    assert!(overwrite.to_string().contains("locked"), "{overwrite}");
    assert!(std::fs::read(&path).unwrap() == before, "a refused overwrite changed the file");

    // a reader elsewhere: reading is fine, writing is not
    other.unlock().unwrap();
    other.lock_shared().unwrap();
    check_contents(&path, 30);
    let resumed = EnsembleWriter::resume(&path, "deadbeef", &obs(), &steps(), Some(&cdef()), &checkpoint).map(|_| ());
    assert!(resumed.unwrap_err().to_string().contains("locked"));

    drop(other);
    let mut w = EnsembleWriter::resume(&path, "deadbeef", &obs(), &steps(), Some(&cdef()), &checkpoint).unwrap();
    push_range(&mut w, 30, 40);
    w.flush().unwrap().first();
    drop(w);
    check_contents(&path, 40);
}

/// A flush cut short by a kill can leave a table's datasets with different lengths (HDF5 writes
/// their new extents to disk in no fixed order): the reader gives the rows of the run's last
/// checkpoint (what a resume keeps); without a checkpoint of the same run the disagreement is
/// an error.
#[test]
fn a_table_cut_short_by_a_kill_reads_the_rows_of_the_last_checkpoint() {
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.h5");
    let mut w = create(&path);
    push_range(&mut w, 0, 40);
    let counts = w.flush().unwrap().first();
    drop(w);
    let whole = read_ensemble(&path).unwrap();
    let ckpt = dir.path().join("ens.h5.ckpt");
    let checkpoint = |hash: &str| crate::checkpoint::Checkpoint {
        kind: crate::checkpoint::CheckpointKind::Plain,
        card_hash: hash.into(),
        sweeps_done: 40,
        counts: counts.clone(),
        step_rngs: Vec::new(),
        config: Vec::new(),
        step_states: Vec::new(),
        replica: None,
    };
    checkpoint(&prov().card_hash).save(&ckpt).unwrap();
    {
        let f = File::open_rw(&path).unwrap();
        for (name, extra) in [("observables/corr", 3usize), ("observables/sweep", 5), ("steps/hmc/accepted", 2), ("configs", 1)] {
            let ds = f.dataset(name).unwrap();
            let shape = ds.shape();
            match shape[..] {
                [n] => ds.resize([n + extra]).unwrap(),
                [n, w] => ds.resize([n + extra, w]).unwrap(),
                _ => unreachable!(),
            }
        }
    }
    let cut = read_ensemble(&path).unwrap();
    assert_eq!(cut.sweeps, whole.sweeps);
    for (a, b) in whole.observables.iter().zip(&cut.observables) {
        assert!(a.values == b.values, "{}", a.name);
    }
    for (a, b) in whole.steps.iter().zip(&cut.steps) {
        assert_eq!(a.accepted, b.accepted);
        assert!(a.columns == b.columns);
    }
    assert_eq!(whole.configs.as_ref().unwrap().count, cut.configs.as_ref().unwrap().count);
    // the checkpoint of another run says nothing about this file
    checkpoint("another run").save(&ckpt).unwrap();
    let msg = read_ensemble(&path).unwrap_err().to_string();
    assert!(msg.contains("rows, but") && msg.contains("no checkpoint says which rows are complete"), "{msg}");
}

/// A writer in the middle of a flush, as a kill would find it: rows 0..1100 committed, rows
/// 1100..1500 written but not committed.
struct MidFlush {
    writer: EnsembleWriter,
    /// The counts of the last commit, as a checkpoint records them.
    checkpoint: Counts,
    /// The file's bytes at the last commit.
    committed: Vec<u8>,
    /// The file's bytes after the uncommitted writes.
    after: Vec<u8>,
    /// The live journal's bytes.
    log: Vec<u8>,
}

fn mid_flush(path: &Path) -> MidFlush {
    let mut writer = create(path);
    push_range(&mut writer, 0, 1100);
    let checkpoint = writer.flush().unwrap().first();
    let committed = std::fs::read(path).unwrap();
    push_range(&mut writer, 1100, 1500);
    writer.write_uncommitted().unwrap();
    let after = std::fs::read(path).unwrap();
    let log = std::fs::read(journal::journal_path(path)).unwrap();
    MidFlush { writer, checkpoint, committed, after, log }
}

/// A writer killed in the middle of a flush leaves some of the flush's in-place writes done,
/// some not, and one perhaps torn at a page boundary (a chunk whose checksum no longer matches,
/// an index that disagrees with an extent). The journal rolls the file back, bit for bit, to
/// its last commit before anything reads it, and the run resumes from there.
#[test]
fn a_flush_cut_short_is_rolled_back_to_the_last_commit() {
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.h5");
    let void = |p: &Path| std::fs::read(journal::journal_path(p)).map_or(true, |j| j.starts_with(b"LFJRNLok"));
    let mut committed_only = create(&dir.path().join("committed.h5"));
    push_range(&mut committed_only, 0, 1100);
    committed_only.flush().unwrap();
    assert!(void(&dir.path().join("committed.h5")), "a commit leaves no live journal");
    drop(committed_only);
    let MidFlush { writer: mut w, checkpoint, committed, after, log } = mid_flush(&path);

    // the journal's records: (address, old bytes)
    assert_eq!(&log[..8], b"LFJRNL01");
    assert_eq!(u64::from_le_bytes(log[8..16].try_into().unwrap()), committed.len() as u64);
    let mut records = Vec::new();
    let mut at = 24;
    while at < log.len() {
        let addr = u64::from_le_bytes(log[at..at + 8].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(log[at + 8..at + 16].try_into().unwrap()) as usize;
        assert_eq!(&log[at + 16..at + 16 + len], &committed[addr..addr + len], "a record holds the committed bytes");
        records.push((addr, len));
        at += 20 + len;
    }
    assert_eq!(at, log.len());
    assert!(records.len() >= 3, "the flush overwrote chunks and metadata in place: {records:?}");
    // every committed byte the flush changed was recorded first
    for (i, (a, b)) in committed.iter().zip(&after).enumerate() {
        if a != b {
            assert!(records.iter().any(|&(r, n)| (r..r + n).contains(&i)), "byte {i} was overwritten unrecorded");
        }
    }

    // the states a kill can leave: the flush complete but uncommitted, and flushes cut short
    // (every other overwrite not done, the rest torn in the middle)
    let torn = {
        let mut t = after.clone();
        for (k, &(addr, len)) in records.iter().enumerate() {
            let from = if k % 2 == 0 { addr } else { addr + len / 2 };
            t[from..addr + len].copy_from_slice(&committed[from..addr + len]);
        }
        t
    };
    let half = {
        let mut t = after.clone();
        let (addr, len) = records[records.len() / 2];
        t[addr + len / 3..addr + len].copy_from_slice(&committed[addr + len / 3..addr + len]);
        t
    };
    // without its journal, the torn file does not read as the committed one
    let bare = dir.path().join("bare.h5");
    std::fs::write(&bare, &torn).unwrap();
    match read_ensemble(&bare) {
        Err(e) => assert!(e.to_string().contains("bare.h5"), "{e}"),
        Ok(e) => assert_ne!(e.sweeps.len(), 1100, "the torn state is the committed one: the test shows nothing"),
    }
    for (name, state) in [("complete", &after), ("torn", &torn), ("half", &half)] {
        let killed = dir.path().join(format!("{name}.h5"));
        std::fs::write(&killed, state).unwrap();
        std::fs::write(journal::journal_path(&killed), &log).unwrap();
        check_contents(&killed, 1100);
        assert!(std::fs::read(&killed).unwrap() == committed, "{name}: not the committed bytes");
        assert!(!journal::journal_path(&killed).exists(), "{name}: the journal is gone");
        let mut r = EnsembleWriter::resume(&killed, "deadbeef", &obs(), &steps(), Some(&cdef()), &checkpoint).unwrap();
        push_range(&mut r, 1100, 1200);
        r.flush().unwrap();
        drop(r);
        check_contents(&killed, 1200);
    }
    // a journal cut short in its last record: that record's range was not overwritten yet
    let killed = dir.path().join("cut.h5");
    let (addr, len) = *records.last().unwrap();
    let mut state = torn.clone();
    state[addr..addr + len].copy_from_slice(&committed[addr..addr + len]);
    std::fs::write(&killed, &state).unwrap();
    std::fs::write(journal::journal_path(&killed), &log[..log.len() - 5]).unwrap();
    check_contents(&killed, 1100);
    assert!(std::fs::read(&killed).unwrap() == committed);

    w.flush().unwrap();
    drop(w);
    assert!(!journal::journal_path(&path).exists());
    check_contents(&path, 1500);
}

/// A file that is not a latflow journal is never applied, and the ensemble beside it is not
/// opened: the error names it.
#[test]
fn a_foreign_journal_is_refused() {
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.h5");
    let mut w = create(&path);
    push_range(&mut w, 0, 10);
    w.flush().unwrap();
    drop(w);
    let before = std::fs::read(&path).unwrap();
    std::fs::write(journal::journal_path(&path), b"something else entirely").unwrap();
    let msg = read_ensemble(&path).unwrap_err().to_string();
    assert!(msg.contains("ens.h5.journal") && msg.contains("not a latflow journal"), "{msg}");
    assert!(std::fs::read(&path).unwrap() == before);
    // a new run over the file discards the old journal with the old file
    let w = EnsembleWriter::create(&path, &prov(), &obs(), &steps(), Some(&cdef()), true).unwrap();
    drop(w);
    assert!(!journal::journal_path(&path).exists());
    check_contents(&path, 0);
}

/// A reader never rolls back the journal of a writer that is still alive (its lock is held):
/// in the middle of a flush, a read in the same process leaves the journal and the file's
/// bytes alone, and the writer's next commit stands.
#[test]
fn a_reader_leaves_a_live_writers_journal_alone() {
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.h5");
    let MidFlush { writer: mut w, log, after: during, .. } = mid_flush(&path);
    assert!(log.starts_with(b"LFJRNL01") && log.len() > 24, "a live journal with records");
    // the read shares the writer's open file (one process): it sees the writer's rows
    let e = read_ensemble(&path).unwrap();
    assert_eq!(e.sweeps.len(), 1500);
    assert!(std::fs::read(journal::journal_path(&path)).unwrap() == log, "the live journal was touched");
    assert!(std::fs::read(&path).unwrap() == during, "the file was rolled back under its writer");
    push_range(&mut w, 1500, 1600);
    w.flush().unwrap();
    drop(w);
    assert!(!journal::journal_path(&path).exists());
    check_contents(&path, 1600);
}

/// The environment variable that makes [`read_only_reader_child`] read a file.
const READ_ONLY_CHILD: &str = "LATFLOW_TEST_READ_ONLY_READER";

/// A reader that may not write the file (another user's run, a read-only mount) cannot roll a
/// killed writer's journal back on disk. It reads the last commit all the same, through its
/// driver's view of the journal's undo (old bytes overlaid, the committed length), and leaves
/// the file and the journal as they were; the next writer rolls them back. As root, the read
/// runs in a child process as the user `nobody` (root may write any file).
#[test]
fn a_reader_without_write_permission_sees_the_last_commit() {
    use std::os::unix::fs::PermissionsExt;
    let _files = files();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.h5");
    let MidFlush { writer: mut w, checkpoint, committed, after, log } = mid_flush(&path);
    w.flush().unwrap();
    drop(w);
    // a kill in the middle of the flush: every other overwrite not done, the rest torn
    let undo = journal::read_undo_bytes(&log).unwrap().unwrap();
    assert!(undo.records.len() >= 3, "the flush overwrote in place: {} records", undo.records.len());
    let mut torn = after.clone();
    for (k, (addr, old)) in undo.records.iter().enumerate() {
        let (a, n) = (*addr as usize, old.len());
        let from = if k % 2 == 0 { a } else { a + n / 2 };
        torn[from..a + n].copy_from_slice(&committed[from..a + n]);
    }
    let killed = dir.path().join("killed.h5");
    std::fs::write(&killed, &torn).unwrap();
    std::fs::write(journal::journal_path(&killed), &log).unwrap();
    std::fs::set_permissions(&killed, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(journal::journal_path(&killed), std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::OpenOptions::new().write(true).open(&killed).is_ok() {
        // root: read as `nobody`, in a child running only the reader below, from a copy of
        // this test binary that `nobody` may run (the build directory may be private)
        use std::os::unix::process::CommandExt;
        let bin = tempfile::tempdir().unwrap();
        let exe = bin.path().join("reader");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o555)).unwrap();
        std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        let out = std::process::Command::new(&exe)
            .args(["--exact", "ensemble::tests::read_only_reader_child", "--include-ignored", "--nocapture"])
            .env(READ_ONLY_CHILD, &killed)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("1 passed"), "the reader as nobody failed:\n{text}");
        std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    } else {
        check_contents(&killed, 1100);
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(std::fs::read(&killed).unwrap() == torn, "the reader changed the file");
    assert!(std::fs::read(journal::journal_path(&killed)).unwrap() == log, "the reader changed the journal");
    // the next writer rolls back on disk and resumes
    std::fs::set_permissions(&killed, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut r = EnsembleWriter::resume(&killed, "deadbeef", &obs(), &steps(), Some(&cdef()), &checkpoint).unwrap();
    push_range(&mut r, 1100, 1200);
    r.flush().unwrap();
    drop(r);
    check_contents(&killed, 1200);
}

/// The reader of [`a_reader_without_write_permission_sees_the_last_commit`], run in a child
/// process as another user; without the variable it does nothing.
#[test]
#[ignore = "a child of a_reader_without_write_permission_sees_the_last_commit"]
fn read_only_reader_child() {
    if let Some(path) = std::env::var_os(READ_ONLY_CHILD) {
        let path = std::path::PathBuf::from(path);
        assert!(std::fs::OpenOptions::new().write(true).open(&path).is_err(), "this reader may write the file");
        check_contents(&path, 1100);
    }
}

/// A damaged chunk index that records a chunk shorter than its Fletcher32 checksum is refused
/// with an error naming the dataset, before HDF5's filter reads outside its buffer (the input
/// the fuzzer found made `latflow analyze` die of SIGSEGV).
#[test]
fn a_chunk_shorter_than_its_checksum_is_refused() {
    let _files = files();
    let input = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions/ensemble/crash-afc1b16ba7738355d55314132fc97fcf1b8ec140");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.h5");
    std::fs::copy(input, &path).unwrap();
    let msg = read_ensemble(&path).unwrap_err().to_string();
    assert!(msg.contains("damaged.h5") && msg.contains("/replicas/1/observables/chi2"), "{msg}");
    assert!(msg.contains("recorded as 0 bytes") && msg.contains("chunk index is damaged"), "{msg}");
}
