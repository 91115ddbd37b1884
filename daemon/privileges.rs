//! Dropping root. PostgreSQL refuses to run as root, so a daemon started as
//! root with the embedded server becomes an unprivileged account before it
//! builds its async runtime: `--user NAME` (or `user` in config.toml), else
//! an existing `outboxd` account, else `postgres`. It hands the home to that
//! account, clears supplementary groups (initgroups, setgid, setuid) and
//! checks that root cannot be regained.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use outboxd::error::{Error, IoContext, Result};
use outboxd::paths::Paths;

/// The accounts tried, in order, when none is named.
const DEFAULT_ACCOUNTS: &[&str] = &["outboxd", "postgres"];

/// An account from the password database.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Becomes `wanted` (or the first default account that exists) when running
/// as root; does nothing otherwise. Returns the account switched to.
pub fn drop_root(paths: &Paths, wanted: Option<&str>) -> Result<Option<Account>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let account = match wanted {
        Some(name) => lookup(name)?
            .ok_or_else(|| refuse(&format!("there is no account named {name:?} (--user)")))?,
        None => DEFAULT_ACCOUNTS
            .iter()
            .find_map(|name| lookup(name).transpose())
            .transpose()?
            .ok_or_else(|| refuse("neither an `outboxd` nor a `postgres` account exists"))?,
    };
    if account.uid == 0 {
        return Err(refuse(&format!(
            "the account {:?} is root too",
            account.name
        )));
    }
    hand_over(&paths.home, &account)?;
    if paths.socket_is_fallback() {
        hand_over(&paths.run_dir, &account)?;
    }
    become_account(&account).at("switch to account", Path::new(&account.name))?;
    check_access(paths, &account)?;
    Ok(Some(account))
}

fn refuse(why: &str) -> Error {
    Error::Problem {
        what: "running as root:",
        path: "PostgreSQL refuses to run as root".into(),
        problem: why.to_string(),
        fix: "create an account (useradd --system --no-create-home outboxd) or pass --user NAME, \
              or run outboxd as an ordinary user"
            .into(),
    }
}

/// Looks up an account by name.
pub fn lookup(name: &str) -> Result<Option<Account>> {
    let c_name =
        CString::new(name).map_err(|_| refuse(&format!("invalid account name {name:?}")))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the sizes given; on success `result`
    // points at `pwd`, whose strings live in `buf`.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc)).at("look up account", Path::new(name));
    }
    if result.is_null() {
        return Ok(None);
    }
    Ok(Some(Account {
        name: name.to_string(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    }))
}

/// The name of the account with `uid`, for status and logs.
pub fn account_name(uid: libc::uid_t) -> Option<String> {
    // SAFETY: getpwuid returns static storage or null; we copy the name out at once.
    unsafe {
        let pw = libc::getpwuid(uid);
        if pw.is_null() {
            return None;
        }
        Some(CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned())
    }
}

/// Gives `dir` and everything below it to `account` (symlinks themselves,
/// not their targets).
fn hand_over(dir: &Path, account: &Account) -> Result<()> {
    let meta = fs::symlink_metadata(dir).at("inspect", dir)?;
    if meta.uid() != account.uid || meta.gid() != account.gid {
        std::os::unix::fs::lchown(dir, Some(account.uid), Some(account.gid))
            .at("change owner of", dir)?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(dir).at("read directory", dir)? {
            let entry = entry.at("read directory", dir)?;
            hand_over(&entry.path(), account)?;
        }
    }
    Ok(())
}

fn become_account(account: &Account) -> io::Result<()> {
    let name = CString::new(account.name.as_str()).expect("checked at lookup");
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: plain credential syscalls with valid arguments; the order
    // (groups, gid, uid) is the only one that works.
    unsafe {
        check(libc::initgroups(name.as_ptr(), account.gid as _))?;
        check(libc::setgid(account.gid))?;
        check(libc::setuid(account.uid))?;
        if libc::setuid(0) == 0 || libc::geteuid() == 0 || libc::getegid() == 0 {
            return Err(io::Error::other("root privileges could still be regained"));
        }
    }
    Ok(())
}

/// After the switch, the account must reach its home: a parent directory
/// closed to it (say a 0700 directory of root's) makes every file unreachable.
fn check_access(paths: &Paths, account: &Account) -> Result<()> {
    let c_home =
        CString::new(paths.home.as_os_str().as_encoded_bytes()).expect("paths have no NUL");
    // SAFETY: access only reads the path.
    if unsafe { libc::access(c_home.as_ptr(), libc::R_OK | libc::W_OK | libc::X_OK) } == 0 {
        return Ok(());
    }
    Err(Error::Problem {
        what: "home directory",
        path: paths.home.clone(),
        problem: format!(
            "is not reachable by the account {:?} the daemon runs as",
            account.name
        ),
        fix:
            "let that account traverse every parent directory (chmod o+x) or choose another --home"
                .into(),
    })
}
