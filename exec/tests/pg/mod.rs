//! A throwaway PostgreSQL server for tests: `initdb` into a temporary directory, `postgres` on a
//! free loopback port with its socket in that directory, ready once it accepts a session, stopped
//! by pid when dropped (SIGINT, PostgreSQL's fast shutdown, then SIGKILL).
//!
//! The binaries come from `MSX_PG_BIN` or the newest `/usr/lib/postgresql/<ver>/bin` (Debian's
//! `postgresql` package, which `.ci/run` installs). Without them the tests fail, not skip.
//! PostgreSQL refuses to run as root, so as root both run as the `postgres` system user through
//! `setpriv`, which also sets a parent-death signal: if the test process dies without dropping
//! the server, the server is killed with it.

#![allow(clippy::expect_used)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server; dropped, it stops.
pub struct PgServer {
    child: Child,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl PgServer {
    /// Starts a server whose `pg_hba.conf` begins with `hba_first` (for example a `reject` line),
    /// then trusts every local and loopback connection.
    pub async fn start(hba_first: &[&str]) -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("msx-pg-")
            .tempdir()
            .expect("temp dir");
        let owner = run_as_owner();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let status = command(&bin.join("initdb"), owner.is_some())
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"])
            .current_dir(dir.path())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed: {}", read(&log));
        let hba = data.join("pg_hba.conf");
        let mut text: String = hba_first.iter().map(|l| format!("{l}\n")).collect();
        text.push_str("local all all trust\nhost all all 127.0.0.1/32 trust\n");
        std::fs::write(&hba, text).expect("write pg_hba.conf");

        let deadline = Instant::now() + Duration::from_secs(30);
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = command(&bin.join("postgres"), owner.is_some())
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(dir.path())
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
                .args(["-c", "max_connections=60"])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log_file(&log))
                .stderr(log_file(&log))
                .spawn()
                .expect("start postgres");
            match wait_ready(&mut child, port, deadline).await {
                Ok(()) => {
                    return PgServer {
                        child,
                        port,
                        bin,
                        dir,
                    }
                }
                Err(exited) if exited && read(&log).contains("could not bind") => continue,
                Err(_) => {
                    stop_child(&mut child);
                    panic!("postgres did not become ready: {}", read(&log));
                }
            }
        }
        panic!("postgres found no free port in 5 tries: {}", read(&log));
    }

    /// `postgres://postgres@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A superuser session on `db`.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        connect(&self.url(db))
            .await
            .expect("connect to test server")
    }

    /// Runs `psql` (libpq itself) with a connection string and one statement; its output.
    pub fn psql(&self, connection: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([connection, "-X", "-A", "-t", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The server's pid (the postmaster).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its directory (data, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Connects with a 2 s bound and drives the connection on a task.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(2));
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Polls for a session until the deadline; `Err(true)` when the server exited.
async fn wait_ready(child: &mut Child, port: u16, deadline: Instant) -> Result<(), bool> {
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return Err(true);
        }
        if let Ok(client) = connect(&url).await {
            if client.simple_query("SELECT 1").await.is_ok() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(false)
}

/// Fast shutdown by pid, then SIGKILL after 10 s; reaped either way.
fn stop_child(child: &mut Child) {
    let Some(pid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn command(program: &Path, as_postgres: bool) -> Command {
    if !as_postgres {
        return Command::new(program);
    }
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--pdeathsig=KILL",
        "--",
    ])
    .arg(program);
    cmd
}

/// `(uid, gid)` of the `postgres` user when running as root, who must not run the server.
fn run_as_owner() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "running as root, and there is no `postgres` user to run PostgreSQL as \
             (Debian's postgresql package creates it)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    Some((id("-u"), id("-g")))
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MSX_PG_BIN") {
        return PathBuf::from(dir);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .max();
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found in /usr/lib/postgresql/<version>/bin: install \
             Debian's `postgresql` package (.ci/run does) or set MSX_PG_BIN to a directory \
             holding initdb, postgres and psql"
        ),
    }
}

/// A port that was free a moment ago (bound on 127.0.0.1:0 and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open server log")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
