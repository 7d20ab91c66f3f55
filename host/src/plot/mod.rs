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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

mod ticks;
#[cfg(test)]
mod tests;

use ticks::*;

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
