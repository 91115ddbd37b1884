//! Processes on Unix: `kill(pid, 0)` and `/proc` for the facts (Linux;
//! where `/proc` is missing, as on macOS, a fact is unknown), a pidfd for
//! the handle (Linux; elsewhere only the pid), signals for the asks.

use std::io;

use rustix::process::{Pid, Signal as Sig};

use super::Signal;

/// This process's effective user id.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `pid` as a process id: `None` for 0 and negative numbers, which name
/// process groups or everyone to `kill` (a forged lock record may hold
/// them; `Pid::from_raw` would panic on a negative one).
fn process_id(pid: i32) -> Option<Pid> {
    (pid > 0).then(|| Pid::from_raw(pid)).flatten()
}

/// `kill(pid, 0)`: whether a process (a zombie included) has `pid`; one we
/// may not signal exists too.
fn answers(pid: i32) -> bool {
    match process_id(pid) {
        Some(pid) => match rustix::process::test_kill_process(pid) {
            Ok(()) => true,
            Err(e) => e == rustix::io::Errno::PERM,
        },
        None => false,
    }
}

/// Whether `pid` names a live process. A zombie (exited, not yet reaped by
/// its parent) counts as dead: this machine's init reaps late, and a zombie
/// still answers `kill(pid, 0)`.
pub fn alive(pid: i32) -> bool {
    answers(pid) && !is_zombie(pid)
}

/// Whether any process, a zombie included, has `pid` (PostgreSQL's own
/// checks of its lock files count a zombie as alive).
pub fn exists(pid: i32) -> bool {
    answers(pid)
}

/// Whether `/proc/PID/stat` shows the process as a zombie (`Z`) or dead (`X`).
/// Where `/proc` is missing (macOS) nothing is known and the answer is no.
pub fn is_zombie(pid: i32) -> bool {
    matches!(stat_field(pid, 0).as_deref(), Some("Z" | "X"))
}

/// Whether `/proc/PID/stat` shows the process as stopped (`T`, SIGSTOP) or
/// traced (`t`).
pub fn is_stopped(pid: i32) -> bool {
    matches!(stat_field(pid, 0).as_deref(), Some("T" | "t"))
}

/// The parent's pid, from `/proc/PID/stat`.
pub fn parent_of(pid: i32) -> Option<i32> {
    stat_field(pid, 1)?.parse().ok()
}

/// Field `n` after the command name of `/proc/PID/stat` (0 is the state).
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may itself hold spaces and parentheses:
    // the fields after it start after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n).map(str::to_string)
}

/// The real uid of a process, from `/proc/PID/status`; `None` where unknown.
pub fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The file name of a process's program (`/proc/PID/exe`, else its first
/// argument); `None` where unknown.
pub fn program_name(pid: i32) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .or_else(|| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let first = raw.split(|b| *b == 0).next()?;
            Some(std::path::PathBuf::from(
                String::from_utf8_lossy(first).into_owned(),
            ))
        })?;
    Some(exe.file_name()?.to_string_lossy().into_owned())
}

/// The command line of `pid`, from `/proc/PID/cmdline` (empty where
/// unknown).
pub fn command_line(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// One process, pinned: on Linux a pidfd, which keeps naming the same process
/// even after it exits and its pid is reused; elsewhere only the pid.
#[derive(Debug)]
pub struct ProcessHandle {
    #[cfg(not(target_os = "linux"))]
    pid: Pid,
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
}

impl ProcessHandle {
    /// Pins the process that has `pid` now. Fails with `ESRCH` when there is none.
    pub fn open(pid: i32) -> io::Result<ProcessHandle> {
        let gone = || io::Error::from_raw_os_error(crate::errno::ESRCH);
        let pid = process_id(pid).ok_or_else(gone)?;
        #[cfg(target_os = "linux")]
        {
            let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
            Ok(ProcessHandle { fd })
        }
        #[cfg(not(target_os = "linux"))]
        {
            if alive(pid.as_raw_nonzero().get()) {
                Ok(ProcessHandle { pid })
            } else {
                Err(gone())
            }
        }
    }

    /// Sends `signal` to the pinned process; `ESRCH` when it has exited.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        let signal = match signal {
            Signal::Interrupt => Sig::INT,
            Signal::Quit => Sig::QUIT,
            Signal::Terminate => Sig::TERM,
            Signal::Kill => Sig::KILL,
            Signal::Hangup => Sig::HUP,
            Signal::Stop => Sig::STOP,
            Signal::Continue => Sig::CONT,
        };
        #[cfg(target_os = "linux")]
        rustix::process::pidfd_send_signal(&self.fd, signal)?;
        #[cfg(not(target_os = "linux"))]
        rustix::process::kill_process(self.pid, signal)?;
        Ok(())
    }
}

/// The Unix signal's name.
pub fn signal_label(signal: Signal) -> &'static str {
    match signal {
        Signal::Interrupt => "SIGINT",
        Signal::Quit => "SIGQUIT",
        Signal::Terminate => "SIGTERM",
        Signal::Kill => "SIGKILL",
        Signal::Hangup => "SIGHUP",
        Signal::Stop => "SIGSTOP",
        Signal::Continue => "SIGCONT",
    }
}

/// The name of a signal number the daemon received, for messages.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGKILL => "SIGKILL",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGCONT => "SIGCONT",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not() {
        assert!(alive(std::process::id() as i32));
        assert!(!alive(0));
        assert!(!alive(-1));
        assert!(!exists(i32::MIN));
        for pid in [0, -1, i32::MIN] {
            let refused = ProcessHandle::open(pid).unwrap_err();
            assert_eq!(refused.raw_os_error(), Some(crate::errno::ESRCH), "{pid}");
        }
    }

    #[test]
    fn a_reaped_child_is_dead_and_a_zombie_counts_as_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Wait until it has exited but do not reap it yet: it is a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !is_zombie(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!alive(pid), "a zombie must count as dead");
        child.wait().unwrap();
        assert!(!alive(pid));
    }
}
