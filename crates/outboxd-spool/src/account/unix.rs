//! Accounts on Unix: the password and group databases through the
//! reentrant `getpw*_r`/`getgr*_r` calls (safe on any thread; rustix has
//! no wrapper for them), and `initgroups`, `setgid`, `setuid`.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::{Account, Groups};
use crate::error::{Error, Result};

/// The account named `name`, if there is one.
pub fn by_name(name: &str) -> Result<Option<Account>> {
    let c_name = CString::new(name).map_err(|_| Error::Account {
        problem: format!("{name:?} is not a valid account name"),
        fix: "name an existing account".into(),
    })?;
    lookup(|pwd, buf, len, result| {
        // SAFETY: every pointer is valid for the sizes given (see `lookup`).
        unsafe { libc::getpwnam_r(c_name.as_ptr(), pwd, buf, len, result) }
    })
    .map_err(|e| lookup_failed(name, e))
}

/// The account with `uid`, if there is one.
pub fn by_uid(uid: u32) -> Result<Option<Account>> {
    lookup(|pwd, buf, len, result| {
        // SAFETY: every pointer is valid for the sizes given (see `lookup`).
        unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) }
    })
    .map_err(|e| lookup_failed(&format!("uid {uid}"), e))
}

/// The name of the account with `uid`, or the number when it has none.
pub fn name_of(uid: u32) -> String {
    match by_uid(uid) {
        Ok(Some(account)) => account.name,
        _ => format!("uid {uid}"),
    }
}

fn lookup_failed(what: &str, e: io::Error) -> Error {
    Error::Account {
        problem: format!("could not look up the account {what}: {e}"),
        fix: "check the password database (getent passwd)".into(),
    }
}

/// Runs a `getpw*_r` call (given the record, buffer, length and result
/// pointers) with a buffer that grows on `ERANGE`.
fn lookup<F>(call: F) -> io::Result<Option<Account>>
where
    F: Fn(
        *mut libc::passwd,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut libc::passwd,
    ) -> libc::c_int,
{
    let mut size = 4096;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: passwd is plain data; all-zero is a valid value to be filled in.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = call(&mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc == crate::errno::ERANGE && size < 1 << 20 {
            size *= 4;
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: on success the strings of `pwd` point into `buf`, which is
        // alive here; they are NUL-terminated C strings (or null).
        let text = |p: *const libc::c_char| unsafe {
            if p.is_null() {
                Vec::new()
            } else {
                CStr::from_ptr(p).to_bytes().to_vec()
            }
        };
        return Ok(Some(Account {
            name: String::from_utf8_lossy(&text(pwd.pw_name)).into_owned(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            dir: PathBuf::from(OsStr::from_bytes(&text(pwd.pw_dir))),
        }));
    }
}

/// The gid of the group named `name`, if there is one.
pub fn group_id(name: &str) -> Result<Option<u32>> {
    let c_name = CString::new(name).map_err(|_| Error::Account {
        problem: format!("{name:?} is not a valid group name"),
        fix: "name an existing group".into(),
    })?;
    let mut size = 4096;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: group is plain data; all-zero is a valid value to be filled in.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the sizes given.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut group,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == crate::errno::ERANGE && size < 1 << 20 {
            size *= 4;
            continue;
        }
        if rc != 0 {
            return Err(lookup_failed(
                &format!("group {name}"),
                io::Error::from_raw_os_error(rc),
            ));
        }
        return Ok((!result.is_null()).then_some(group.gr_gid));
    }
}

/// Whether the process with these credentials is in group `gid` (its
/// primary group, or a supplementary one from `/proc/PID/status`).
pub fn process_in_group(pid: i32, gid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status.lines().any(|line| {
        (line.starts_with("Gid:") || line.starts_with("Groups:"))
            && line
                .split_whitespace()
                .skip(1)
                .any(|g| g.parse::<u32>().is_ok_and(|g| g == gid))
    })
}

/// Becomes `account` for good: supplementary groups (root's own are
/// dropped), then the group, then the user. Then checks that root cannot be regained.
///
/// Call it before any thread exists: credentials are per thread at the
/// system-call level, and only a single-threaded process changes them all.
pub fn become_account(account: &Account, groups: Groups) -> Result<()> {
    let failed = |step: &str, e: io::Error| Error::Account {
        problem: format!(
            "could not switch to the account {}: {step}: {e}",
            account.name
        ),
        fix: "run as that account yourself, or check that it exists and is not locked".into(),
    };
    let name = CString::new(account.name.as_str()).map_err(|_| Error::Account {
        problem: format!("{:?} is not a valid account name", account.name),
        fix: "name an existing account".into(),
    })?;
    let check = |rc: libc::c_int| match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    };
    // SAFETY: plain credential system calls with valid arguments, in the only
    // order that works (groups and gid need root, which setuid gives up).
    unsafe {
        match groups {
            Groups::Database => check(libc::initgroups(name.as_ptr(), account.gid as _))
                .map_err(|e| failed("initgroups", e))?,
            Groups::PrimaryOnly => {
                check(libc::setgroups(1, &account.gid)).map_err(|e| failed("setgroups", e))?
            }
        }
        check(libc::setgid(account.gid)).map_err(|e| failed("setgid", e))?;
        check(libc::setuid(account.uid)).map_err(|e| failed("setuid", e))?;
        if libc::setuid(0) == 0 || libc::geteuid() == 0 || libc::getegid() == 0 {
            return Err(failed(
                "verify",
                io::Error::other("root privileges could still be regained"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_by_name_and_uid() {
        let root = by_name("root").unwrap().expect("root exists");
        assert_eq!(root.uid, 0);
        assert_eq!(by_uid(0).unwrap().unwrap().name, "root");
        assert_eq!(by_name("no-such-account-here").unwrap(), None);
        assert!(by_name("bad\0name").is_err());
        assert_eq!(name_of(0), "root");
    }
}
