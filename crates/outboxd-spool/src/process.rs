//! Facts about other processes: whether one is alive, and a handle that
//! names one process for its whole life (a pidfd on Linux), so that a signal
//! cannot reach a process that reused its pid.

use std::io;

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether `pid` names a live process. A zombie (exited, not yet reaped by
/// its parent) counts as dead: this machine's init reaps late, and a zombie
/// still answers `kill(pid, 0)`.
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

/// Waits up to `timeout` for `pid` to be gone (a zombie counts as gone);
/// whether it went. Polls every millisecond: the callers wait for exits
/// that take a few milliseconds, and a user waits on them.
pub fn wait_gone(pid: i32, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while alive(pid) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    true
}

/// Whether any process, a zombie included, has `pid` (PostgreSQL's own
/// checks of its lock files count a zombie as alive).
pub fn exists(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
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

/// One process, pinned: on Linux a pidfd, which keeps naming the same process
/// even after it exits and its pid is reused; elsewhere only the pid.
#[derive(Debug)]
pub struct ProcessHandle {
    #[cfg(not(target_os = "linux"))]
    pid: i32,
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
}

impl ProcessHandle {
    /// Pins the process that has `pid` now. Fails with `ESRCH` when there is none.
    pub fn open(pid: i32) -> io::Result<ProcessHandle> {
        if pid <= 0 {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::FromRawFd;
            // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: the syscall returned a fresh descriptor that we now own.
            let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
            Ok(ProcessHandle { fd })
        }
        #[cfg(not(target_os = "linux"))]
        {
            if alive(pid) {
                Ok(ProcessHandle { pid })
            } else {
                Err(io::Error::from_raw_os_error(libc::ESRCH))
            }
        }
    }

    /// Sends `signal` to the pinned process; `ESRCH` when it has exited.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        // SAFETY: pidfd_send_signal takes our open pidfd, a signal number, no
        // siginfo and no flags.
        let rc = unsafe {
            use std::os::fd::AsRawFd;
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        #[cfg(not(target_os = "linux"))]
        // SAFETY: kill takes a pid and a signal number.
        let rc = unsafe { libc::kill(self.pid, signal) } as i64;
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// The name of a signal, for messages.
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
