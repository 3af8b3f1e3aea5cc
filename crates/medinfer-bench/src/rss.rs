//! Peak resident set size of this process (Linux `/proc`).

/// Resets the kernel's peak-RSS counter (`VmHWM`) so that the next reading covers only what
/// follows. Silently does nothing where `/proc/self/clear_refs` is not writable.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory in MiB since start or the last [`reset_peak_rss`] (0 if unknown).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_sees_a_large_allocation() {
        reset_peak_rss();
        let before = peak_rss_mb();
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(&v);
        let after = peak_rss_mb();
        assert!(after >= before + 60.0, "before {before} after {after}");
    }
}
