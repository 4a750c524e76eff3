//! Child processes the harness starts, and only those: spawn (optionally pinned with `taskset`),
//! wait with a deadline, and stop by pid. A stopped process gets SIGTERM, then SIGKILL after a
//! grace period; descendants it forked (nginx workers) are recorded while it runs and killed by
//! pid if they outlive it. Nothing is ever looked up or killed by name.

use anyhow::{bail, Context as _};
use rustix::process::{kill_process, Pid, Signal};
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Poll interval of the deadline loops.
const POLL: Duration = Duration::from_millis(5);

/// A command prefixed with `taskset -c <cpus>` (taskset execs it, so the pid is the program's).
pub fn pinned(taskset: &Path, cpus: &str, program: &Path) -> Command {
    let mut c = Command::new(taskset);
    c.arg("-c").arg(cpus).arg(program);
    c
}

/// A started child with its output files.
pub struct Proc {
    name: String,
    child: Option<Child>,
    /// Descendants seen while running, as (pid, start time) so a reused pid is never killed.
    descendants: Vec<(u32, u64)>,
    stdout: PathBuf,
    stderr: PathBuf,
    /// CPU seconds of the process last seen by [`Proc::wait_until`] before it exited.
    last_cpu: f64,
}

impl Proc {
    /// Start `cmd` with stdout and stderr going to `<dir>/<name>.out` and `.err` (files, not
    /// pipes, so a chatty child never blocks on a full pipe). Stdin is null unless set on `cmd`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> anyhow::Result<Proc> {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        cmd.stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?);
        Proc::spawn_with(name, cmd, stdout, stderr)
    }

    /// Start `cmd` whose stdio the caller set up; `stdout`/`stderr` are where to read it back.
    pub fn spawn_with(
        name: &str,
        mut cmd: Command,
        stdout: PathBuf,
        stderr: PathBuf,
    ) -> anyhow::Result<Proc> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            descendants: Vec::new(),
            stdout,
            stderr,
            last_cpu: 0.0,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Mutable access to the child (to take its stdin or stdout pipe).
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// The process and its current descendants, recording the descendants for [`Proc::stop`].
    pub fn tree(&mut self) -> Vec<u32> {
        let root = self.pid();
        let tree = super::procfs::tree(root);
        for &pid in tree.iter().skip(1) {
            if let Some(start) = super::procfs::start_time(pid) {
                if !self.descendants.contains(&(pid, start)) {
                    self.descendants.push((pid, start));
                }
            }
        }
        tree
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("{} was already stopped", self.name),
        }
    }

    /// Wait for it to exit by itself until `deadline`; on timeout stop it and fail.
    pub fn wait_until(&mut self, deadline: Instant) -> anyhow::Result<ExitStatus> {
        let pid = self.pid();
        loop {
            // sampled while it lives: once reaped, its /proc entry is gone
            let cpu = super::procfs::cpu_seconds(&[pid]);
            if cpu > 0.0 {
                self.last_cpu = cpu;
            }
            if let Some(st) = self.exited()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                self.stop(Duration::from_secs(1));
                bail!("{} did not finish in time and was killed", self.name);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stop it: SIGTERM, then SIGKILL after `grace`; then kill recorded descendants still alive.
    pub fn stop(&mut self, grace: Duration) {
        let _ = self.tree();
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                if let Some(pid) = Pid::from_raw(child.id() as i32) {
                    let _ = kill_process(pid, Signal::TERM);
                }
                let deadline = Instant::now() + grace;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(POLL);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for &(pid, start) in &self.descendants {
            if super::procfs::start_time(pid) == Some(start) {
                if let Some(p) = Pid::from_raw(pid as i32) {
                    let _ = kill_process(p, Signal::KILL);
                }
            }
        }
    }

    /// Its stdout so far.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// All of its stdout, then all of its stderr.
    pub fn output_text(&self) -> String {
        let mut s = self.stdout_text();
        s.push_str(&std::fs::read_to_string(&self.stderr).unwrap_or_default());
        s
    }

    /// The last lines of its stderr (and stdout), for error messages.
    pub fn output_tail(&self) -> String {
        let mut s = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        s.push_str(&self.stdout_text());
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// Run `cmd` to completion within `timeout` and return its stdout; fails on timeout or a
/// non-zero exit, with the tail of its output.
pub fn run_bounded(
    name: &str,
    cmd: Command,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<String> {
    run_bounded_cpu(name, cmd, dir, timeout).map(|(out, _)| out)
}

/// [`run_bounded`], also returning the CPU seconds the process used (sampled every few
/// milliseconds while it ran, so its last few milliseconds may be missing).
pub fn run_bounded_cpu(
    name: &str,
    cmd: Command,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<(String, f64)> {
    let mut cmd = cmd;
    cmd.stdin(Stdio::null());
    let mut p = Proc::spawn(name, cmd, dir)?;
    let st = p.wait_until(Instant::now() + timeout)?;
    if !st.success() {
        bail!("{name} failed ({st}):\n{}", p.output_tail());
    }
    Ok((p.stdout_text(), p.last_cpu))
}

/// Wait until `addr` accepts a TCP connection, failing at `deadline` or if `proc` exits.
pub fn wait_port(addr: SocketAddr, proc: &mut Proc, deadline: Instant) -> anyhow::Result<()> {
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        if let Some(st) = proc.exited()? {
            bail!(
                "{} exited ({st}) before listening on {addr}:\n{}",
                proc.name,
                proc.output_tail()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not listen on {addr} in time:\n{}",
                proc.name,
                proc.output_tail()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// A loopback port that was free a moment ago (bind to port 0 and release it). Another process
/// could take it before the proxy binds it; the proxy then fails to start and the harness says so.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("probing for a free port")?;
    Ok(l.local_addr()?.port())
}
