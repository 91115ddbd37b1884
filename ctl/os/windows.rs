//! Launching on Windows: the daemon itself is created detached from this
//! console (`DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP |
//! CREATE_NO_WINDOW`), and its `--daemonize` only points its output at its
//! log. Its early errors come through the notify pipe.
//!
//! Windows hands a child every inheritable handle of its parent, and a
//! console program's standard handles are inheritable: a daemon spawned
//! as is would hold `outboxctl`'s output open for its whole life, and
//! `outboxctl start | more` (or any caller reading to the end) would never
//! finish. Our standard handles stop being inheritable first.

use std::os::windows::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use outboxd::notify::NOTIFY_SOCKET;
use outboxd::paths::Paths;
use windows_sys::Win32::System::Threading::{
    CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, DETACHED_PROCESS,
};

use super::Launched;

/// `cmd.exe /C COMMAND`.
pub fn shell(command: &str) -> tokio::process::Command {
    let mut shell = tokio::process::Command::new("cmd.exe");
    shell.arg("/C").arg(command);
    shell
}

/// Resolves when Ctrl-C or Ctrl-Break arrives.
pub async fn stop_requested() {
    let mut brk = tokio::signal::windows::ctrl_break().ok();
    let ctrl_break = async {
        match brk.as_mut() {
            Some(brk) => {
                brk.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = ctrl_break => {}
    }
}

pub fn spawn_daemon(exe: &Path, paths: &Paths, notify: &Path) -> std::io::Result<Launched> {
    outboxd::win32::keep_std_handles_private();
    let child = Command::new(exe)
        .arg("--daemonize")
        .arg("--home")
        .arg(&paths.home)
        .env(NOTIFY_SOCKET, notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW)
        .spawn()?;
    Ok(Launched {
        launcher: None,
        main_pid: Some(child.id() as i32),
        said: std::thread::spawn(String::new),
    })
}

/// On Windows, Ctrl-C during `start` still ends outboxctl at once (the
/// daemon it launched goes on; `outboxctl stop` stops it).
pub fn interruptible() -> Interruptible {
    Interruptible
}

pub struct Interruptible;

impl Interruptible {
    pub fn interrupted(&self) -> bool {
        false
    }
}
