//! Benchmarks that print their own figures as JSON lines.

pub mod api;
pub mod billing;
pub mod dunning_sim;
pub mod ledger;
pub mod projections;
pub mod webhooks;
pub mod workload;

/// Peak resident set size of this process so far, in KiB (Linux `VmHWM`; 0 elsewhere).
pub fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
