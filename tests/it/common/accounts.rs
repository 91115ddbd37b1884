//! Other accounts: throwaway users and groups (removed when the test ends),
//! and running as `nobody`.

use super::*;

/// A copy of `outboxctl` that another user can run (the build directory may
/// sit under a private home such as /root).
pub fn ctl_for_other_users() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("outboxctl-bin-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("outboxctl");
    std::fs::copy(OUTBOXCTL, &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, exe)
}

/// Runs `exe args...` as `nobody` (the test must run as root).
pub fn run_as_nobody(exe: &Path, args: &[&std::ffi::OsStr]) -> Run {
    let mut command = Command::new(exe);
    command
        .args(args)
        .current_dir("/")
        .env("HOME", "/")
        .uid(NOBODY)
        .gid(NOBODY);
    // std clears the supplementary groups when it sets the uid as root.
    run(&mut command)
}

/// The uid and gid of an account, from the password database.
pub fn account(name: &str) -> Option<(u32, u32)> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: all-zero is a valid passwd; getpwnam_r fills it with pointers
    // into `buf`, which outlives the read of the two numbers.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the size given.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
}

/// A throwaway system account, created for one test (root only) and removed
/// when dropped. Declare it before the homes and processes that use it, so
/// that they are gone by the time it is removed.
pub struct TempUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// How often `useradd`/`userdel` are tried: concurrent tests contend for the
/// lock on /etc/passwd.
const ACCOUNT_ATTEMPTS: u32 = 40;

fn account_tool(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from(name)
    }
}

impl TempUser {
    /// Creates `outboxd-t<random>`. Fails (with the reason, for [`skip`])
    /// when not root or when the account cannot be created.
    pub fn create() -> Result<TempUser, String> {
        if !is_root() {
            return Err("needs root to create a throwaway account".into());
        }
        let mut last = String::new();
        for attempt in 0..ACCOUNT_ATTEMPTS {
            let random = uuid::Uuid::new_v4().simple().to_string();
            let name = format!("outboxd-t{}", &random[..8]);
            let output = Command::new(account_tool("useradd"))
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    &name,
                ])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("could not run useradd: {e}"))?;
            if output.status.success() {
                let (uid, gid) = account(&name)
                    .ok_or_else(|| format!("useradd made {name} but it cannot be looked up"))?;
                return Ok(TempUser { name, uid, gid });
            }
            last = String::from_utf8_lossy(&output.stderr).trim().to_string();
            std::thread::sleep(Duration::from_millis(25 * u64::from(attempt.min(8) + 1)));
        }
        Err(format!(
            "useradd failed {ACCOUNT_ATTEMPTS} times; last: {last}"
        ))
    }

    /// `program` to be run as this account (no supplementary groups; std
    /// clears them when root sets the uid), from `/`, with `HOME=/`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir("/")
            .env("HOME", "/")
            .uid(self.uid)
            .gid(self.gid);
        command
    }

    /// Gives `path` itself (not a symlink's target) to this account, as if
    /// the account had made it.
    pub fn owns(&self, path: &Path) {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("lchown {}: {e}", path.display()));
    }

    /// Live processes running as this account.
    fn processes(&self) -> Vec<i32> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
                continue;
            };
            let uid = status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|u| u.parse::<u32>().ok());
            if uid == Some(self.uid) && outboxd::process::alive(pid) {
                found.push(pid);
            }
        }
        found
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        // Whatever the test started as this account and left running (it
        // should have stopped it already) would keep userdel from working.
        for pid in self.processes() {
            // SAFETY: a plain signal to a process of this test's own account.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for attempt in 0..ACCOUNT_ATTEMPTS {
            let done = Command::new(account_tool("userdel"))
                .arg(&self.name)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if done || account(&self.name).is_none() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25 * u64::from(attempt.min(8) + 1)));
        }
        let _ = writeln!(
            std::io::stderr(),
            "warning: could not remove the throwaway account {}",
            self.name
        );
    }
}

/// A throwaway group, removed when dropped.
pub struct TempGroup {
    pub name: String,
    pub gid: u32,
}

impl TempGroup {
    pub fn create() -> Result<TempGroup, String> {
        let name = format!(
            "outboxd-g{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        for _ in 0..40 {
            let made = Command::new("groupadd").arg("--system").arg(&name).output();
            if made.as_ref().is_ok_and(|o| o.status.success()) {
                let gid = outboxd::account::group_id(&name)
                    .ok()
                    .flatten()
                    .ok_or("groupadd made a group that cannot be looked up")?;
                return Ok(TempGroup { name, gid });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("groupadd failed".into())
    }

    pub fn add(&self, user: &TempUser) {
        for _ in 0..40 {
            let added = Command::new("usermod")
                .args(["-aG", &self.name, &user.name])
                .output();
            if added.is_ok_and(|o| o.status.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("usermod -aG {} {} failed", self.name, user.name);
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        for _ in 0..40 {
            if Command::new("groupdel")
                .arg(&self.name)
                .output()
                .is_ok_and(|o| o.status.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
