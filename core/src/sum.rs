//! Compensated summation. Actions enter HMC through ΔH, a small difference of large numbers,
//! so every action sum in latflow goes through [`CompensatedSum`] (Neumaier's variant of Kahan).

/// Neumaier–Kahan compensated accumulator: the error of a sum of n terms is O(ε) instead of O(nε).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CompensatedSum {
    sum: f64,
    comp: f64,
}

impl CompensatedSum {
    /// An empty sum (value 0).
    pub const fn new() -> Self {
        Self { sum: 0.0, comp: 0.0 }
    }

    /// Adds one term.
    #[inline]
    pub fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.comp += (self.sum - t) + x;
        } else {
            self.comp += (x - t) + self.sum;
        }
        self.sum = t;
    }

    /// Adds another partial sum (used to combine fixed-size chunks in a fixed order).
    #[inline]
    pub fn merge(&mut self, other: CompensatedSum) {
        self.add(other.sum);
        self.comp += other.comp;
    }

    /// The compensated value.
    #[inline]
    pub fn value(&self) -> f64 {
        self.sum + self.comp
    }

    /// The running sum and its compensation, to send a partial sum to another rank and
    /// [`CompensatedSum::from_parts`] it there (merging it then gives the same bits as merging
    /// the original).
    pub fn parts(&self) -> [f64; 2] {
        [self.sum, self.comp]
    }

    /// The partial sum whose [`CompensatedSum::parts`] are `parts`.
    pub fn from_parts(parts: [f64; 2]) -> Self {
        Self { sum: parts[0], comp: parts[1] }
    }
}

impl std::iter::FromIterator<f64> for CompensatedSum {
    fn from_iter<I: IntoIterator<Item = f64>>(iter: I) -> Self {
        let mut s = CompensatedSum::new();
        for x in iter {
            s.add(x);
        }
        s
    }
}

/// Compensated sum of an iterator of terms.
pub fn compensated_sum<I: IntoIterator<Item = f64>>(terms: I) -> f64 {
    terms.into_iter().collect::<CompensatedSum>().value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_small_terms_lost_by_naive_summation() {
        // 1 + 1e6 terms of 1e-16: naive f64 summation keeps 1.0, the exact sum is 1 + 1e-10.
        let terms = std::iter::once(1.0).chain(std::iter::repeat_n(1e-16, 1_000_000));
        let naive: f64 = std::iter::once(1.0).chain(std::iter::repeat_n(1e-16, 1_000_000)).sum();
        assert_eq!(naive, 1.0);
        let c = compensated_sum(terms);
        assert!((c - (1.0 + 1e-10)).abs() < 1e-15, "{c}");
    }

    #[test]
    fn cancellation() {
        let c = compensated_sum([1e16, 1.0, -1e16, 1.0]);
        assert_eq!(c, 2.0);
    }

    #[test]
    fn merge_matches_single_pass() {
        let xs: Vec<f64> = (0..10_000).map(|i| ((i as f64) * 0.37).sin() * 1e3).collect();
        let all = compensated_sum(xs.iter().copied());
        let mut m = CompensatedSum::new();
        for chunk in xs.chunks(97) {
            m.merge(chunk.iter().copied().collect());
        }
        assert!((all - m.value()).abs() <= 1e-12 * all.abs().max(1.0));
    }
}
