//! One long-lived thread that starts every child of an executor.
//!
//! Linux delivers a parent-death signal (`PR_SET_PDEATHSIG`, set here by `setpriv --pdeathsig
//! KILL` because setting it in the child ourselves needs `pre_exec`, which is `unsafe`) when the
//! *thread* that forked the child exits, not the process. Tokio's worker and blocking threads
//! come and go, so children forked on them could be killed at random; forking from this one
//! thread, which lives as long as the executor, makes the signal mean "the executor is gone".

use std::io;
use std::sync::mpsc;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

type Request = (Command, oneshot::Sender<io::Result<Child>>);

/// Handle to the spawning thread; the thread ends when the last handle is dropped.
#[derive(Debug)]
pub(crate) struct Spawner {
    tx: mpsc::Sender<Request>,
}

impl Spawner {
    /// Start the thread; children it spawns are registered with `runtime` (their exit is
    /// reported through its signal driver).
    pub(crate) fn start(runtime: tokio::runtime::Handle) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("microstax-spawner".into())
            .spawn(move || {
                let _entered = runtime.enter();
                while let Ok((mut command, reply)) = rx.recv() {
                    let _ = reply.send(command.spawn());
                }
            })?;
        Ok(Spawner { tx })
    }

    /// Spawn `command` on the thread.
    pub(crate) async fn spawn(&self, command: Command) -> io::Result<Child> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send((command, reply)).is_err() {
            return Err(io::Error::other("the spawning thread has ended"));
        }
        answer
            .await
            .map_err(|_| io::Error::other("the spawning thread has ended"))?
    }
}
