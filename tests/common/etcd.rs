//! A real etcd server for tests (Debian's `etcd-server`): started on loopback ports with a temp
//! data dir, stopped, resumed, killed and restarted by its pid, never by name.
#![allow(clippy::expect_used)]
#![allow(dead_code)]

use microstax_planner::etcd::client::{Client, Op};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub struct EtcdServer {
    pub client: SocketAddr,
    peer: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

fn free_port() -> SocketAddr {
    // released before etcd binds it: a small race, acceptable on loopback in tests
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

impl EtcdServer {
    pub async fn start() -> EtcdServer {
        let mut s = EtcdServer {
            client: free_port(),
            peer: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        s.spawn().await;
        s
    }

    /// `etcd://HOST:PORT/PREFIX` of this server.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.client)
    }

    pub fn api(&self) -> Client {
        Client::new(&self.client.to_string(), Duration::from_secs(2))
    }

    async fn spawn(&mut self) {
        let client = format!("http://{}", self.client);
        let peer = format!("http://{}", self.peer);
        let child = std::process::Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--log-level", "error", "--logger", "zap"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        self.child = Some(child);
        let api = self.api();
        let end = Instant::now() + Duration::from_secs(30);
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        loop {
            poll.tick().await;
            if api.get("/").await.is_ok() {
                return;
            }
            assert!(Instant::now() < end, "etcd did not answer within 30 s");
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, signal: rustix::process::Signal) {
        if let Some(p) = i32::try_from(self.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            rustix::process::kill_process(p, signal).expect("signal etcd");
        }
    }

    /// Freeze it (SIGSTOP): connections are accepted by the kernel and never answered.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    /// SIGKILL it and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Put `key` = `value` directly (as a foreign writer would).
    pub async fn put(&self, key: &str, value: &[u8]) -> i64 {
        let op = Op::Put {
            key: key.to_string(),
            value: value.to_vec(),
            lease: 0,
        };
        self.api().txn(&[], &[op], &[]).await.expect("put").revision
    }

    /// The store's current revision.
    pub async fn revision(&self) -> i64 {
        self.api().get("/").await.expect("read").0
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // a stopped process must be resumed to die of anything but SIGKILL; SIGKILL works
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
