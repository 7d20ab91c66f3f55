//! PNG figures: line panels, bar charts and the training-curve figure.
//!
//! Everything is drawn with `plotters`' bitmap backend and the DejaVu Sans font embedded in the
//! binary (the `dejavu` crate), so no system font, fontconfig or freetype is needed. The font is
//! registered with plotters once per process.
//!
//! Data contracts shared by all functions:
//! * Non-finite points (NaN, ±inf) are skipped; on a log-scale y axis so are points with y ≤ 0,
//!   and if no positive value remains the axis falls back to linear (the title says so).
//! * Empty data is not an error: a panel (or bar chart) with nothing to draw shows axes and a
//!   "no data" note; `line_panels` with no panels writes one such empty panel.
//! * A single point or constant data gets a padded axis range; a curve with a single point (and
//!   any curve of at most 25 points from [`line_panels`]) is also drawn with markers.
//! * The output path must end in `.png`; its directory must exist. The image has exactly the
//!   requested pixel size (each side 1..=16384, at most 64 Mpixel).
//! * Failures are returned as [`PlotError`] naming the output path; nothing panics (a panic inside
//!   plotters is caught and reported as [`PlotError::Draw`]). Nothing is written unless the whole
//!   figure was drawn.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Why a figure could not be produced. Every message names the output path.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The arguments cannot be drawn (bad size, bad extension, mismatched lengths).
    #[error("cannot plot {path}: {reason}")]
    InvalidInput { path: PathBuf, reason: String },
    /// The embedded DejaVu font could not be registered with plotters.
    #[error("cannot plot {path}: the embedded DejaVu font could not be loaded")]
    Font { path: PathBuf },
    /// Drawing into the in-memory image failed (nothing was written).
    #[error("drawing {path} failed: {message}")]
    Draw { path: PathBuf, message: String },
    /// Creating, encoding or writing the PNG file failed (e.g. its directory does not exist).
    #[error("writing {path} failed: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// One named curve: `y[i]` against `x[i]`; `x` and `y` must have the same length.
/// An empty `label` leaves the curve out of the legend.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    pub label: &'a str,
    pub x: &'a [f64],
    pub y: &'a [f64],
}

/// A panel: a title, axis labels, curves, and an optional log-scale y axis. Non-finite points are skipped.
#[derive(Debug, Clone)]
pub struct Panel<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series<'a>>,
    /// Log-scale y axis; points with y ≤ 0 are skipped, and with no positive point the axis is linear.
    pub log_y: bool,
    /// A dashed horizontal reference line `(y, legend label)`, e.g. the exact value; it is kept
    /// inside the y range. Ignored if y is non-finite (or ≤ 0 on a log axis).
    pub hline: Option<(f64, &'a str)>,
}

/// Draws panels stacked vertically (or in a grid of `cols` columns) into one PNG of the given pixel size.
///
/// Panels fill the grid row by row; `cols` is clamped to `1..=panels.len()` (so `cols = 1` stacks
/// them). `size` is (width, height) in pixels of the whole image. Curves take distinct colours in
/// order. Errors if a series has `x.len() != y.len()`.
pub fn line_panels(path: &Path, panels: &[Panel<'_>], cols: usize, size: (u32, u32)) -> Result<(), PlotError> {
    let mut specs = Vec::with_capacity(panels.len().max(1));
    for p in panels {
        let mut curves = Vec::with_capacity(p.series.len());
        for (i, s) in p.series.iter().enumerate() {
            if s.x.len() != s.y.len() {
                return Err(invalid(
                    path,
                    format!(
                        "series \"{}\" in panel \"{}\" has {} x values but {} y values",
                        s.label,
                        p.title,
                        s.x.len(),
                        s.y.len()
                    ),
                ));
            }
            let pts = finite_points(s.x, s.y);
            let markers = pts.len() <= 25;
            curves.push(Curve { label: s.label.to_string(), pts, style: palette(i).stroke_width(2), markers });
        }
        specs.push(PanelSpec {
            title: p.title.to_string(),
            x_label: p.x_label.to_string(),
            y_label: p.y_label.to_string(),
            curves,
            log_y: p.log_y,
            hline: p.hline.map(|(y, l)| (y, l.to_string())),
            y_hint: None,
            x_hint: None,
        });
    }
    if specs.is_empty() {
        specs.push(PanelSpec::empty());
    }
    let cols = cols.clamp(1, specs.len());
    render_png(path, size, |root| draw_grid(root, &specs, cols))
}

/// A bar chart with optional symmetric error bars (e.g. cost per independent sample per sampler).
///
/// Each bar is `(name, value, error)` in the units of `y_label`, drawn in order with distinct
/// colours and its value printed above it (when every value label fits its slot); `error` is a
/// symmetric half-width (non-finite, zero or negative errors are not drawn). A non-finite value
/// (or one ≤ 0 on a log axis) leaves its slot empty, marked "n/a". On a log axis bars start at the
/// bottom of the axis and error bars are cut there. Names too wide for their slot are set smaller
/// (down to 10 px), then shortened with "…". `size` is (width, height) in pixels.
pub fn bar_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    bars: &[(&str, f64, Option<f64>)],
    log_y: bool,
    size: (u32, u32),
) -> Result<(), PlotError> {
    render_png(path, size, |root| draw_bars(root, size, title, y_label, bars, log_y))
}

/// Pixel size of the [`training_curves`] figure.
pub const TRAINING_FIGURE_SIZE: (u32, u32) = (1000, 1150);

/// The training-curve figure: loss (with the −log Z line if given), batch ESS per sample, and the
/// acceptance estimate against the step, in one PNG with three panels. Optionally smooths with a running mean of `smooth` steps drawn over the raw curve.
///
/// `loss`, `ess` (effective sample size over batch size, in [0, 1]) and `acceptance` must each be
/// as long as `step`, or empty (that panel then shows "no data"); the panels share the step axis.
/// `smooth ≤ 1` draws the raw curves only; otherwise the raw curve is drawn faintly and, on top,
/// the trailing mean of the finite values among the last `smooth` steps. The loss (a reverse-KL
/// estimate, bounded below by −log Z) gets a dashed line at `minus_log_z` when that is given and
/// finite. The image is [`TRAINING_FIGURE_SIZE`] pixels.
pub fn training_curves(
    path: &Path,
    step: &[f64],
    loss: &[f64],
    ess: &[f64],
    acceptance: &[f64],
    minus_log_z: Option<f64>,
    smooth: usize,
) -> Result<(), PlotError> {
    for (name, v) in [("loss", loss), ("ess", ess), ("acceptance", acceptance)] {
        if !v.is_empty() && v.len() != step.len() {
            return Err(invalid(
                path,
                format!("{name} has {} values but step has {} (must be equal, or {name} empty)", v.len(), step.len()),
            ));
        }
    }
    let smooth = if smooth > 1 { Some(smooth) } else { None };
    // All three panels share the step axis.
    let steps = min_max(step.iter().copied().filter(|s| s.is_finite()));
    // The first 5% of the loss curve (the initial transient, often orders of magnitude above
    // the rest) is left out of the loss panel, so that the approach to −log Z stays visible.
    let skip_loss = step.len() / 20;
    let curves = |y: &[f64], colour: RGBColor, name: &str, skip: usize| -> Vec<Curve> {
        if y.is_empty() {
            return Vec::new();
        }
        let raw = finite_points(&step[skip..], &y[skip..]);
        match smooth {
            None => vec![Curve { label: name.to_string(), pts: raw, style: colour.stroke_width(2), markers: false }],
            Some(w) => {
                let mean = finite_points(&step[skip..], &running_mean(&y[skip..], w));
                vec![
                    Curve {
                        label: format!("{name}, per step"),
                        pts: raw,
                        style: colour.mix(0.3).stroke_width(1),
                        markers: false,
                    },
                    Curve {
                        label: format!("running mean ({w} steps)"),
                        pts: mean,
                        style: colour.stroke_width(2),
                        markers: false,
                    },
                ]
            }
        }
    };
    let mut specs = vec![
        PanelSpec {
            title: if skip_loss > 0 && !loss.is_empty() {
                format!("Training loss (from step {})", step[skip_loss])
            } else {
                "Training loss".into()
            },
            x_label: "step".into(),
            y_label: "loss".into(),
            curves: curves(loss, palette(0), "loss", if loss.is_empty() { 0 } else { skip_loss }),
            log_y: false,
            hline: minus_log_z.map(|z| (z, format!("exact −log Z = {}", fmt_sig(z, 5)))),
            y_hint: None,
            x_hint: steps,
        },
        PanelSpec {
            title: "Batch effective sample size per sample".into(),
            x_label: "step".into(),
            y_label: "ESS / N".into(),
            curves: curves(ess, palette(1), "ESS / N", 0),
            log_y: false,
            hline: None,
            y_hint: Some((0.0, 1.0)),
            x_hint: steps,
        },
        PanelSpec {
            title: "Acceptance estimate".into(),
            x_label: "step".into(),
            y_label: "acceptance".into(),
            curves: curves(acceptance, palette(2), "acceptance", 0),
            log_y: false,
            hline: None,
            y_hint: Some((0.0, 1.0)),
            x_hint: steps,
        },
    ];
    // Without smoothing a single-curve panel needs no legend.
    if smooth.is_none() {
        for s in &mut specs[1..] {
            for c in &mut s.curves {
                c.label.clear();
            }
        }
    }
    render_png(path, TRAINING_FIGURE_SIZE, |root| draw_grid(root, &specs, 1))
}

// ---------------------------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------------------------

type Area<'b> = DrawingArea<BitMapBackend<'b>, Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

/// The family name the embedded font is registered under (`FontFamily::SansSerif`).
const FONT: &str = "sans-serif";
const TITLE_PX: u32 = 20;
const DESC_PX: u32 = 16;
const TICK_PX: u32 = 14;
const LEGEND_PX: u32 = 14;
const MAX_SIDE: u32 = 16_384;
const MAX_PIXELS: u64 = 64 << 20;

/// A curve after filtering: its finite points and how to draw it.
struct Curve {
    label: String,
    pts: Vec<(f64, f64)>,
    style: ShapeStyle,
    markers: bool,
}

/// Everything needed to draw one panel.
struct PanelSpec {
    title: String,
    x_label: String,
    y_label: String,
    curves: Vec<Curve>,
    log_y: bool,
    hline: Option<(f64, String)>,
    /// A y range that is always shown (widened by the data), e.g. [0, 1] for fractions.
    y_hint: Option<(f64, f64)>,
    /// An x range that is always shown (widened by the data).
    x_hint: Option<(f64, f64)>,
}

impl PanelSpec {
    fn empty() -> Self {
        PanelSpec {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            curves: Vec::new(),
            log_y: false,
            hline: None,
            y_hint: None,
            x_hint: None,
        }
    }
}

fn invalid(path: &Path, reason: String) -> PlotError {
    PlotError::InvalidInput { path: path.to_path_buf(), reason }
}

/// Tableau-10 colours: distinct, print- and colour-blind-friendly enough.
fn palette(i: usize) -> RGBColor {
    const C: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = C[i % C.len()];
    RGBColor(r, g, b)
}

/// Registers DejaVu Sans (regular and bold) as plotters' "sans-serif", once per process.
fn ensure_fonts() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    })
}

/// Checks the arguments, draws into memory (catching panics), then writes the PNG in one go.
fn render_png(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area<'_>) -> DrawResult) -> Result<(), PlotError> {
    let (w, h) = size;
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE || u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(invalid(
            path,
            format!("image size {w}x{h} px is out of range (each side 1..={MAX_SIDE}, at most {MAX_PIXELS} pixels)"),
        ));
    }
    let is_png = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(invalid(path, "the output file name must end in .png".into()));
    }
    if !ensure_fonts() {
        return Err(PlotError::Font { path: path.to_path_buf() });
    }
    let draw_err = |message: String| PlotError::Draw { path: path.to_path_buf(), message };

    let mut buf = vec![255u8; w as usize * h as usize * 3];
    let drawn = catch_unwind(AssertUnwindSafe(|| -> DrawResult {
        // The buffer has exactly w·h RGB pixels, so this cannot fail.
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()
    }));
    match drawn {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(draw_err(e.to_string())),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown cause".into());
            return Err(draw_err(format!("plotters panicked: {what}")));
        }
    }

    let write_err = |source: std::io::Error| PlotError::Write { path: path.to_path_buf(), source };
    // Opening the file first gives a plain I/O error (missing directory, permissions) rather
    // than the encoder's nested one.
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path).map_err(write_err)?;
    let written = catch_unwind(AssertUnwindSafe(|| {
        let mut file = BitMapBackend::new(path, size);
        file.blit_bitmap((0, 0), size, &buf).map_err(|e| e.to_string())?;
        file.present().map_err(|e| e.to_string())
    }));
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(write_err(std::io::Error::other(message))),
        Err(_) => Err(write_err(std::io::Error::other("the PNG encoder panicked"))),
    }
}

/// Lays the panels out in a grid (row by row) and draws each.
fn draw_grid(root: &Area<'_>, specs: &[PanelSpec], cols: usize) -> DrawResult {
    let rows = specs.len().div_ceil(cols);
    let cells = root.split_evenly((rows, cols));
    let layouts: Vec<Layout> = specs.iter().map(layout).collect();
    // One y label area width for all panels, so that stacked axes line up.
    let y_area = layouts.iter().map(|l| l.y_area).max().unwrap_or(50);
    for ((spec, lay), cell) in specs.iter().zip(&layouts).zip(cells.iter()) {
        draw_panel(cell, spec, lay, y_area)?;
    }
    Ok(())
}

/// The finite `(x, y)` pairs.
fn finite_points(x: &[f64], y: &[f64]) -> Vec<(f64, f64)> {
    x.iter().zip(y).filter(|(a, b)| a.is_finite() && b.is_finite()).map(|(&a, &b)| (a, b)).collect()
}

/// Trailing running mean over the last `w` entries, ignoring non-finite ones (NaN if none).
///
/// The window sum is kept without subtractions (a two-stack queue of partial sums), so a huge
/// early value cannot swamp the later ones through cancellation.
fn running_mean(y: &[f64], w: usize) -> Vec<f64> {
    let w = w.max(1);
    let mut out = Vec::with_capacity(y.len());
    // `back`: the newest entries and their (sum, count); `front`: (sum, count) of each suffix of
    // the older entries, the oldest-including suffix on top.
    let mut back: Vec<f64> = Vec::with_capacity(w);
    let (mut back_sum, mut back_count) = (0.0f64, 0usize);
    let mut front: Vec<(f64, usize)> = Vec::with_capacity(w);
    for (i, &v) in y.iter().enumerate() {
        back.push(v);
        if v.is_finite() {
            back_sum += v;
            back_count += 1;
        }
        if i >= w {
            // Drop the oldest entry.
            if front.is_empty() {
                let (mut sum, mut count) = (0.0f64, 0usize);
                for &u in back.iter().rev() {
                    if u.is_finite() {
                        sum += u;
                        count += 1;
                    }
                    front.push((sum, count));
                }
                back.clear();
                (back_sum, back_count) = (0.0, 0);
            }
            front.pop();
        }
        let (front_sum, front_count) = front.last().copied().unwrap_or((0.0, 0));
        let count = front_count + back_count;
        out.push(if count > 0 { (front_sum + back_sum) / count as f64 } else { f64::NAN });
    }
    out
}

/// Min and max of the values, if any.
fn min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values.into_iter().fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

fn union(a: Option<(f64, f64)>, b: Option<(f64, f64)>) -> Option<(f64, f64)> {
    match (a, b) {
        (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
        (a, None) => a,
        (None, b) => b,
    }
}

/// A linear range around `[lo, hi]` with `frac_lo`/`frac_hi` of the span added below/above; a degenerate
/// range is widened around its value. The result is finite with `lo < hi`.
fn pad_linear(lo: f64, hi: f64, frac_lo: f64, frac_hi: f64) -> (f64, f64) {
    const BIG: f64 = f64::MAX / 8.0;
    let (lo, hi) = (lo.clamp(-BIG, BIG), hi.clamp(-BIG, BIG));
    let span = hi - lo;
    let (a, b) = if span > 0.0 {
        (lo - frac_lo * span, hi + frac_hi * span)
    } else {
        let d = if lo != 0.0 { lo.abs() * 0.1 } else { 1.0 };
        (lo - d, hi + d)
    };
    if a < b {
        (a, b)
    } else {
        (lo - 1.0, hi + 1.0)
    }
}

/// A log range around positive `[lo, hi]`: padded by a fraction of the decades (half a decade
/// each way for a constant). The result is positive and finite with `lo < hi`.
fn pad_log(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    let (lo, hi) = (lo.clamp(f64::MIN_POSITIVE, f64::MAX / 1e3), hi.clamp(f64::MIN_POSITIVE, f64::MAX / 1e3));
    let decades = (hi / lo).log10();
    let pad = if decades > 0.0 { (frac * decades).max(0.05) } else { 0.5 };
    let f = 10f64.powf(pad);
    let (a, b) = ((lo / f).max(f64::MIN_POSITIVE), (hi * f).min(f64::MAX / 1e3));
    if a < b {
        (a, b)
    } else {
        (f64::MIN_POSITIVE, f64::MAX / 1e3)
    }
}

/// Number of labelled ticks asked for on each axis.
const N_TICKS: usize = 8;

/// Formats the tick labels of one linear axis consistently: the same number of decimals on every
/// label (just enough for the tick spacing), or scientific notation for the whole axis when its
/// values are very large or very small.
#[derive(Clone, Copy, Debug)]
struct TickFmt {
    step: f64,
    sci: bool,
    decimals: usize,
    sig: usize,
}

impl TickFmt {
    /// The formatter for a linear axis over `[lo, hi]`, and the tick labels plotters will draw.
    fn new(lo: f64, hi: f64) -> (Self, Vec<String>) {
        use plotters::coord::ranged1d::BoldPoints;
        let ticks = plotters::coord::types::RangedCoordf64::from(lo..hi).key_points(BoldPoints(N_TICKS));
        let step = ticks.windows(2).map(|w| w[1] - w[0]).filter(|d| *d > 0.0).fold(f64::INFINITY, f64::min);
        let step = if step.is_finite() { step } else { (hi - lo) / N_TICKS as f64 };
        let big = lo.abs().max(hi.abs());
        let sci = !(1e-3..1e5).contains(&big);
        let decimals = (0..=6)
            .find(|&d| {
                let s = step * 10f64.powi(d);
                (s - s.round()).abs() <= 1e-6 * s.max(1.0)
            })
            .unwrap_or(6) as usize;
        let sig =
            if step > 0.0 && big > 0.0 { ((big / step).log10().ceil() as i64 + 1).clamp(1, 6) as usize } else { 3 };
        let f = TickFmt { step, sci, decimals, sig };
        let labels = ticks.iter().map(|v| f.fmt(*v)).collect();
        (f, labels)
    }

    fn fmt(&self, v: f64) -> String {
        if v == 0.0 || (self.step > 0.0 && v.abs() < self.step * 1e-6) {
            "0".into()
        } else if self.sci {
            fmt_exp(v, self.sig)
        } else {
            format!("{v:.*}", self.decimals)
        }
    }
}

/// Tick labels of a log axis: plain numbers, or scientific notation on every label when the
/// axis reaches below 1e-4 or above 1e5.
#[derive(Clone, Copy, Debug)]
struct LogFmt {
    sci: bool,
}

impl LogFmt {
    /// The formatter for a log axis over `[lo, hi]`, and the tick labels it will draw.
    fn new(lo: f64, hi: f64) -> (Self, Vec<String>) {
        let ticks = log_ticks(lo, hi, N_TICKS, false);
        let (min, max) = min_max(ticks.iter().copied()).unwrap_or((lo, hi));
        let f = LogFmt { sci: min < 1e-4 || max >= 1e5 };
        let labels = ticks.iter().map(|v| f.fmt(*v)).collect();
        (f, labels)
    }

    fn fmt(&self, v: f64) -> String {
        if self.sci || v == 0.0 {
            fmt_exp(v, 3)
        } else {
            trim_zeros(fmt_fixed(v, 3))
        }
    }
}

/// `v` in scientific notation with at most `sig` significant digits, trailing zeros trimmed.
fn fmt_exp(v: f64, sig: usize) -> String {
    let s = format!("{:.*e}", sig.saturating_sub(1), v);
    match s.split_once('e') {
        Some((m, e)) => format!("{}e{}", trim_zeros(m.to_string()), e),
        None => s,
    }
}

fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// `v` with `sig` significant digits for a label: fixed notation (trailing zeros trimmed)
/// from 1e-4 to 1e6 in magnitude, scientific outside.
fn fmt_sig(v: f64, sig: usize) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a == 0.0 {
        "0".into()
    } else if (1e-4..1e6).contains(&a) {
        trim_zeros(fmt_fixed(v, sig))
    } else {
        fmt_exp(v, sig)
    }
}

/// Non-zero finite `v` in fixed notation with `sig` significant digits.
fn fmt_fixed(v: f64, sig: usize) -> String {
    let decimals = (sig as i32 - 1 - v.abs().log10().floor() as i32).clamp(0, 17) as usize;
    format!("{v:.decimals$}")
}

fn text_width(text: &str, px: u32) -> u32 {
    (FONT, px).into_font().box_size(text).map(|(w, _)| w).unwrap_or(text.len() as u32 * px * 6 / 10)
}

/// Width of the y label area: the widest likely tick label plus the rotated axis description.
fn y_area_width(labels: impl IntoIterator<Item = String>) -> u32 {
    let widest = labels.into_iter().map(|l| text_width(&l, TICK_PX)).max().unwrap_or(0);
    (widest + DESC_PX + 26).clamp(50, 170)
}

/// Which legend corner covers the fewest data points (coordinates normalised to [0, 1]).
fn legend_corner(points: impl Iterator<Item = (f64, f64)>) -> SeriesLabelPosition {
    // Corner boxes: upper right, upper left, lower right, lower left.
    let mut counts = [0usize; 4];
    for (x, y) in points {
        let right = x > 0.5;
        let left = x < 0.5;
        let top = y > 0.65;
        let bottom = y < 0.35;
        counts[0] += (right && top) as usize;
        counts[1] += (left && top) as usize;
        counts[2] += (right && bottom) as usize;
        counts[3] += (left && bottom) as usize;
    }
    let best = (0..4).min_by_key(|&i| counts[i]).unwrap_or(0);
    [
        SeriesLabelPosition::UpperRight,
        SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::LowerRight,
        SeriesLabelPosition::LowerLeft,
    ][best]
        .clone()
}

fn title_font() -> TextStyle<'static> {
    // (`FontDesc::style` keeps the regular glyphs; `new` loads the bold face.)
    FontDesc::new(FontFamily::SansSerif, f64::from(TITLE_PX), FontStyle::Bold).color(&BLACK)
}

fn note_style() -> TextStyle<'static> {
    (FONT, DESC_PX).into_font().color(&RGBColor(110, 110, 110)).pos(Pos::new(HPos::Center, VPos::Center))
}

/// The axes of one line panel, worked out before drawing so that panels can share a y label
/// area width (and so line up).
struct Layout {
    title: String,
    log: bool,
    any_data: bool,
    x: (f64, f64),
    y: (f64, f64),
    x_fmt: TickFmt,
    y_fmt: YFmt,
    /// Width the y tick labels and description need, in pixels.
    y_area: u32,
}

#[derive(Clone, Copy, Debug)]
enum YFmt {
    Linear(TickFmt),
    Log(LogFmt),
}

impl YFmt {
    fn fmt(&self, v: f64) -> String {
        match self {
            YFmt::Linear(f) => f.fmt(v),
            YFmt::Log(f) => f.fmt(v),
        }
    }
}

/// Picks the scale (log only if some point is positive), the padded ranges and the tick formats.
fn layout(spec: &PanelSpec) -> Layout {
    let any_data = spec.curves.iter().any(|c| !c.pts.is_empty());
    let any_positive = spec.curves.iter().any(|c| c.pts.iter().any(|p| p.1 > 0.0));
    let log = spec.log_y && any_positive;
    let mut title = spec.title.clone();
    if spec.log_y && any_data && !log {
        title.push_str(" (linear y: no positive values)");
    }
    let keep = |p: &&(f64, f64)| !log || p.1 > 0.0;
    // x covers every finite point (also those a log axis skips), so panels over the same x line up.
    let x_data = min_max(spec.curves.iter().flat_map(|c| c.pts.iter().map(|p| p.0)));
    let x_data = union(x_data, spec.x_hint);
    let y_data = min_max(spec.curves.iter().flat_map(|c| c.pts.iter().filter(keep).map(|p| p.1)));
    let y_data = union(y_data, visible_hline(spec, log).map(|(y, _)| (*y, *y)));
    let x = match x_data {
        Some((lo, hi)) if hi > lo => pad_linear(lo, hi, 0.0, 0.0),
        Some((lo, hi)) => pad_linear(lo, hi, 0.05, 0.05),
        None => (0.0, 1.0),
    };
    let (x_fmt, _) = TickFmt::new(x.0, x.1);
    let (y, y_fmt, labels) = if log {
        let (lo, hi) = y_data.unwrap_or((1.0, 10.0));
        let y = pad_log(lo, hi, 0.05);
        let (f, labels) = LogFmt::new(y.0, y.1);
        (y, YFmt::Log(f), labels)
    } else {
        let hint = spec.y_hint;
        let y = match union(y_data, hint) {
            // Data inside the hinted range: show just that range.
            Some((lo, hi)) if hint == Some((lo, hi)) => pad_linear(lo, hi, 0.03, 0.03),
            Some((lo, hi)) => pad_linear(lo, hi, 0.05, 0.05),
            None => (0.0, 1.0),
        };
        let (f, labels) = TickFmt::new(y.0, y.1);
        (y, YFmt::Linear(f), labels)
    };
    Layout { title, log, any_data, x, y, x_fmt, y_fmt, y_area: y_area_width(labels) }
}

/// The reference line, if it can be drawn on this scale.
fn visible_hline(spec: &PanelSpec, log: bool) -> Option<&(f64, String)> {
    spec.hline.as_ref().filter(|(y, _)| y.is_finite() && (!log || *y > 0.0))
}

/// Draws one line panel with the given layout and y label area width.
fn draw_panel(area: &Area<'_>, spec: &PanelSpec, lay: &Layout, y_area: u32) -> DrawResult {
    let log = lay.log;
    let keep = |p: &(f64, f64)| !log || p.1 > 0.0;
    let hline = visible_hline(spec, log);
    let ((x0, x1), (y0, y1)) = (lay.x, lay.y);
    let (x_fmt, y_fmt) = (lay.x_fmt, lay.y_fmt);
    let fx = move |v: &f64| x_fmt.fmt(*v);
    let fy = move |v: &f64| y_fmt.fmt(*v);
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(12)
        .margin_right(24)
        .caption(&lay.title, title_font())
        .x_label_area_size(TICK_PX + DESC_PX + 24)
        .y_label_area_size(y_area);

    if log {
        let mut chart = builder.build_cartesian_2d(x0..x1, LogAxis { lo: y0, hi: y1 })?;
        let norm = move |(x, y): (f64, f64)| ((x - x0) / (x1 - x0), (y / y0).ln() / (y1 / y0).ln());
        {
            let mut mesh = chart.configure_mesh();
            style_mesh(&mut mesh, spec, &fx, &fy);
            mesh.draw()?;
        }
        draw_lines(&mut chart, spec, &keep, hline, (x0, x1), norm, !lay.any_data)
    } else {
        let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1)?;
        let norm = move |(x, y): (f64, f64)| ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0));
        {
            let mut mesh = chart.configure_mesh();
            style_mesh(&mut mesh, spec, &fx, &fy);
            mesh.draw()?;
        }
        draw_lines(&mut chart, spec, &keep, hline, (x0, x1), norm, !lay.any_data)
    }
}

fn style_mesh<'m, DB, X, Y>(
    mesh: &mut plotters::chart::MeshStyle<'m, '_, X, Y, DB>,
    spec: &PanelSpec,
    fx: &'m dyn Fn(&f64) -> String,
    fy: &'m dyn Fn(&f64) -> String,
) where
    DB: DrawingBackend,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    mesh.x_desc(spec.x_label.clone())
        .y_desc(spec.y_label.clone())
        .x_labels(N_TICKS)
        .y_labels(N_TICKS)
        .x_label_formatter(fx)
        .y_label_formatter(fy)
        .label_style((FONT, TICK_PX).into_font().color(&BLACK))
        .axis_desc_style((FONT, DESC_PX).into_font().color(&BLACK))
        .bold_line_style(RGBColor(200, 200, 200).stroke_width(1))
        .light_line_style(RGBColor(238, 238, 238).stroke_width(1))
        .axis_style(BLACK.stroke_width(1));
}

/// Draws the curves, the reference line, the legend and the "no data" note into a built chart.
fn draw_lines<'a, DB, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    spec: &PanelSpec,
    keep: &dyn Fn(&(f64, f64)) -> bool,
    hline: Option<&(f64, String)>,
    (x0, x1): (f64, f64),
    norm: impl Fn((f64, f64)) -> (f64, f64),
    no_data: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    Y: Ranged<ValueType = f64>,
{
    let mut legend = false;
    if let Some((y, label)) = hline {
        let style = RGBColor(40, 40, 40).stroke_width(2);
        let anno = chart.draw_series(DashedLineSeries::new([(x0, *y), (x1, *y)], 10, 6, style))?;
        if !label.is_empty() {
            legend = true;
            anno.label(label.clone()).legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new([(0, 0), (8, 0)], style)
                    + PathElement::new([(13, 0), (20, 0)], style)
            });
        }
    }
    for c in &spec.curves {
        let pts: Vec<(f64, f64)> = c.pts.iter().copied().filter(|p| keep(p)).collect();
        let style = c.style;
        let anno = chart.draw_series(LineSeries::new(pts.iter().copied(), style))?;
        if !c.label.is_empty() {
            legend = true;
            anno.label(c.label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style.stroke_width(3)));
        }
        if c.markers || pts.len() == 1 {
            let fill = style.color.filled();
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, fill)))?;
        }
    }
    if no_data {
        let (xr, yr) = (chart.x_range(), chart.y_range());
        // Above the middle, where a reference line (centred) does not cross it.
        let at = ((xr.start + xr.end) / 2.0, yr.start + 0.7 * (yr.end - yr.start));
        chart.plotting_area().draw(&Text::new("no data", at, note_style()))?;
    }
    if legend {
        let points = spec.curves.iter().flat_map(|c| c.pts.iter().copied().filter(|p| keep(p)).map(&norm));
        let line = hline.map(|(y, _)| *y).into_iter().flat_map(|y| (0..=20).map(move |i| (i as f64 / 20.0, y)));
        let line: Vec<(f64, f64)> = line.map(|(t, y)| (t, norm((x0, y)).1)).collect();
        let corner = legend_corner(points.chain(line));
        chart
            .configure_series_labels()
            .position(corner)
            .margin(10)
            .legend_area_size(28)
            .label_font((FONT, LEGEND_PX).into_font().color(&BLACK))
            .background_style(WHITE.mix(0.88))
            .border_style(RGBColor(150, 150, 150))
            .draw()?;
    }
    Ok(())
}

/// Draws the bar chart (see [`bar_chart`]).
fn draw_bars(
    root: &Area<'_>,
    size: (u32, u32),
    title: &str,
    y_label: &str,
    bars: &[(&str, f64, Option<f64>)],
    log_y: bool,
) -> DrawResult {
    let n = bars.len();
    let any_positive = bars.iter().any(|b| b.1.is_finite() && b.1 > 0.0);
    let any_data = bars.iter().any(|b| b.1.is_finite());
    let log = log_y && any_positive;
    let ok = |v: f64| v.is_finite() && (!log || v > 0.0);
    let mut caption = title.to_string();
    if log_y && any_data && !log {
        caption.push_str(" (linear y: no positive values)");
    }
    let err_of = |b: &(&str, f64, Option<f64>)| b.2.filter(|e| e.is_finite() && *e > 0.0);
    // Value span including error bars (lower ends cut at the axis on a log scale).
    let lows = bars.iter().filter(|b| ok(b.1)).map(|b| {
        let low = b.1 - err_of(b).unwrap_or(0.0);
        if log && low <= 0.0 {
            b.1
        } else {
            low
        }
    });
    let highs = bars.iter().filter(|b| ok(b.1)).map(|b| b.1 + err_of(b).unwrap_or(0.0));
    let data = union(min_max(lows), min_max(highs));

    let (x0, x1) = (-0.5, n.max(1) as f64 - 0.5);
    // Shrink the names' font until they fit their slots; truncate if still too wide.
    let plot_w = size.0.saturating_sub(140).max(40);
    let slot = plot_w as f64 / n.max(1) as f64;
    let widest = |px: u32| bars.iter().map(|b| text_width(b.0, px)).max().unwrap_or(0) as f64;
    let mut name_px = TICK_PX;
    while name_px > 10 && widest(name_px) > 0.92 * slot {
        name_px -= 1;
    }
    let names: Vec<String> = bars.iter().map(|b| truncate_to(b.0, name_px, 0.92 * slot)).collect();
    let fx = |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
            names[i as usize].clone()
        } else {
            String::new()
        }
    };
    // Value labels only if they all fit over their bars.
    let show_values =
        bars.iter().filter(|b| ok(b.1)).all(|b| f64::from(text_width(&fmt_sig(b.1, 3), TICK_PX)) <= 0.98 * slot);

    let mut builder = ChartBuilder::on(root);
    builder.margin(12).margin_right(24).caption(&caption, title_font()).x_label_area_size(name_px + 22);
    let marks = BarMarks { bars, log, show_values };
    if log {
        let (lo, hi) = data.unwrap_or((1.0, 10.0));
        // Headroom (in decades) for the value labels, less below.
        let decades = (hi / lo).log10().max(0.5);
        let (y0, y1) = pad_log(lo / 10f64.powf(0.12 * decades), hi * 10f64.powf(0.15 * decades), 0.0);
        let (y_fmt, labels) = LogFmt::new(y0, y1);
        let fy = move |v: &f64| y_fmt.fmt(*v);
        builder.y_label_area_size(y_area_width(labels));
        let mut chart = builder.build_cartesian_2d(BarAxis { n }, LogAxis { lo: y0, hi: y1 })?;
        bar_mesh(&mut chart, &fx, &fy, y_label, name_px)?;
        marks.draw(&mut chart, y0)
    } else {
        let (lo, hi) = data.map(|(a, b)| (a.min(0.0), b.max(0.0))).unwrap_or((0.0, 1.0));
        let (y0, y1) = pad_linear(lo, hi, if lo < 0.0 { 0.12 } else { 0.0 }, if hi > 0.0 { 0.12 } else { 0.02 });
        let (y_fmt, labels) = TickFmt::new(y0, y1);
        let fy = move |v: &f64| y_fmt.fmt(*v);
        builder.y_label_area_size(y_area_width(labels));
        let mut chart = builder.build_cartesian_2d(BarAxis { n }, y0..y1)?;
        bar_mesh(&mut chart, &fx, &fy, y_label, name_px)?;
        if y0 < 0.0 && y1 > 0.0 {
            chart.draw_series([PathElement::new([(x0, 0.0), (x1, 0.0)], BLACK.stroke_width(1))])?;
        }
        marks.draw(&mut chart, 0f64.clamp(y0, y1))?;
        if !any_data {
            chart.draw_series([Text::new("no data", ((x0 + x1) / 2.0, (y0 + y1) / 2.0), note_style())])?;
        }
        Ok(())
    }
}

/// The bar chart's axes, grid and labels.
fn bar_mesh<'a, DB, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<BarAxis, Y>>,
    fx: &'a dyn Fn(&f64) -> String,
    fy: &'a dyn Fn(&f64) -> String,
    y_label: &str,
    name_px: u32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .disable_x_mesh()
        // (BarAxis puts one tick under every bar whatever the count asked for.)
        .x_labels(N_TICKS)
        .y_labels(N_TICKS)
        .x_label_formatter(fx)
        .y_label_formatter(fy)
        .y_desc(y_label)
        .label_style((FONT, TICK_PX).into_font().color(&BLACK))
        .x_label_style((FONT, name_px).into_font().color(&BLACK))
        .axis_desc_style((FONT, DESC_PX).into_font().color(&BLACK))
        .bold_line_style(RGBColor(200, 200, 200).stroke_width(1))
        .light_line_style(RGBColor(238, 238, 238).stroke_width(1))
        .axis_style(BLACK.stroke_width(1))
        .draw()
}

/// The bars, error bars and value labels of a bar chart.
struct BarMarks<'s, 'n> {
    bars: &'s [(&'n str, f64, Option<f64>)],
    log: bool,
    show_values: bool,
}

impl BarMarks<'_, '_> {
    /// Draws every bar from `base` (the zero line, or the bottom of a log axis).
    fn draw<'a, DB, Y>(
        &self,
        chart: &mut ChartContext<'a, DB, Cartesian2d<BarAxis, Y>>,
        base: f64,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB: DrawingBackend + 'a,
        Y: Ranged<ValueType = f64>,
    {
        let value_style = (FONT, TICK_PX).into_font().color(&BLACK);
        let na_style = (FONT, TICK_PX).into_font().color(&RGBColor(110, 110, 110));
        let err_style = BLACK.stroke_width(2);
        let above = Pos::new(HPos::Center, VPos::Bottom);
        let below = Pos::new(HPos::Center, VPos::Top);
        for (i, &(_, v, e)) in self.bars.iter().enumerate() {
            let x = i as f64;
            if !(v.is_finite() && (!self.log || v > 0.0)) {
                let mark = EmptyElement::at((x, base)) + Text::new("n/a", (0, -6), na_style.pos(above));
                chart.draw_series([mark])?;
                continue;
            }
            let bar_colour = palette(i).mix(0.85).filled();
            chart.draw_series([Rectangle::new([(x - 0.35, base), (x + 0.35, v)], bar_colour)])?;
            let e = e.filter(|e| e.is_finite() && *e > 0.0);
            let (mut low, mut high) = (v, v);
            if let Some(e) = e {
                (low, high) = (v - e, v + e);
                if self.log && low <= 0.0 {
                    low = base;
                }
                let cap = 0.12;
                chart.draw_series([
                    PathElement::new([(x, low), (x, high)], err_style),
                    PathElement::new([(x - cap, low), (x + cap, low)], err_style),
                    PathElement::new([(x - cap, high), (x + cap, high)], err_style),
                ])?;
            }
            if self.show_values {
                let label = fmt_sig(v, 3);
                let mark = if v >= 0.0 {
                    EmptyElement::at((x, high)) + Text::new(label, (0, -6), value_style.pos(above))
                } else {
                    EmptyElement::at((x, low)) + Text::new(label, (0, 6), value_style.pos(below))
                };
                chart.draw_series([mark])?;
            }
        }
        Ok(())
    }
}

/// The x axis of a bar chart: slot `i` is centred on `i`, from −0.5 to n − 0.5, one tick per bar.
struct BarAxis {
    n: usize,
}

impl Ranged for BarAxis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (lo, hi): (i32, i32)) -> i32 {
        let frac = (value + 0.5) / self.n.max(1) as f64;
        let px = lo as f64 + frac * (hi - lo) as f64;
        px.round().clamp(i32::MIN as f64, i32::MAX as f64) as i32
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            (0..self.n).map(|i| i as f64).collect()
        }
    }

    fn range(&self) -> Range<f64> {
        -0.5..self.n.max(1) as f64 - 0.5
    }
}

/// A log-scale axis over positive `[lo, hi]`. (plotters' own log axis can spin for minutes
/// computing light grid lines over ranges of hundreds of decades; this one's ticks are bounded.)
#[derive(Clone, Copy)]
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl Ranged for LogAxis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (a, b): (i32, i32)) -> i32 {
        let (l0, l1) = (self.lo.log10(), self.hi.log10());
        // Non-positive values map far below the axis (they are never passed in on purpose).
        let t = if *value > 0.0 { (value.log10() - l0) / (l1 - l0) } else { -1.0 };
        let px = a as f64 + t * (b - a) as f64;
        if px.is_nan() {
            a
        } else {
            px.round().clamp(-1e9, 1e9) as i32
        }
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        log_ticks(self.lo, self.hi, hint.max_num_points(), hint.weight().allow_light_points())
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// Tick positions on a log axis over positive `[lo, hi]`: powers of ten (every few decades if
/// there are many), or 1-2-5 / 1…9 multiples, or plain linear ticks on a narrow range. `light`
/// adds the 2…9 multiples between decades when there are at most eight decades.
fn log_ticks(lo: f64, hi: f64, max: usize, light: bool) -> Vec<f64> {
    let max = max.clamp(1, 50);
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return Vec::new();
    }
    let k0 = (lo.log10() - 1e-9).ceil() as i32;
    let k1 = (hi.log10() + 1e-9).floor() as i32;
    let inside = |v: &f64| *v >= lo * (1.0 - 1e-12) && *v <= hi * (1.0 + 1e-12);
    let decades = k1 - k0 + 1;
    let multiples = |ms: &'static [u32]| -> Vec<f64> {
        (k0 - 2..=k1 + 1).flat_map(|k| ms.iter().map(move |&m| f64::from(m) * 10f64.powi(k))).filter(inside).collect()
    };
    if !light && (2..=3).contains(&decades) {
        let t = multiples(&[1, 2, 5]);
        if t.len() <= max {
            return t;
        }
    }
    if decades >= 2 {
        let step = ((decades as usize).div_ceil(max)).max(1) as i32;
        let bold: Vec<f64> = (0..).map(|i| k0 + i * step).take_while(|&k| k <= k1).map(|k| 10f64.powi(k)).collect();
        if light && decades <= 8 {
            let mut all: Vec<f64> =
                (k0 - 1..=k1).flat_map(|k| (1..=9).map(move |m| m as f64 * 10f64.powi(k))).filter(inside).collect();
            all.extend(&bold);
            return all;
        }
        return bold;
    }
    if light {
        return Vec::new();
    }
    for ms in [&[1u32, 2, 5][..], &[1, 2, 3, 4, 5, 6, 7, 8, 9][..]] {
        let t = multiples(ms);
        if (2..=max).contains(&t.len()) {
            return t;
        }
    }
    nice_ticks(lo, hi, max.min(6))
}

/// About `max` evenly spaced "nice" (1-2-5) ticks inside `[lo, hi]`.
fn nice_ticks(lo: f64, hi: f64, max: usize) -> Vec<f64> {
    let raw = (hi - lo) / max.max(1) as f64;
    if !(raw > 0.0 && raw.is_finite()) {
        return Vec::new();
    }
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil();
    (0..=max + 1).map(|i| (first + i as f64) * step).take_while(|v| *v <= hi).collect()
}

/// `name` cut (with "…") to at most `max_w` pixels at font size `px`.
fn truncate_to(name: &str, px: u32, max_w: f64) -> String {
    if text_width(name, px) as f64 <= max_w {
        return name.to_string();
    }
    let chars: Vec<char> = name.chars().collect();
    for keep in (1..chars.len()).rev() {
        let s: String = chars[..keep].iter().collect::<String>() + "…";
        if text_width(&s, px) as f64 <= max_w {
            return s;
        }
    }
    // Not even one character fits: no label.
    String::new()
}

#[cfg(test)]
mod tests {
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
}
