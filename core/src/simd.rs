//! Which SIMD instruction sets this CPU runs, for kernels compiled in several variants.
//!
//! Contract: the variants of a kernel give the same bits (they differ only in instruction width,
//! never in the order of operations), unless their own documentation says otherwise (fused
//! multiply-adds round differently). Detection is at run time, once per call site's use; on
//! anything but x86-64 every query answers the baseline.

/// The portable baseline (SSE2 on x86-64).
pub const BASELINE: u8 = 0;
/// AVX2.
pub const AVX2: u8 = 1;
/// AVX-512F.
pub const AVX512: u8 = 2;

/// The widest of [`AVX512`], [`AVX2`] and [`BASELINE`] that this CPU runs.
pub fn level() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return AVX512;
        }
        if std::is_x86_feature_detected!("avx2") {
            return AVX2;
        }
    }
    BASELINE
}

/// Whether this CPU runs AVX2 together with FMA (fused multiply-add).
pub fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_agrees_with_the_feature_queries() {
        let l = level();
        assert!(l <= AVX512);
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(l >= AVX2, std::is_x86_feature_detected!("avx2") || std::is_x86_feature_detected!("avx512f"));
            if avx2_fma() {
                assert!(l >= AVX2);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert!(l == BASELINE && !avx2_fma());
    }
}
