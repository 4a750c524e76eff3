//! Reading `/proc`: process trees (a proxy's master and its workers), CPU time (utime + stime of
//! every thread of a process, from `/proc/PID/stat`) and memory (`VmHWM`, `VmRSS` from
//! `/proc/PID/status`).

use std::collections::BTreeMap;

/// Fields of `/proc/PID/stat` after the `(comm)` field, which may itself hold spaces.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

// Indexes into `stat_fields` (field number in proc(5) minus 3).
const PPID: usize = 1;
const UTIME: usize = 11;
const STIME: usize = 12;
const STARTTIME: usize = 19;

/// The parent pid.
fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(PPID)?.parse().ok()
}

/// Start time in clock ticks after boot; with the pid it names a process uniquely.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(STARTTIME)?.parse().ok()
}

/// `root` followed by its descendants (empty if `root` is gone).
pub fn tree(root: u32) -> Vec<u32> {
    if stat_fields(root).is_none() {
        return Vec::new();
    }
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(pp) = ppid(pid) {
                children.entry(pp).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    // Each pid has one parent, so every pid is pushed at most once and this ends.
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c.iter().copied().filter(|p| *p != root));
        }
        i += 1;
    }
    out
}

/// CPU seconds (user + system, all threads) used by each process of `pids`, summed.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let ticks: u64 = pids
        .iter()
        .filter_map(|&p| {
            let f = stat_fields(p)?;
            Some(f.get(UTIME)?.parse::<u64>().ok()? + f.get(STIME)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / hz
}

/// Busy CPU seconds of the whole machine since boot, from the `cpu` line of `/proc/stat`:
/// everything but idle and iowait (steal counts as busy: it is time some other guest took).
pub fn machine_busy_seconds() -> f64 {
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy as f64 / hz
}

/// A `Vm*` line of `/proc/PID/status` in KiB, summed over `pids`.
pub fn vm_kib(pids: &[u32], key: &str) -> u64 {
    pids.iter()
        .filter_map(|&p| {
            let s = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let line = s
                .lines()
                .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
            line[key.len() + 1..]
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert_eq!(tree(me).first(), Some(&me));
        assert!(start_time(me).is_some());
        assert!(vm_kib(&[me], "VmHWM") > 0);
        assert!(cpu_seconds(&[me]) >= 0.0);
        assert!(machine_busy_seconds() > 0.0);
    }
}
