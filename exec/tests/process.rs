//! The process executor with real children (`child.py` beside this file): readiness, logs,
//! stops with and without a grace, restarts, give-up, sharing, reaping, shutdown and drop.

// Helpers panic on purpose: a panic is the failure report a test wants.
#![allow(clippy::unwrap_used)]

use microstax_exec::{
    ExecError, Executor, InstanceId, InstanceSpec, InstanceState, Observed, Ports, ProcessExecutor,
    ProcessOptions, RunSpec,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

fn child_py() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/child.py")
        .display()
        .to_string()
}

fn spec(id: &str, mode: &str) -> InstanceSpec {
    InstanceSpec {
        id: InstanceId(Arc::from(id)),
        service: Arc::from("orders"),
        branch: Arc::from("feat/x"),
        run: Some(RunSpec {
            command: "python3".into(),
            args: vec![child_py(), mode.into(), "{port}".into()],
            env: BTreeMap::from([("GREETING".into(), "{env.NAME} from {service}".into())]),
            probe_path: "/healthz".into(),
            start_timeout: Duration::from_secs(15),
        }),
        image: None,
        env: BTreeMap::from([("NAME".into(), "world".into())]),
        cpu_millis: None,
        memory_mib: None,
        replicas: 1,
    }
}

fn options(dir: &Path) -> ProcessOptions {
    let mut opts = ProcessOptions::new(dir.join("state"), dir.join("logs"));
    opts.stop_grace = Duration::from_secs(3);
    opts.probe_interval = Duration::from_millis(20);
    opts.backoff.initial = Duration::from_millis(50);
    opts
}

/// Wait (on the change signal, not by polling) until `pred` holds for what the executor observes.
async fn wait_until(
    exec: &ProcessExecutor,
    what: &str,
    pred: impl Fn(&[Observed]) -> bool,
) -> Vec<Observed> {
    let deadline = Instant::now() + DEADLINE;
    let mut changes = exec.changes();
    loop {
        let seen = exec.observe();
        if pred(&seen) {
            return seen;
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            panic!("{what}: not reached within {DEADLINE:?}; observed {seen:#?}");
        }
    }
}

async fn ready(exec: &ProcessExecutor, id: &str) -> (SocketAddr, u32, Observed) {
    let seen = wait_until(exec, "ready", |o| {
        o.iter()
            .any(|o| &*o.id.0 == id && matches!(o.state, InstanceState::Ready { .. }))
    })
    .await;
    let o = seen.into_iter().find(|o| &*o.id.0 == id).unwrap();
    let InstanceState::Ready { addr } = o.state else {
        unreachable!()
    };
    (addr, o.pid.unwrap(), o)
}

/// Whether the process runs (a zombie waiting for its parent does not).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .next();
            state != Some("Z")
        }
        Err(_) => false,
    }
}

fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    fields[19].parse().unwrap()
}

async fn gone_within(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while running(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still runs after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

fn records(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect()
}

fn log_of(o: &Observed) -> String {
    std::fs::read_to_string(o.log.as_ref().unwrap()).unwrap()
}

const ID_A: &str = "aaaaaaaaaaaa0000000000000000000a";
const ID_B: &str = "bbbbbbbbbbbb0000000000000000000b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_instance_answers_and_logs_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let exec = ProcessExecutor::new(options(dir.path())).await.unwrap();
    exec.ensure(&spec(ID_A, "serve")).unwrap();
    let (addr, pid, o) = ready(&exec, ID_A).await;
    assert!(addr.ip().is_loopback());
    let answer = get(addr, "/").await;
    assert!(answer.starts_with("HTTP/1."), "{answer}");
    assert!(answer.ends_with("hello world from orders"), "{answer}");
    let log = log_of(&o);
    assert!(
        log.contains(&format!(
            "child pid={pid} greeting=world from orders port={}",
            addr.port()
        )),
        "{log}"
    );
    assert!(
        log.contains("request \"GET /healthz"),
        "stderr is captured too: {log}"
    );
    assert_eq!(records(dir.path()).len(), 1, "one record while it runs");
    exec.shutdown().await;
    assert!(!running(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_the_whole_process_group_and_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let exec = ProcessExecutor::new(options(dir.path())).await.unwrap();
    exec.ensure(&spec(ID_A, "serve,grandchild")).unwrap();
    let (_, pid, o) = ready(&exec, ID_A).await;
    let log = log_of(&o);
    let grandchild: u32 = log
        .split("grandchild pid=")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(running(grandchild));
    exec.stop(&InstanceId(Arc::from(ID_A))).unwrap();
    wait_until(&exec, "stopped", |o| o.is_empty()).await;
    gone_within(pid, Duration::from_secs(5)).await;
    gone_within(grandchild, Duration::from_secs(5)).await;
    assert!(records(dir.path()).is_empty());
    // Stopping what is gone is not an error.
    exec.stop(&InstanceId(Arc::from(ID_A))).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.stop_grace = Duration::from_millis(700);
    let exec = ProcessExecutor::new(opts).await.unwrap();
    exec.ensure(&spec(ID_A, "serve,ignore-term")).unwrap();
    let (_, pid, _) = ready(&exec, ID_A).await;
    let asked = Instant::now();
    exec.stop(&InstanceId(Arc::from(ID_A))).unwrap();
    wait_until(&exec, "stopping", |o| {
        o.is_empty() || o[0].state == InstanceState::Stopping
    })
    .await;
    wait_until(&exec, "stopped", |o| o.is_empty()).await;
    let took = asked.elapsed();
    assert!(!running(pid));
    assert!(
        took >= Duration::from_millis(700),
        "it ignored SIGTERM, so only SIGKILL after the grace ends it (took {took:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_is_restarted_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let exec = ProcessExecutor::new(options(dir.path())).await.unwrap();
    exec.ensure(&spec(ID_A, "serve")).unwrap();
    let (_, pid, o) = ready(&exec, ID_A).await;
    assert_eq!(o.restarts, 0);
    let victim = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(victim, rustix::process::Signal::KILL).unwrap();
    let failed = wait_until(&exec, "failed", |o| {
        matches!(&o[0].state, InstanceState::Failed { .. }) || o[0].restarts > 0
    })
    .await;
    if let InstanceState::Failed { reason, gave_up } = &failed[0].state {
        assert!(reason.contains("signal: 9"), "{reason}");
        assert!(!gave_up);
    }
    let seen = wait_until(&exec, "restarted", |o| {
        o[0].restarts == 1 && matches!(o[0].state, InstanceState::Ready { .. })
    })
    .await;
    let (addr, new_pid) = match seen[0].state {
        InstanceState::Ready { addr } => (addr, seen[0].pid.unwrap()),
        _ => unreachable!(),
    };
    assert_ne!(new_pid, pid);
    assert!(!running(pid));
    assert!(get(addr, "/").await.ends_with("hello world from orders"));
    let log = log_of(&seen[0]);
    assert_eq!(log.matches("--- microstax: start").count(), 2, "{log}");
    exec.shutdown().await;
    assert!(!running(new_pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_never_becomes_ready_fails_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.backoff.give_up_after = 2;
    let exec = ProcessExecutor::new(opts).await.unwrap();
    let mut s = spec(ID_A, "never-ready");
    if let Some(run) = s.run.as_mut() {
        run.start_timeout = Duration::from_millis(400);
    }
    exec.ensure(&s).unwrap();
    let seen = wait_until(&exec, "gave up", |o| {
        matches!(o[0].state, InstanceState::Failed { gave_up: true, .. })
    })
    .await;
    let InstanceState::Failed { reason, .. } = &seen[0].state else {
        unreachable!()
    };
    assert!(reason.contains("not ready within 400ms"), "{reason}");
    assert!(
        reason.contains("connect"),
        "the last probe's error is kept: {reason}"
    );
    assert_eq!(seen[0].restarts, 1, "two starts, then it gave up");
    assert_eq!(seen[0].pid, None);
    assert!(
        records(dir.path()).is_empty(),
        "the failed starts were stopped"
    );
    let log = log_of(&seen[0]);
    for pid in log
        .lines()
        .filter_map(|l| l.strip_prefix("child pid="))
        .map(|l| l.split_whitespace().next().unwrap().parse::<u32>().unwrap())
    {
        assert!(!running(pid), "start with pid {pid} was stopped");
    }
    exec.stop(&InstanceId(Arc::from(ID_A))).unwrap();
    wait_until(&exec, "stopped", |o| o.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_twice_starts_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let exec = ProcessExecutor::new(options(dir.path())).await.unwrap();
    exec.ensure(&spec(ID_A, "serve")).unwrap();
    exec.ensure(&spec(ID_A, "serve")).unwrap();
    let (_, pid, o) = ready(&exec, ID_A).await;
    exec.ensure(&spec(ID_A, "serve")).unwrap();
    let seen = exec.observe();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].pid, Some(pid));
    assert_eq!(log_of(&o).matches("--- microstax: start").count(), 1);
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrunnable_specs_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let exec = ProcessExecutor::new(options(dir.path())).await.unwrap();
    let mut no_run = spec(ID_A, "serve");
    no_run.run = None;
    let err = exec.ensure(&no_run).unwrap_err();
    assert!(matches!(err, ExecError::Unrunnable { .. }) && !err.retryable());
    let mut bad = spec(ID_B, "serve");
    bad.env.clear();
    let err = exec.ensure(&bad).unwrap_err();
    assert!(err.to_string().contains("NAME is not in the env"), "{err}");
    assert!(exec.observe().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_come_from_the_configured_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    let base = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .min(65_000);
    opts.ports = Ports::Range(base..=base + 30);
    let exec = ProcessExecutor::new(opts).await.unwrap();
    exec.ensure(&spec(ID_A, "serve")).unwrap();
    exec.ensure(&spec(ID_B, "serve")).unwrap();
    let (a, _, _) = ready(&exec, ID_A).await;
    let (b, _, _) = ready(&exec, ID_B).await;
    assert_ne!(a.port(), b.port());
    for port in [a.port(), b.port()] {
        assert!((base..=base + 30).contains(&port), "{port} not in {base}..");
    }
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_everything_and_refuses_new_work() {
    let dir = tempfile::tempdir().unwrap();
    let exec = ProcessExecutor::new(options(dir.path())).await.unwrap();
    exec.ensure(&spec(ID_A, "serve")).unwrap();
    exec.ensure(&spec(ID_B, "serve,ignore-term")).unwrap();
    let (_, a, _) = ready(&exec, ID_A).await;
    let (_, b, _) = ready(&exec, ID_B).await;
    exec.shutdown().await;
    assert!(!running(a) && !running(b));
    assert!(exec.observe().is_empty());
    assert!(records(dir.path()).is_empty());
    assert!(exec.ensure(&spec(ID_A, "serve")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_executor_kills_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let exec = ProcessExecutor::new(options(dir.path())).await.unwrap();
    exec.ensure(&spec(ID_A, "serve")).unwrap();
    let (_, pid, _) = ready(&exec, ID_A).await;
    drop(exec);
    gone_within(pid, Duration::from_secs(5)).await;
}

#[test]
fn dropping_the_runtime_kills_the_children() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let exec = rt
        .block_on(ProcessExecutor::new(options(dir.path())))
        .unwrap();
    exec.ensure(&spec(ID_A, "serve")).unwrap();
    let (_, pid, _) = rt.block_on(ready(&exec, ID_A));
    drop(rt);
    // Killed as its task was dropped; the kernel takes a moment to end it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} outlived the runtime"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(records(dir.path()).is_empty());
    drop(exec);
}

/// A second executor on the same state directory would reap the first one's instances: it is
/// refused while the first lives, and accepted once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_executor_at_a_time_per_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = ProcessExecutor::new(options(dir.path())).await.unwrap();
    first.ensure(&spec(ID_A, "serve")).unwrap();
    let (_, pid, _) = ready(&first, ID_A).await;
    let err = ProcessExecutor::new(options(dir.path())).await.unwrap_err();
    assert!(
        err.to_string().contains("lock the state directory"),
        "{err}"
    );
    assert!(running(pid), "the refused executor reaped nothing");
    first.shutdown().await;
    drop(first);
    // the lock goes with the executor's last task, which may end just after the drop
    let deadline = Instant::now() + DEADLINE;
    let second = loop {
        match ProcessExecutor::new(options(dir.path())).await {
            Ok(e) => break e,
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains("lock the state directory"), "{e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("the lock was not released within {DEADLINE:?}: {e}"),
        }
    };
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_rotated_past_its_bound_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.log_max_bytes = 1;
    let exec = ProcessExecutor::new(opts).await.unwrap();
    exec.ensure(&spec(ID_A, "serve")).unwrap();
    let (_, pid, o) = ready(&exec, ID_A).await;
    let victim = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(victim, rustix::process::Signal::KILL).unwrap();
    wait_until(&exec, "restarted", |o| {
        o[0].restarts == 1 && matches!(o[0].state, InstanceState::Ready { .. })
    })
    .await;
    let log = o.log.clone().unwrap();
    let mut old = log.clone().into_os_string();
    old.push(".1");
    let old = std::fs::read_to_string(old).unwrap();
    assert!(
        old.contains("--- microstax: start 0 ") && !old.contains("start 1 "),
        "{old}"
    );
    let new = std::fs::read_to_string(&log).unwrap();
    assert!(
        new.contains("--- microstax: start 1 ") && !new.contains("start 0 "),
        "{new}"
    );
    exec.shutdown().await;
}

/// A record whose pid now names another process (its start time differs) is deleted, and that
/// process is left alone; a record whose process runs is reaped even if this test, not an
/// executor, started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaping_checks_the_start_time_before_it_signals() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let spawn = || {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("python3")
            .args(["-c", "import time; time.sleep(120)"])
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let mut innocent = spawn();
    let mut leftovers = [spawn(), spawn()];
    let write = |name: &str, pid: u32, start: u64| {
        let body = format!(
            r#"{{"id":"{name}","service":"s","pid":{pid},"pgid":{pid},"port":1,"start_time":{start}}}"#
        );
        std::fs::write(state.join(format!("{name}.json")), body).unwrap();
    };
    write("innocent", innocent.id(), start_time(innocent.id()) + 1);
    for (i, leftover) in leftovers.iter().enumerate() {
        write(
            &format!("leftover{i}"),
            leftover.id(),
            start_time(leftover.id()),
        );
    }
    let exec = ProcessExecutor::new(options(dir.path())).await.unwrap();
    assert!(records(dir.path()).is_empty());
    let deadline = Instant::now() + DEADLINE;
    for leftover in &mut leftovers {
        while leftover.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "a leftover still runs");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        innocent.try_wait().unwrap().is_none(),
        "the innocent still runs"
    );
    innocent.kill().unwrap();
    innocent.wait().unwrap();
    exec.shutdown().await;
}

/// Run by `crash` as a separate process: start an instance (with the parent-death signal when
/// `MICROSTAX_CRASH_PDEATHSIG` is set), print its pid, and abort without any cleanup.
#[test]
#[ignore = "a helper: runs only as a child of the crash tests"]
fn crash_helper() {
    let Some(dir) = std::env::var_os("MICROSTAX_CRASH_DIR") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut opts = options(Path::new(&dir));
        opts.parent_death_signal = helper_uses_pdeathsig();
        let exec = ProcessExecutor::new(opts).await.unwrap();
        assert_eq!(exec.uses_parent_death_signal(), helper_uses_pdeathsig());
        exec.ensure(&spec(ID_A, "serve")).unwrap();
        let (_, pid, _) = ready(&exec, ID_A).await;
        println!("instance pid={pid}");
        std::process::abort();
    });
}

fn helper_uses_pdeathsig() -> bool {
    std::env::var_os("MICROSTAX_CRASH_PDEATHSIG").is_some()
}

fn has_setpriv() -> bool {
    Path::new("/usr/bin/setpriv").exists() || Path::new("/bin/setpriv").exists()
}

/// Run `crash_helper` in a process of its own (with or without the parent-death signal) and
/// return the pid of the instance it started before it aborted.
async fn crash(dir: &Path, pdeathsig: bool) -> u32 {
    let mut helper = tokio::process::Command::new(std::env::current_exe().unwrap());
    helper
        .args(["--exact", "crash_helper", "--ignored", "--nocapture"])
        .env("MICROSTAX_CRASH_DIR", dir)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if pdeathsig {
        helper.env("MICROSTAX_CRASH_PDEATHSIG", "1");
    }
    let out = tokio::time::timeout(DEADLINE, helper.output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success(), "the helper aborts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split("instance pid=")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("no pid in the helper's output: {stdout}"))
        .parse()
        .unwrap()
}

/// The parent-death signal: when the executor's process dies without cleanup, the kernel kills
/// its children; the record it left is cleared by the next executor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_of_the_executor_kills_its_children() {
    if !has_setpriv() {
        eprintln!("skipped: no setpriv (util-linux)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pid = crash(dir.path(), true).await;
    gone_within(pid, Duration::from_secs(5)).await;
    assert_eq!(records(dir.path()).len(), 1, "the crash left its record");
    let exec = ProcessExecutor::new(options(dir.path())).await.unwrap();
    assert!(records(dir.path()).is_empty());
    exec.shutdown().await;
}

/// Without the parent-death signal a crash leaves the child running with its record; the next
/// executor on the same state directory reaps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_executor_reaps_what_a_crashed_run_left() {
    let dir = tempfile::tempdir().unwrap();
    let pid = crash(dir.path(), false).await;
    assert!(running(pid), "nothing killed it");
    assert_eq!(records(dir.path()).len(), 1);
    let exec = ProcessExecutor::new(options(dir.path())).await.unwrap();
    gone_within(pid, Duration::from_secs(5)).await;
    assert!(records(dir.path()).is_empty());
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_ensured_again_after_a_stop_answers_at_its_old_address() {
    // scale to zero: a stopped instance that is woken must answer where its route points
    let dir = tempfile::tempdir().unwrap();
    let exec = ProcessExecutor::new(options(dir.path())).await.unwrap();
    let first = exec.ensure(&spec(ID_A, "serve")).unwrap();
    let (addr, pid, _) = ready(&exec, ID_A).await;
    assert_eq!(&*first, addr.to_string());
    exec.stop(&InstanceId(Arc::from(ID_A))).unwrap();
    wait_until(&exec, "stopped", |o| o.is_empty()).await;
    gone_within(pid, Duration::from_secs(5)).await;
    let again = exec.ensure(&spec(ID_A, "serve")).unwrap();
    assert_eq!(again, first);
    let (addr2, pid2, _) = ready(&exec, ID_A).await;
    assert_eq!(addr2, addr);
    assert_ne!(pid2, pid);
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_command_starts_the_configured_program() {
    let dir = tempfile::tempdir().unwrap();
    let python = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())
        .unwrap();
    let mut opts = options(dir.path());
    opts.self_exe = Some(python);
    let exec = ProcessExecutor::new(opts).await.unwrap();
    let mut s = spec(ID_A, "serve");
    if let Some(run) = s.run.as_mut() {
        run.command = microstax_exec::process::SELF_COMMAND.into();
    }
    exec.ensure(&s).unwrap();
    let (addr, _, _) = ready(&exec, ID_A).await;
    assert!(get(addr, "/").await.ends_with("hello world from orders"));
    exec.shutdown().await;

    // without a known program, the start fails with the reason
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.self_exe = None;
    opts.backoff.give_up_after = 1;
    let exec = ProcessExecutor::new(opts).await.unwrap();
    exec.ensure(&s).unwrap();
    let seen = wait_until(&exec, "failed", |o| {
        matches!(o[0].state, InstanceState::Failed { .. })
    })
    .await;
    let InstanceState::Failed { reason, .. } = &seen[0].state else {
        unreachable!()
    };
    assert!(reason.contains("path is unknown"), "{reason}");
    exec.shutdown().await;
}
