//! This process's peak resident memory (Linux `/proc/self/status`), for benchmarks and studies.

/// Peak resident set size of this process (`VmHWM`), bytes; `None` where the kernel does not say.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Starts a new peak: `VmHWM` becomes the current resident size, so each benchmark or run in one
/// process reports its own peak (writing 5 to `clear_refs` resets it; ignored where unsupported).
pub fn reset_peak_rss() {
    // Heap pages freed by what ran before go back to the kernel first. Without it they stay
    // resident (glibc keeps them), and a study's later runs reported the memory an earlier final
    // evaluation (the Inception network) had used: 1,011 MiB for every run after the first, whose
    // own training peak was 640 MiB.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    /// Resident size now (`VmRSS`), bytes.
    fn rss_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    #[test]
    fn peak_follows_an_allocation() {
        // Tests run in threads of one process, and others allocate and free beside this one:
        // the peak is compared with the resident size right before the allocation (which the
        // peak includes even if another thread's memory went back to the kernel meanwhile),
        // not with an earlier peak.
        super::reset_peak_rss();
        let (Some(_), Some(now)) = (super::peak_rss_bytes(), rss_bytes()) else {
            return;
        };
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        let after = super::peak_rss_bytes().unwrap();
        assert!(
            after >= (now + (64 << 20)).saturating_sub(8 << 20),
            "peak {after} after touching 64 MiB at a resident size of {now}"
        );
    }
}
