//! Dropping root. PostgreSQL refuses to run as root, so a daemon started as
//! root with the embedded server becomes an unprivileged account before it
//! builds its async runtime: `--user NAME` (or `user` in config.toml), else
//! the home's owner when that is not root, else an existing `outboxd`
//! account, else `postgres`. It hands the home to that
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
    if outboxd::process::euid() != 0 {
        return Ok(None);
    }
    let account = match wanted {
        Some(name) => lookup(name)?
            .ok_or_else(|| refuse(&format!("there is no account named {name:?} (--user)")))?,
        // A home that already belongs to an ordinary user stays theirs:
        // handing it to another account would lock its owner out.
        None => match home_owner(paths)? {
            Some(owner) => owner,
            None => DEFAULT_ACCOUNTS
                .iter()
                .find_map(|name| lookup(name).transpose())
                .transpose()?
                .ok_or_else(|| refuse("neither an `outboxd` nor a `postgres` account exists"))?,
        },
    };
    if account.uid == 0 {
        return Err(refuse(&format!(
            "the account {:?} is root too",
            account.name
        )));
    }
    hand_over(paths, &account)?;
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

/// The account that owns the home, unless that is root (or unknown).
fn home_owner(paths: &Paths) -> Result<Option<Account>> {
    let uid = fs::metadata(&paths.home).at("inspect", &paths.home)?.uid();
    if uid == 0 {
        return Ok(None);
    }
    match account_name(uid) {
        Some(name) => lookup(&name),
        None => Ok(None),
    }
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

/// Gives the home to `account`: the whole tree the first time (or when the
/// home changes hands), afterwards only what this process created as root
/// before dropping it. Walking the data directory's thousands of files on
/// every start would be wasted work.
fn hand_over(paths: &Paths, account: &Account) -> Result<()> {
    let home = fs::symlink_metadata(&paths.home).at("inspect", &paths.home)?;
    if home.uid() != account.uid {
        hand_over_tree(&paths.home, account)?;
    }
    // The socket directory may live outside the home (long home paths).
    let made_as_root = [
        &paths.log_dir,
        &paths.log_file,
        &paths.run_dir,
        &paths.lock,
        &paths.pg_dir,
        &paths.pg_socket_dir,
    ];
    for path in made_as_root {
        if path.exists() {
            chown(path, account)?;
        }
    }
    Ok(())
}

/// Gives `path` and everything below it to `account` (symlinks themselves,
/// not their targets).
fn hand_over_tree(path: &Path, account: &Account) -> Result<()> {
    chown(path, account)?;
    if fs::symlink_metadata(path).at("inspect", path)?.is_dir() {
        for entry in fs::read_dir(path).at("read directory", path)? {
            hand_over_tree(&entry.at("read directory", path)?.path(), account)?;
        }
    }
    Ok(())
}

fn chown(path: &Path, account: &Account) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(account.uid), Some(account.gid))
        .at("change owner of", path)
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
