//! Axis ticks and their labels: linear and logarithmic tick positions, consistent label
//! formats, and the custom axes of bar charts and log-scale panels.

use std::ops::Range;

use plotters::prelude::*;

use super::*;

/// Number of labelled ticks asked for on each axis.
pub(super) const N_TICKS: usize = 8;

/// Formats the tick labels of one linear axis consistently: the same number of decimals on every
/// label (just enough for the tick spacing), or scientific notation for the whole axis when its
/// values are very large or very small.
#[derive(Clone, Copy, Debug)]
pub(super) struct TickFmt {
    pub(super) step: f64,
    pub(super) sci: bool,
    pub(super) decimals: usize,
    pub(super) sig: usize,
}

impl TickFmt {
    /// The formatter for a linear axis over `[lo, hi]`, and the tick labels plotters will draw.
    pub(super) fn new(lo: f64, hi: f64) -> (Self, Vec<String>) {
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

    pub(super) fn fmt(&self, v: f64) -> String {
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
pub(super) struct LogFmt {
    pub(super) sci: bool,
}

impl LogFmt {
    /// The formatter for a log axis over `[lo, hi]`, and the tick labels it will draw.
    pub(super) fn new(lo: f64, hi: f64) -> (Self, Vec<String>) {
        let ticks = log_ticks(lo, hi, N_TICKS, false);
        let (min, max) = min_max(ticks.iter().copied()).unwrap_or((lo, hi));
        let f = LogFmt { sci: min < 1e-4 || max >= 1e5 };
        let labels = ticks.iter().map(|v| f.fmt(*v)).collect();
        (f, labels)
    }

    pub(super) fn fmt(&self, v: f64) -> String {
        if self.sci || v == 0.0 {
            fmt_exp(v, 3)
        } else {
            trim_zeros(fmt_fixed(v, 3))
        }
    }
}

/// `v` in scientific notation with at most `sig` significant digits, trailing zeros trimmed.
pub(super) fn fmt_exp(v: f64, sig: usize) -> String {
    let s = format!("{:.*e}", sig.saturating_sub(1), v);
    match s.split_once('e') {
        Some((m, e)) => format!("{}e{}", trim_zeros(m.to_string()), e),
        None => s,
    }
}

pub(super) fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// `v` with `sig` significant digits for a label: fixed notation (trailing zeros trimmed)
/// from 1e-4 to 1e6 in magnitude, scientific outside.
pub(super) fn fmt_sig(v: f64, sig: usize) -> String {
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
pub(super) fn fmt_fixed(v: f64, sig: usize) -> String {
    let decimals = (sig as i32 - 1 - v.abs().log10().floor() as i32).clamp(0, 17) as usize;
    format!("{v:.decimals$}")
}
/// The x axis of a bar chart: slot `i` is centred on `i`, from −0.5 to n − 0.5, one tick per bar.
pub(super) struct BarAxis {
    pub(super) n: usize,
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
pub(super) struct LogAxis {
    pub(super) lo: f64,
    pub(super) hi: f64,
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
pub(super) fn log_ticks(lo: f64, hi: f64, max: usize, light: bool) -> Vec<f64> {
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
pub(super) fn nice_ticks(lo: f64, hi: f64, max: usize) -> Vec<f64> {
    let raw = (hi - lo) / max.max(1) as f64;
    if !(raw > 0.0 && raw.is_finite()) {
        return Vec::new();
    }
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil();
    (0..=max + 1).map(|i| (first + i as f64) * step).take_while(|v| *v <= hi).collect()
}
