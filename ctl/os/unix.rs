//! Launching on Unix: `outboxd --daemonize`, whose first process exits
//! once the daemon has forked away and taken the lock; what it says before
//! that comes through a pipe.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use outboxd::notify::NOTIFY_SOCKET;
use outboxd::paths::Paths;

use super::Launched;

/// `sh -c COMMAND`.
pub fn shell(command: &str) -> tokio::process::Command {
    let mut shell = tokio::process::Command::new("sh");
    shell.arg("-c").arg(command);
    shell
}

/// Resolves when SIGINT (Ctrl-C) or SIGTERM arrives.
pub async fn stop_requested() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm => {}
    }
}

pub fn spawn_daemon(exe: &Path, paths: &Paths, notify: &Path) -> std::io::Result<Launched> {
    let mut child = Command::new(exe)
        .arg("--daemonize")
        .arg("--home")
        .arg(&paths.home)
        .env(NOTIFY_SOCKET, notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let said = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    Ok(Launched {
        launcher: Some(child),
        main_pid: None,
        said,
    })
}

/// A server outboxctl runs for a while (`upgrade postgres`) gets SIGINT,
/// PostgreSQL's fast shutdown, when outboxctl dies, even by SIGKILL (on
/// Linux; elsewhere the next start or upgrade stops it).
pub fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group, so that a Ctrl-C at outboxctl's terminal
        // does not stop it under the upgrade (outboxctl stops it in order).
        command.process_group(0);
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
}

/// SIGINT to `pid` (PostgreSQL's fast shutdown).
pub fn interrupt(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    }
}

/// A flag that Ctrl-C (SIGINT) or SIGTERM sets instead of ending the
/// process, for as long as the returned guard lives.
pub fn interruptible() -> Interruptible {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ids = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM]
        .into_iter()
        .filter_map(|signal| signal_hook::flag::register(signal, flag.clone()).ok())
        .collect();
    Interruptible { flag, ids }
}

pub struct Interruptible {
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ids: Vec<signal_hook::SigId>,
}

impl Interruptible {
    pub fn interrupted(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Interruptible {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
