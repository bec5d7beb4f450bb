//! Server processes are spawned from one long-lived thread with
//! `PR_SET_PDEATHSIG`, so they die with this process even when it exits
//! without running destructors (test binaries keep servers in statics).
//! The signal fires when the spawning *thread* exits, hence one that never does.

use std::process::{Child, Command};
use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel};

use anyhow::{Result, anyhow};

type Request = (Command, Sender<std::io::Result<Child>>);

static KEEPER: Mutex<Option<Sender<Request>>> = Mutex::new(None);

/// Spawn `command` from the keeper thread, tied to this process's lifetime.
pub fn spawn(mut command: Command) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let sender = {
        let mut keeper = KEEPER.lock().map_err(|_| anyhow!("keeper lock poisoned"))?;
        keeper
            .get_or_insert_with(|| {
                let (tx, rx) = channel::<Request>();
                std::thread::Builder::new()
                    .name("devstack-keeper".into())
                    .spawn(move || {
                        for (mut command, reply) in rx {
                            let _ = reply.send(command.spawn());
                        }
                        // Never return: the children's death signal is tied to this thread.
                        loop {
                            std::thread::park();
                        }
                    })
                    .expect("spawning the devstack keeper thread");
                tx
            })
            .clone()
    };
    let (tx, rx) = channel();
    sender
        .send((command, tx))
        .map_err(|_| anyhow!("devstack keeper thread is gone"))?;
    Ok(rx
        .recv()
        .map_err(|_| anyhow!("devstack keeper thread is gone"))??)
}
