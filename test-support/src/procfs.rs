//! What the kernel says about a process: CPU time, peak and current memory, UDP datagrams sent
//! in its network namespace, from `/proc`
//! (Linux). `ferry-bench` and the transport's benchmark measure the tunnels' cost with it; a
//! `pid` is a process ID or `self`.

use std::fmt::Display;
use std::time::Duration;

/// CPU time (user + system) of process `pid`; zero if it is gone.
pub fn cpu_time(pid: impl Display) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    // Linux reports in USER_HZ, which is 100 on every mainstream architecture.
    Duration::from_millis(ticks * 10)
}

/// UDP datagrams sent so far in the network namespaces of `pids` (each namespace counted once):
/// the kernel's `Udp: OutDatagrams`, which counts every datagram of a GSO batch.
pub fn udp_datagrams_sent(pids: &[u32]) -> u64 {
    let mut namespaces = std::collections::BTreeSet::new();
    let mut total = 0;
    for pid in pids {
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if !namespaces.insert(ns) {
            continue;
        }
        let Ok(snmp) = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")) else {
            continue;
        };
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
        let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
            continue;
        };
        let column = names.split_whitespace().position(|n| n == "OutDatagrams");
        total += column
            .and_then(|c| values.split_whitespace().nth(c))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Peak resident memory (VmHWM) of process `pid` in bytes; zero if unknown.
pub fn peak_rss(pid: impl Display) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// Resident memory now (VmRSS) of process `pid` in bytes; zero if unknown.
pub fn rss(pid: impl Display) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// The `field` line of `/proc/<pid>/status` (a figure in kB) in bytes; zero if unknown.
fn status_bytes(pid: impl Display, field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_spent_cpu_time_and_holds_memory() {
        // Spin until the kernel has counted at least one tick of CPU time for us.
        let start = std::time::Instant::now();
        let mut spins = 0u64;
        while cpu_time("self").is_zero() && start.elapsed() < Duration::from_secs(10) {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
        assert!(!cpu_time(std::process::id()).is_zero());
        let rss = rss("self");
        assert!(rss > 0 && peak_rss("self") >= rss, "rss {rss}");
    }

    #[test]
    fn a_process_that_is_not_there_reads_as_zero() {
        assert_eq!(cpu_time("no-such-process"), Duration::ZERO);
        assert_eq!(
            (rss("no-such-process"), peak_rss("no-such-process")),
            (0, 0)
        );
    }
}
