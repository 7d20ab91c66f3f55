//! Tests of the figures and their edge cases.

use super::*;

/// (title, series, log_y, hline)
type LineCase<'a> = (&'a str, Vec<Series<'a>>, bool, Option<(f64, &'a str)>);
type Bars<'a> = &'a [(&'a str, f64, Option<f64>)];
/// (name, step, loss, ess, acceptance, −log Z, smooth)
type TrainCase<'a> = (&'a str, &'a [f64], &'a [f64], &'a [f64], &'a [f64], Option<f64>, usize);

/// Checks the PNG signature and the IHDR width/height; returns the file size.
fn assert_png(path: &Path, size: (u32, u32)) -> u64 {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.len() > 33, "{}: too short ({} bytes)", path.display(), bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}: no PNG signature", path.display());
    assert_eq!(&bytes[12..16], b"IHDR", "{}: first chunk is not IHDR", path.display());
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), size, "{}: wrong size", path.display());
    bytes.len() as u64
}

fn demo_series() -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let x: Vec<f64> = (0..200).map(|i| i as f64 * 0.05).collect();
    let a = x.iter().map(|t| (t * 1.3).sin() + 0.1 * t).collect();
    let b = x.iter().map(|t| 0.5 * (t * 0.7).cos() * (-0.1 * t).exp()).collect();
    (x, a, b)
}

#[test]
fn line_panels_grid_and_stack() {
    let dir = tempfile::tempdir().unwrap();
    let (x, a, b) = demo_series();
    let decay: Vec<f64> = x.iter().map(|t| (-t).exp() * 1e3).collect();
    let panels = vec![
        Panel {
            title: "two curves",
            x_label: "t",
            y_label: "value",
            series: vec![Series { label: "a", x: &x, y: &a }, Series { label: "b", x: &x, y: &b }],
            log_y: false,
            hline: Some((0.25, "exact")),
        },
        Panel {
            title: "log decay",
            x_label: "t",
            y_label: "amplitude",
            series: vec![Series { label: "decay", x: &x, y: &decay }],
            log_y: true,
            hline: None,
        },
        Panel { title: "empty", x_label: "x", y_label: "y", series: vec![], log_y: false, hline: None },
    ];
    for (cols, size) in [(1, (800, 1000)), (2, (1200, 800)), (5, (1500, 400)), (0, (640, 900))] {
        let p = dir.path().join(format!("panels_{cols}.png"));
        line_panels(&p, &panels, cols, size).unwrap();
        assert!(assert_png(&p, size) > 1000);
    }
}

#[test]
fn line_panels_edge_cases() {
    let dir = tempfile::tempdir().unwrap();
    let one_x = [3.0];
    let one_y = [7.5];
    let cx: Vec<f64> = (0..50).map(f64::from).collect();
    let cy = vec![2.0; 50];
    let nan_y: Vec<f64> = cx
        .iter()
        .map(|&v| {
            if v as i32 % 3 == 0 {
                f64::NAN
            } else if v as i32 % 7 == 0 {
                f64::INFINITY
            } else {
                v
            }
        })
        .collect();
    let all_nan = vec![f64::NAN; 50];
    let neg: Vec<f64> = cx.iter().map(|v| -v - 1.0).collect();
    let mixed: Vec<f64> = cx.iter().map(|v| v - 20.0).collect();
    let huge = [-1e308, 1e308, f64::MAX];
    let tiny = [5e-324, 1e-320, 0.0];
    let cases: Vec<LineCase> = vec![
        ("single point", vec![Series { label: "one", x: &one_x, y: &one_y }], false, None),
        ("single point log", vec![Series { label: "one", x: &one_x, y: &one_y }], true, Some((1.0, "ref"))),
        ("constant", vec![Series { label: "c", x: &cx, y: &cy }], false, None),
        ("constant log", vec![Series { label: "c", x: &cx, y: &cy }], true, None),
        ("nan and inf", vec![Series { label: "gaps", x: &cx, y: &nan_y }], false, None),
        ("all nan", vec![Series { label: "nan", x: &cx, y: &all_nan }], false, Some((f64::NAN, "nan line"))),
        ("all nan log", vec![Series { label: "nan", x: &cx, y: &all_nan }], true, None),
        ("log of negatives", vec![Series { label: "neg", x: &cx, y: &neg }], true, Some((-3.0, "ref"))),
        ("log of mixed sign", vec![Series { label: "mixed", x: &cx, y: &mixed }], true, None),
        ("empty series", vec![Series { label: "none", x: &[], y: &[] }], true, Some((2.0, "only a line"))),
        ("huge", vec![Series { label: "huge", x: &huge, y: &huge }], false, None),
        ("huge log", vec![Series { label: "huge", x: &huge, y: &huge }], true, None),
        ("tiny", vec![Series { label: "tiny", x: &tiny, y: &tiny }], false, None),
        ("tiny log", vec![Series { label: "", x: &tiny, y: &tiny }], true, None),
    ];
    for (i, (title, series, log_y, hline)) in cases.into_iter().enumerate() {
        let p = dir.path().join(format!("edge_{i}.png"));
        let panel = Panel { title, x_label: "x", y_label: "y", series, log_y, hline };
        line_panels(&p, &[panel], 1, (500, 350)).unwrap_or_else(|e| panic!("{title}: {e}"));
        assert_png(&p, (500, 350));
    }
    // No panels at all: one empty panel.
    let p = dir.path().join("none.png");
    line_panels(&p, &[], 3, (300, 200)).unwrap();
    assert_png(&p, (300, 200));
    // Tiny and odd image sizes still work.
    for size in [(1, 1), (37, 13), (120, 90)] {
        let p = dir.path().join(format!("small_{}x{}.png", size.0, size.1));
        let panel = Panel {
            title: "small",
            x_label: "x",
            y_label: "y",
            series: vec![Series { label: "c", x: &cx, y: &cy }],
            log_y: false,
            hline: None,
        };
        line_panels(&p, &[panel.clone(), panel], 2, size).unwrap();
        assert_png(&p, size);
    }
}

#[test]
fn invalid_inputs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let x = [1.0, 2.0];
    let y = [1.0];
    let panel = Panel {
        title: "t",
        x_label: "x",
        y_label: "y",
        series: vec![Series { label: "bad", x: &x, y: &y }],
        log_y: false,
        hline: None,
    };
    let p = dir.path().join("mismatch.png");
    let e = line_panels(&p, &[panel], 1, (300, 200)).unwrap_err();
    assert!(matches!(e, PlotError::InvalidInput { .. }), "{e}");
    assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    assert!(!p.exists());

    let e = line_panels(&p, &[], 1, (0, 200)).unwrap_err();
    assert!(e.to_string().contains("0x200"), "{e}");
    let e = bar_chart(&p, "t", "y", &[], false, (100_000, 100_000)).unwrap_err();
    assert!(matches!(e, PlotError::InvalidInput { .. }), "{e}");
    let e = bar_chart(&dir.path().join("x.jpg"), "t", "y", &[], false, (100, 100)).unwrap_err();
    assert!(e.to_string().contains("x.jpg") && e.to_string().contains(".png"), "{e}");
    let e = training_curves(&p, &[1.0, 2.0], &[1.0], &[], &[], None, 0).unwrap_err();
    assert!(e.to_string().contains("loss"), "{e}");
}

#[test]
fn unwritable_path_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("no such dir").join("fig.png");
    let s = p.display().to_string();
    let e = line_panels(&p, &[], 1, (200, 100)).unwrap_err();
    assert!(matches!(e, PlotError::Write { .. }) && e.to_string().contains(&s), "{e}");
    let e = bar_chart(&p, "t", "y", &[("a", 1.0, None)], false, (200, 100)).unwrap_err();
    assert!(e.to_string().contains(&s), "{e}");
    let e = training_curves(&p, &[0.0], &[1.0], &[0.5], &[0.5], Some(0.3), 10).unwrap_err();
    assert!(e.to_string().contains(&s), "{e}");
    assert!(!p.exists());
}

#[test]
fn bar_chart_cases() {
    let dir = tempfile::tempdir().unwrap();
    let bars = [
        ("HMC", 3.2e-3, Some(4e-4)),
        ("flow MH", 8.5e-4, Some(1.5e-4)),
        ("flow + HMC", 1.4e-3, None),
        ("broken", f64::NAN, Some(1.0)),
        ("local Metropolis", 2.1e-2, Some(6e-3)),
    ];
    let long_names = [
        ("a rather long sampler name number one", 1.0, Some(0.2)),
        ("another rather long sampler name", 2.0, Some(5.0)),
        ("x", -0.5, Some(0.1)),
    ];
    let cases: Vec<(&str, Bars, bool)> = vec![
        ("linear", &bars, false),
        ("log", &bars, true),
        ("empty", &[], false),
        ("empty log", &[], true),
        ("single", &[("only", 5.0, Some(1.0))], false),
        ("zero", &[("z", 0.0, None)], false),
        ("negative log", &[("n", -2.0, None), ("m", 0.0, Some(1.0))], true),
        ("long names", &long_names, false),
        ("all nan", &[("a", f64::NAN, None), ("b", f64::INFINITY, None)], true),
        ("huge err log", &[("a", 1.0, Some(1e6)), ("b", 1e-300, Some(f64::NAN))], true),
    ];
    for (i, (title, b, log)) in cases.into_iter().enumerate() {
        let p = dir.path().join(format!("bars_{i}.png"));
        bar_chart(&p, title, "CPU s / independent sample", b, log, (700, 450))
            .unwrap_or_else(|e| panic!("{title}: {e}"));
        assert_png(&p, (700, 450));
    }
    let many: Vec<(String, f64, Option<f64>)> = (0..60).map(|i| (format!("s{i}"), i as f64, Some(1.0))).collect();
    let many: Vec<(&str, f64, Option<f64>)> = many.iter().map(|(s, v, e)| (s.as_str(), *v, *e)).collect();
    let p = dir.path().join("many.png");
    bar_chart(&p, "many", "y", &many, false, (400, 300)).unwrap();
    assert_png(&p, (400, 300));
}

#[test]
fn training_curves_cases() {
    let dir = tempfile::tempdir().unwrap();
    let n = 400;
    let step: Vec<f64> = (0..n).map(f64::from).collect();
    let loss: Vec<f64> = step.iter().map(|s| -3.0 + 4.0 * (-s / 80.0).exp() + 0.2 * (s * 1.7).sin()).collect();
    let ess: Vec<f64> = step.iter().map(|s| (1.0 - (-s / 120.0).exp()) * 0.8 + 0.05 * (s * 2.3).cos()).collect();
    let acc: Vec<f64> = step.iter().map(|s| (1.0 - (-s / 100.0).exp()) * 0.9).collect();
    let size = TRAINING_FIGURE_SIZE;
    let cases: Vec<TrainCase> = vec![
        ("smoothed", &step, &loss, &ess, &acc, Some(-3.2), 25),
        ("raw", &step, &loss, &ess, &acc, None, 0),
        ("empty", &[], &[], &[], &[], Some(1.0), 50),
        ("no ess", &step, &loss, &[], &[], None, 1),
        ("single", &[0.0], &[1.0], &[0.5], &[f64::NAN], Some(f64::INFINITY), 50),
    ];
    for (i, (name, s, l, e, a, z, w)) in cases.into_iter().enumerate() {
        let p = dir.path().join(format!("train_{i}.png"));
        training_curves(&p, s, l, e, a, z, w).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_png(&p, size);
    }
}

#[test]
fn running_mean_skips_non_finite() {
    let m = running_mean(&[1.0, f64::NAN, 3.0, 5.0, f64::NAN, f64::NAN, f64::NAN], 2);
    assert_eq!(m[0], 1.0);
    assert_eq!(m[1], 1.0);
    assert_eq!(m[2], 3.0);
    assert_eq!(m[3], 4.0);
    assert_eq!(m[4], 5.0);
    assert!(m[5].is_nan() && m[6].is_nan());
    // Against the direct definition, with gaps.
    let y: Vec<f64> = (0..200).map(|i| if i % 11 == 3 { f64::NAN } else { ((i * 37) % 17) as f64 - 8.0 }).collect();
    for w in [1, 2, 5, 13, 199, 200, 500] {
        let m = running_mean(&y, w);
        for i in 0..y.len() {
            let win: Vec<f64> =
                y[(i + 1).saturating_sub(w)..=i].iter().copied().filter(|v| v.is_finite()).collect();
            let direct = win.iter().sum::<f64>() / win.len() as f64;
            let same = (m[i] - direct).abs() < 1e-12 || (m[i].is_nan() && win.is_empty());
            assert!(same, "w={w} i={i}: {} vs {direct}", m[i]);
        }
    }
    let m = running_mean(&[f64::MAX, f64::MAX, 1.0, 3.0], 2);
    assert!(m[1].is_infinite() || m[1].is_nan());
    assert_eq!(m[3], 2.0);
}

#[test]
fn tick_formats() {
    let (f, labels) = TickFmt::new(-0.05, 1.05);
    assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1.0"], "{f:?}");
    assert_eq!(f.fmt(1e-17), "0");
    let (_, labels) = TickFmt::new(0.0, 2000.0);
    assert!(labels.iter().all(|l| !l.contains('.')), "{labels:?}");
    let (f, labels) = TickFmt::new(0.0, 2.1e5);
    assert!(labels.contains(&"1.5e5".to_string()) && labels.contains(&"2e5".to_string()), "{labels:?} {f:?}");
    assert_eq!(fmt_sig(0.0032, 3), "0.0032");
    assert_eq!(fmt_sig(8.5e-4, 3), "0.00085");
    assert_eq!(fmt_sig(2.5e-7, 3), "2.5e-7");
    assert_eq!(log_ticks(4e-4, 3e-2, 8, false), [5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2]);
    assert_eq!(log_ticks(1e-300, 1e300, 8, false).len(), 8);
    assert!(log_ticks(1e-300, 1e300, 80, true).len() <= 50);
    assert_eq!(log_ticks(2.0, 3.0, 8, false).len(), 2);
    assert_eq!(LogFmt::new(1e-6, 1.0).1, ["1e-6", "1e-5", "1e-4", "1e-3", "1e-2", "1e-1", "1e0"]);
    assert_eq!(LogFmt::new(0.01, 2000.0).1, ["0.01", "0.1", "1", "10", "100", "1000"]);
    assert_eq!(fmt_sig(0.012345, 3), "0.0123");
    assert_eq!(fmt_sig(-1.5e-7, 3), "-1.5e-7");
}

/// Renders one example of each figure to /tmp/plot_*.png for eyeballing
/// (`cargo test -- --ignored render_examples`).
#[test]
#[ignore]
fn render_examples() {
    let (x, a, b) = demo_series();
    let decay: Vec<f64> = x.iter().map(|t| (-t).exp() * 1e3 + 1e-2).collect();
    let noisy: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, t)| (-0.5 * t).exp() * (1.0 + 0.3 * ((i * 7919 % 13) as f64 / 13.0)))
        .collect();
    let panels = vec![
        Panel {
            title: "Observables",
            x_label: "time t",
            y_label: "value",
            series: vec![
                Series { label: "sin(1.3 t) + 0.1 t", x: &x, y: &a },
                Series { label: "damped cosine", x: &x, y: &b },
            ],
            log_y: false,
            hline: Some((0.25, "exact value")),
        },
        Panel {
            title: "Autocorrelation",
            x_label: "lag",
            y_label: "Γ(t)",
            series: vec![
                Series { label: "exact", x: &x, y: &decay },
                Series { label: "noisy estimate", x: &x, y: &noisy },
            ],
            log_y: true,
            hline: None,
        },
        Panel { title: "Nothing yet", x_label: "x", y_label: "y", series: vec![], log_y: false, hline: None },
        Panel {
            title: "Single point",
            x_label: "x",
            y_label: "y",
            series: vec![Series { label: "one", x: &[2.0], y: &[5.0] }],
            log_y: false,
            hline: None,
        },
    ];
    line_panels(Path::new("/tmp/plot_panels.png"), &panels, 2, (1200, 800)).unwrap();
    line_panels(Path::new("/tmp/plot_panels_stack.png"), &panels[..2], 1, (900, 800)).unwrap();
    let bars = [
        ("HMC", 3.2e-3, Some(4e-4)),
        ("flow MH", 8.5e-4, Some(1.5e-4)),
        ("flow + HMC", 1.4e-3, None),
        ("broken", f64::NAN, Some(1.0)),
        ("local Metropolis", 2.1e-2, Some(6e-3)),
    ];
    bar_chart(
        Path::new("/tmp/plot_bars.png"),
        "Cost per independent sample",
        "CPU s / sample",
        &bars,
        false,
        (900, 550),
    )
    .unwrap();
    bar_chart(
        Path::new("/tmp/plot_bars_log.png"),
        "Cost per independent sample",
        "CPU s / sample",
        &bars,
        true,
        (900, 550),
    )
    .unwrap();
    let n = 2000;
    let step: Vec<f64> = (0..n).map(f64::from).collect();
    let mut seed = 12345u64;
    let mut noise = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let loss: Vec<f64> = step.iter().map(|s| -3.0 + 4.0 * (-s / 300.0).exp() + 0.6 * noise()).collect();
    let ess: Vec<f64> =
        step.iter().map(|s| ((1.0 - (-s / 500.0).exp()) * 0.75 + 0.15 * noise()).clamp(0.0, 1.0)).collect();
    let acc: Vec<f64> =
        step.iter().map(|s| ((1.0 - (-s / 400.0).exp()) * 0.85 + 0.08 * noise()).clamp(0.0, 1.0)).collect();
    training_curves(Path::new("/tmp/plot_training.png"), &step, &loss, &ess, &acc, Some(-3.1), 50).unwrap();
    training_curves(Path::new("/tmp/plot_training_empty.png"), &[], &[], &[], &[], None, 50).unwrap();
}
