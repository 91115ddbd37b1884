//! Dropping root on Unix: the decision and `become_account` (see the
//! module above).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::{DEFAULT_ACCOUNTS, Intent, not_a_directory};
use crate::account::{self, Account};
use crate::error::{Error, IoContext, Result};
use crate::quote;
use crate::safefs::{self, Owner};

/// As root, decides the account of `home` and becomes it; returns it. Does
/// nothing (and returns `None`) for an ordinary user, or for
/// [`Intent::Inspect`] on a home that does not exist or belongs to root.
///
/// `user` is the account asked for on the command line.
pub fn settle(
    home: &Path,
    user: Option<&str>,
    intent: Intent,
    groups: account::Groups,
) -> Result<Option<Account>> {
    if crate::process::euid() != 0 {
        return Ok(None);
    }
    // Concurrent first starts (producers, daemons) race to create and hand
    // over a new home: a decision made on a root-owned home that another
    // process handed over meanwhile is made again.
    let mut attempts = 0;
    let account = loop {
        attempts += 1;
        match decide(home, user, intent)? {
            Decision::Look => return Ok(None),
            Decision::Become(account) => break account,
            Decision::Again if attempts < 5 => continue,
            Decision::Again => {
                return Err(Error::problem(
                    "home",
                    home,
                    "keeps changing hands while outboxd decides whose it is",
                    "try again; if it goes on, stop what else works on this directory",
                    crate::errno::EAGAIN,
                ));
            }
        }
    };
    account::become_account(&account, groups)?;
    check_reachable(home, &account)?;
    Ok(Some(account))
}

/// What root does with a home.
enum Decision {
    /// Stay root and only look (nothing of an account's is there).
    Look,
    Become(Account),
    /// The home changed hands while it was decided about: decide again.
    Again,
}

fn decide(home: &Path, user: Option<&str>, intent: Intent) -> Result<Decision> {
    Ok(match open_home(home)? {
        None if intent == Intent::Inspect => Decision::Look,
        None => {
            let account = choose(user, None)?;
            create_home(home, &account)?;
            Decision::Become(account)
        }
        Some((_, meta)) if meta.uid() != 0 => Decision::Become(home_owner(home, &meta, user)?),
        Some(_) if intent == Intent::Inspect => Decision::Look,
        Some((dir, meta)) => {
            safefs::check_not_writable_by_others(home, &meta)?;
            let root_config = match root_config_user(home, &dir) {
                Ok(user) => user,
                // Not empty because another process handed it over and
                // wrote in it meanwhile: decide again.
                Err(_) if owner_now(&dir).is_some_and(|uid| uid != 0) => {
                    return Ok(Decision::Again);
                }
                Err(e) => return Err(e),
            };
            let account = choose(user, root_config.as_deref())?;
            fchown(&dir, &account).at("give the home to its account", home)?;
            Decision::Become(account)
        }
    })
}

/// The owner of an open directory now.
fn owner_now(dir: &OwnedFd) -> Option<u32> {
    fs::File::from(dir.try_clone().ok()?)
        .metadata()
        .ok()
        .map(|m| m.uid())
}

/// The account of a home an ordinary user owns; `user` may only name it.
fn home_owner(home: &Path, meta: &fs::Metadata, user: Option<&str>) -> Result<Account> {
    safefs::check_not_writable_by_others(home, meta)?;
    let owner = account::by_uid(meta.uid())?.ok_or_else(|| Error::Account {
        problem: format!(
            "the home {} belongs to uid {}, which has no account",
            home.display(),
            meta.uid()
        ),
        fix: "give the home to an existing account (chown) or choose another --home".into(),
    })?;
    if let Some(name) = user
        && name != owner.name
    {
        return Err(Error::Account {
            problem: format!(
                "the home {} belongs to {}; it cannot run as {name}",
                home.display(),
                owner.name
            ),
            fix: format!(
                "leave out --user (outboxd runs as the home's owner), or choose a home that \
                 {name} owns"
            ),
        });
    }
    Ok(owner)
}

/// The home directory, opened without following a link, with its metadata;
/// `None` when it does not exist.
fn open_home(home: &Path) -> Result<Option<(OwnedFd, fs::Metadata)>> {
    let meta = match fs::symlink_metadata(home) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at("inspect home directory", home),
    };
    if !meta.is_dir() {
        return Err(not_a_directory(home, &meta));
    }
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(home, flags, Mode::empty())
        .map_err(io::Error::from)
        .at("open home directory", home)?;
    // The descriptor, not the path, is what was decided about.
    let meta = fs::File::from(fd.try_clone().at("open home directory", home)?)
        .metadata()
        .at("inspect home directory", home)?;
    Ok(Some((fd, meta)))
}

/// For a root-owned home: `Ok(Some(user))` from root's own `config.toml`
/// when that is all the home holds, `Ok(None)` when it is empty; an error
/// when it holds anything else.
fn root_config_user(home: &Path, dir: &OwnedFd) -> Result<Option<String>> {
    let entries: Vec<String> = fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .or_else(|_| fs::read_dir(home))
        .at("read home directory", home)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match entries.as_slice() {
        [] => Ok(None),
        [only] if only == "config.toml" => {
            let path = home.join("config.toml");
            let bytes = safefs::read_capped(&path, crate::config::MAX_CONFIG_BYTES, Owner::Is(0))?
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            let settings: crate::config::Settings =
                toml::from_str(&text).map_err(|e| Error::Config {
                    origin: crate::error::Origin::File(path.clone()),
                    message: e.to_string().trim_end().to_string(),
                })?;
            Ok(settings.user)
        }
        // A chown is offered only for what is an outboxd home: advice to
        // give /etc away would be dangerous.
        names if super::is_outboxd_home(names) => Err(Error::problem(
            "home",
            home,
            "belongs to root and is not empty",
            format!(
                "outboxd never runs as root and never hands over files that already exist: \
                 this is an outboxd home, so give it to its account yourself (chown -R \
                 outboxd: {}), or choose a new or empty directory",
                quote::shell(home)
            ),
            crate::errno::EPERM,
        )),
        _ => Err(Error::problem(
            "home",
            home,
            "is not an outboxd home (it has no outbox.db, outboxd.lock or pg/) and is not empty",
            "choose a new or empty directory for the home (--home DIR); outboxd never takes \
             over a directory that holds other files",
            crate::errno::EPERM,
        )),
    }
}

/// The account for a new home: the one named, else root's configuration's,
/// else the first default account that exists.
fn choose(flag: Option<&str>, config: Option<&str>) -> Result<Account> {
    let named = flag
        .map(|name| (name, "--user"))
        .or(config.map(|name| (name, "user in config.toml")));
    let account = match named {
        Some((name, origin)) => account::by_name(name)?.ok_or_else(|| Error::Account {
            problem: format!("there is no account named {name:?} ({origin})"),
            fix: format!(
                "create it (useradd --system --user-group --no-create-home --shell \
                 /usr/sbin/nologin {name}) or name an existing account"
            ),
        })?,
        None => DEFAULT_ACCOUNTS
            .iter()
            .find_map(|name| account::by_name(name).transpose())
            .transpose()?
            .ok_or_else(|| Error::Account {
                problem: "outboxd does not run as root, and neither an `outboxd` nor a \
                          `postgres` account exists"
                    .into(),
                fix: "create one (useradd --system --user-group --no-create-home --shell \
                      /usr/sbin/nologin outboxd), pass --user NAME, or run as an ordinary user"
                    .into(),
            })?,
    };
    if account.uid == 0 {
        return Err(Error::Account {
            problem: format!("the account {:?} is root too", account.name),
            fix: "name an unprivileged account".into(),
        });
    }
    Ok(account)
}

/// Creates a new home: missing parents 0755 (so the account can reach the
/// home), the home itself 0700, given to `account`.
fn create_home(home: &Path, account: &Account) -> Result<()> {
    if let Some(parent) = home.parent() {
        // Each missing parent in turn, chmod-ed: the umask (077 in the
        // daemon) would otherwise close them to the account.
        let missing: Vec<&Path> = parent
            .ancestors()
            .take_while(|dir| fs::symlink_metadata(dir).is_err())
            .collect();
        for dir in missing.into_iter().rev() {
            match fs::DirBuilder::new().mode(0o755).create(dir) {
                Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                    .at("open to the account the parent directory", dir)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).at("create the parent directory", dir),
            }
        }
    }
    match fs::DirBuilder::new().mode(0o700).create(home) {
        Ok(()) => {}
        // A concurrent start made it: decide again from what is there.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).at("create home directory", home),
    }
    let Some((dir, meta)) = open_home(home)? else {
        return Err(io::Error::from_raw_os_error(crate::errno::ENOENT))
            .at("create home directory", home);
    };
    match meta.uid() {
        0 => {
            // Another process may have filled it meanwhile: only an empty
            // directory (or one with root's config alone) is handed over.
            root_config_user(home, &dir)?;
            fchown(&dir, account).at("give the home to its account", home)
        }
        uid if uid == account.uid => Ok(()),
        uid => Err(Error::Account {
            problem: format!(
                "the new home {} was taken by {} meanwhile",
                home.display(),
                account::name_of(uid)
            ),
            fix: "choose another --home".into(),
        }),
    }
}

fn fchown(dir: &OwnedFd, account: &Account) -> io::Result<()> {
    use rustix::fs::{Gid, Uid};
    let owner = Uid::from_raw(account.uid);
    let group = Gid::from_raw(account.gid);
    Ok(rustix::fs::fchown(dir, Some(owner), Some(group))?)
}

/// After the switch, the account must reach its home and write in it: a
/// parent directory closed to it (say a 0700 directory of root's) makes
/// every file unreachable; a home without write permission for its owner
/// takes no new file.
fn check_reachable(home: &Path, account: &Account) -> Result<()> {
    let access = |path: &Path, mode: libc::c_int| {
        CString::new(path.as_os_str().as_bytes())
            // SAFETY: access only reads the path.
            .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), mode) } == 0)
    };
    if !access(home, libc::X_OK) {
        return Err(Error::problem(
            "home directory",
            home,
            format!(
                "is not reachable by the account {} outboxd runs as",
                account.name
            ),
            "let that account traverse every parent directory (chmod o+x on each) or choose \
             another --home",
            crate::errno::EACCES,
        ));
    }
    if !access(home, libc::R_OK | libc::W_OK) {
        return Err(Error::problem(
            "home directory",
            home,
            format!("cannot be read and written by its owner {}", account.name),
            format!("run `chmod u+rwx {}`", quote::shell(home)),
            crate::errno::EACCES,
        ));
    }
    Ok(())
}
