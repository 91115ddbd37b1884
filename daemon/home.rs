//! The home, as the daemon's account finds it: created if missing (an
//! ordinary user's daemon), checked (a real directory of ours that no one
//! else can write to), and its private directories made and checked.

use std::fs;

use outboxd::error::{Error, IoContext, Result};
use outboxd::paths::{self, Paths};
use outboxd::safefs::{self, Owner};

/// Prepares the home of `paths` and returns its paths as it now exists
/// (canonical).
pub fn prepare(paths: &Paths) -> Result<Paths> {
    match fs::symlink_metadata(&paths.home) {
        Ok(meta) if !meta.is_dir() => {
            return Err(outboxd::privileges::not_a_directory(&paths.home, &meta));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            paths::create_private_dir(&paths.home)?;
        }
        Err(e) => return Err(e).at("inspect home directory", &paths.home),
    }
    let home = paths::canonical(&paths.home).at("resolve home directory", &paths.home)?;
    let paths = Paths::for_home(&home);
    let euid = outboxd::process::euid();
    let owner = safefs::owner_of(&fs::symlink_metadata(&home).at("inspect home directory", &home)?);
    if owner != euid {
        return Err(Error::problem(
            "home",
            &home,
            format!(
                "belongs to {}, and outboxd runs as {}",
                outboxd::account::name_of(owner),
                outboxd::account::name_of(euid)
            ),
            "run outboxd as the home's owner (or as root, which becomes the owner), or choose \
             another --home",
            outboxd::errno::EACCES,
        ));
    }
    let me = Owner::Is(euid);
    safefs::check_private_dir(&paths.home, me)?;
    check_is_a_home(&paths)?;
    for dir in [
        &paths.log_dir,
        &paths.run_dir,
        &paths.pg_dir,
        &paths.pg_socket_dir,
    ] {
        paths::create_private_dir(dir)?;
        safefs::check_private_dir(dir, me)?;
    }
    // The spool exists before the lock is taken: a producer that finds it
    // missing while the lock is held knows it was moved under the daemon.
    outboxd::spool::create_if_missing(&paths)?;
    Ok(paths)
}

/// What an outboxd home holds; a directory with other things and none of
/// these is not a home.
const HOME_ENTRIES: &[&str] = &[
    "outboxd.lock",
    "outbox.db",
    "config.toml",
    "pg",
    "log",
    "run",
];

/// Refuses a non-empty directory that is not an outboxd home (a mistyped
/// `--home` pointing at a project, say), so nothing is created in it.
fn check_is_a_home(paths: &Paths) -> Result<()> {
    let mut entries = fs::read_dir(&paths.home).at("read home directory", &paths.home)?;
    let mut other = None;
    for entry in entries.by_ref() {
        let name = entry.at("read home directory", &paths.home)?.file_name();
        if HOME_ENTRIES.iter().any(|known| name == *known) {
            return Ok(());
        }
        other.get_or_insert(name);
    }
    match other {
        None => Ok(()),
        Some(name) => Err(Error::problem(
            "home",
            &paths.home,
            format!(
                "is not empty (it holds {:?}, for one) and is not an outboxd home",
                name
            ),
            "choose a new or empty directory for --home",
            outboxd::errno::ENOTEMPTY,
        )),
    }
}

/// `user` names the account a new home goes to when root starts the daemon;
/// it cannot make the daemon run as anyone but the account it runs as now
/// (the home's owner).
pub fn check_user_setting(config: &outboxd::config::Config) -> Result<()> {
    let Some(user) = &config.user else {
        return Ok(());
    };
    let me = outboxd::account::name_of(outboxd::process::euid());
    if *user == me {
        return Ok(());
    }
    Err(Error::Config {
        origin: config.origin("user"),
        message: format!(
            "user = {user:?}, but the daemon runs as {me}, the owner of {}; the account of a \
             home is its owner's: remove the setting, or start a new home as root with --user",
            config.paths.home.display()
        ),
    })
}
