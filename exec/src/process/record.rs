//! Records of running instances, one small JSON file each in the state directory, and the reaping
//! of what a previous run left by them. A record names the process by pid *and* its start time
//! (field 22 of `/proc/PID/stat`), so a pid the kernel handed to another program since is never
//! signalled.

use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One running instance, as written to `<state_dir>/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub id: String,
    pub service: String,
    pub pid: u32,
    pub pgid: u32,
    pub port: u16,
    /// Clock ticks since boot at which `pid` started.
    pub start_time: u64,
}

impl Record {
    pub(crate) fn path(state_dir: &Path, id: &str) -> PathBuf {
        state_dir.join(format!("{id}.json"))
    }

    /// Write the record (to a temporary name first, so a crash never leaves half a record).
    pub(crate) fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        let body = serde_json::json!({
            "id": self.id,
            "service": self.service,
            "pid": self.pid,
            "pgid": self.pgid,
            "port": self.port,
            "start_time": self.start_time,
        });
        let path = Self::path(state_dir, &self.id);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, body.to_string())?;
        std::fs::rename(&tmp, &path)
    }

    fn parse(text: &str) -> Option<Record> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        Some(Record {
            id: v.get("id")?.as_str()?.to_owned(),
            service: v.get("service")?.as_str()?.to_owned(),
            pid: u32::try_from(v.get("pid")?.as_u64()?).ok()?,
            pgid: u32::try_from(v.get("pgid")?.as_u64()?).ok()?,
            port: u16::try_from(v.get("port")?.as_u64()?).ok()?,
            start_time: v.get("start_time")?.as_u64()?,
        })
    }
}

/// What `/proc/PID/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// One-letter state (`R`, `S`, `Z`, ...).
    pub state: char,
    pub pgid: u32,
    pub start_time: u64,
}

/// The stat of `pid`, or `None` when there is no such process.
pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or parentheses itself:
    // the fields that follow start after the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgid: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Whether `pid` runs (a zombie does not: it only waits for its parent to collect it).
pub(crate) fn running(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

/// A process group that is safe to signal: never 0 or 1 (which mean "my group" and "everyone"
/// to kill(2)), never the executor's own group.
pub(crate) fn group(pgid: u32) -> Option<Pid> {
    let raw = i32::try_from(pgid).ok().filter(|p| *p > 1)?;
    let pid = Pid::from_raw(raw)?;
    let own = rustix::process::getpgrp();
    (pid != own).then_some(pid)
}

/// Signal a process group; a group already gone is not an error.
pub(crate) fn signal_group(pgid: u32, signal: Signal) {
    if let Some(group) = group(pgid) {
        let _ = kill_process_group(group, signal);
    }
}

/// Whether any process of the group still exists.
pub(crate) fn group_exists(pgid: u32) -> bool {
    group(pgid).is_some_and(|g| test_kill_process_group(g).is_ok())
}

/// What reaping did with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reaped {
    /// The recorded process still ran and its group was stopped.
    Killed(Record),
    /// The recorded process was gone or its pid belongs to another process now; only the
    /// record was removed.
    Stale(Record),
}

/// Stop what every record in `state_dir` names and delete the records. Leaders that still run
/// with the recorded start time get SIGTERM to their groups, then, once they are gone or `grace`
/// has passed, SIGKILL (all in one round, so many records cost one grace, not one each); a record
/// whose leader is gone gets SIGKILL to whatever is left of its group (its children that outlived
/// it); a record whose pid now names another process is only deleted.
pub(crate) async fn reap(state_dir: &Path, grace: Duration, poll: Duration) -> Vec<Reaped> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.to_string_lossy();
        if name.ends_with(".json.tmp") {
            let _ = std::fs::remove_file(&path);
        }
        if !name.ends_with(".json") {
            continue;
        }
        let record = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| Record::parse(&t));
        if let Some(record) = record {
            out.push(classify(record));
        }
        let _ = std::fs::remove_file(&path);
    }
    let live: Vec<&Record> = out
        .iter()
        .filter_map(|r| match r {
            Reaped::Killed(r) => Some(r),
            Reaped::Stale(_) => None,
        })
        .collect();
    for record in &live {
        tracing::info!(id = %record.id, pid = record.pid, "reaping an instance a previous run left");
        signal_group(record.pgid, Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while live.iter().any(|r| running(r.pid)) && Instant::now() < deadline {
        tokio::time::sleep(poll).await;
    }
    for record in &live {
        signal_group(record.pgid, Signal::KILL);
    }
    out
}

/// Whether the record's process still runs; the groups of records whose leader is gone are
/// killed at once.
fn classify(record: Record) -> Reaped {
    match proc_stat(record.pid) {
        Some(stat) if stat.start_time != record.start_time => Reaped::Stale(record),
        Some(stat) if stat.state != 'Z' => Reaped::Killed(record),
        _ => {
            // The leader is gone or a zombie (killed by its parent-death signal, say) but its
            // children may still hold the group: no new process can be given a pid that is
            // still some group's id, so the group is still ours.
            signal_group(record.pgid, Signal::KILL);
            Reaped::Stale(record)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_stat() {
        let stat = proc_stat(std::process::id());
        assert!(stat.is_some_and(|s| s.start_time > 0 && s.state != 'Z'));
    }

    #[test]
    fn never_signals_everyone_or_itself() {
        assert_eq!(group(0), None);
        assert_eq!(group(1), None);
        let own = rustix::process::getpgrp().as_raw_nonzero().get();
        assert_eq!(group(u32::try_from(own).unwrap_or(0)), None);
    }

    #[test]
    fn a_record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record {
            id: "abc".into(),
            service: "orders".into(),
            pid: 42,
            pgid: 42,
            port: 4000,
            start_time: 7,
        };
        r.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(Record::path(dir.path(), "abc")).unwrap();
        assert_eq!(Record::parse(&text), Some(r));
    }
}
