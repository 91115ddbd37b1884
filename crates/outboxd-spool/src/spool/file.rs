//! The spool's file: where it is, making it (private, one link, never
//! through a link), and the checks before SQLite opens it.

use super::*;

/// Returns the home's paths under its canonical name (creating the home
/// when it is missing and `create` is set, or it is the default home):
/// `SQLITE_OPEN_NOFOLLOW` refuses a symbolic link anywhere in the path,
/// and the nudge socket must be derived as the daemon derives it (from the
/// canonical home).
pub(super) fn resolve_home(paths: &Paths, create: bool) -> Result<Paths> {
    let missing = fs::symlink_metadata(&paths.home)
        .is_err_and(|error| error.kind() == io::ErrorKind::NotFound);
    if missing {
        let default = paths::default_home().is_ok_and(|home| home == paths.home);
        if !create && !default {
            return Err(Error::Problem {
                what: "home directory",
                path: paths.home.clone(),
                problem: "does not exist".into(),
                fix: "check the path (a typo?); to make a new home there, open the spool \
                      with `Options { create_home: true }` (`outboxctl enqueue \
                      --create-home`)"
                    .into(),
                errno: crate::errno::ENOENT,
            });
        }
    }
    paths::create_private_dir(&paths.home)?;
    let home = crate::paths::canonical(&paths.home).at("resolve home directory", &paths.home)?;
    if home == paths.home {
        Ok(paths.clone())
    } else {
        Ok(Paths::for_home(&home))
    }
}

/// Makes an empty `outbox.db` (0600) when nothing is at its path, for the
/// daemon before it takes the lock: while a daemon holds the lock, a
/// missing spool then always means one moved or deleted under it (see
/// [`Spool::open_with`]). Anything else at the path is left for the
/// drain to check and report.
#[doc(hidden)]
pub fn create_if_missing(paths: &Paths) -> Result<()> {
    match fs::symlink_metadata(&paths.spool) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            create_spool_file(paths, Opener::Daemon { create: true })
        }
        _ => Ok(()),
    }
}

/// Makes `outbox.db` when it is missing: mode 0600 from the start
/// (`O_CREAT | O_EXCL | O_NOFOLLOW`, whatever the umask), before SQLite
/// opens it; SQLite then gives `-wal` and `-shm` the same mode. A producer
/// refuses while a daemon holds the home's lock: the spool that daemon
/// drains was moved or deleted under it.
pub(super) fn create_spool_file(paths: &Paths, opener: Opener) -> Result<()> {
    let path = &paths.spool;
    let missing = |problem: String| Error::Problem {
        what: "spool",
        path: path.clone(),
        problem,
        fix: format!(
            "restart the daemon (`{}`) so that it drains the spool at this path, then \
             enqueue again; move a spool aside only while the daemon is stopped",
            crate::quote::ctl(&paths.home, "restart")
        ),
        errno: crate::errno::ENOENT,
    };
    match opener {
        Opener::Daemon { create: false } => {
            return Err(missing(
                "is missing: it was moved or deleted while the daemon ran".into(),
            ));
        }
        Opener::Daemon { create: true } => {}
        Opener::Producer => {
            if let Ok(crate::lock::LockState::Held { pid, .. }) = crate::lock::inspect(paths) {
                return Err(missing(format!(
                    "is missing although outboxd (pid {pid}) runs on this home: it was moved \
                     or deleted while the daemon ran, and a new spool would never be drained"
                )));
            }
        }
    }
    // Threads of one process serialise here: closing this descriptor while
    // another thread's SQLite connection has the same new file open would
    // drop that connection's POSIX locks. A thread that finds the file
    // already made waits until its maker has closed it.
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _creating = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    let created = crate::safefs::create_new(path, 0o600);
    match created {
        Ok(file) => {
            drop(file);
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error).at("create spool", path),
    }
}

/// Takes group and other permissions away from a spool file (`outbox.db`,
/// `-wal`, `-shm`) made readable by an older version or a umask: they hold
/// every producer's events. The file is this user's regular file (checked
/// with `lstat` first); it is not opened, so no SQLite lock is dropped.
pub(super) fn make_private(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).at("inspect", path),
    };
    if !meta.is_file() || crate::safefs::owner_of(&meta) != crate::process::euid() {
        return Ok(());
    }
    crate::safefs::make_owner_only(path, &meta)
        .map(drop)
        .at("make private (chmod go-rwx)", path)
}

/// Checks what is at `outbox.db` before SQLite opens it: nothing (`None`),
/// or a regular file of this user with one link, which is made private if
/// others may read it. Uses `lstat`, which opens no descriptor.
pub(super) fn check_spool_file(path: &Path) -> Result<Option<()>> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).at("inspect", path),
    };
    let problem = |problem: String, fix: String| Error::Problem {
        what: "spool",
        path: path.to_path_buf(),
        problem,
        fix,
        errno: crate::errno::EINVAL,
    };
    if meta.file_type().is_symlink() {
        return Err(problem(
            "is a symbolic link, and the spool is never opened through one".into(),
            "replace the link with the spool file itself, or point --home at the \
             directory that holds it"
                .into(),
        ));
    }
    if !meta.is_file() {
        return Err(problem(
            "is not a regular file".into(),
            "move it out of the way; a new spool is created in its place".into(),
        ));
    }
    let euid = crate::process::euid();
    let owner = crate::safefs::owner_of(&meta);
    if owner != euid {
        return Err(problem(
            format!("belongs to uid {owner}, you are uid {euid}"),
            format!("run as uid {owner}, or enqueue through the control socket"),
        ));
    }
    let links = crate::safefs::link_count(&meta);
    if links != 1 {
        return Err(problem(
            format!(
                "has {} hard links: another name (perhaps another home's spool) shares this \
                 file, and two daemons would hand out the same seqs under one source id",
                links
            ),
            "give each home its own spool: find the other name (`find / -xdev -samefile \
             PATH`), and remove the link that does not belong to this home, or copy the \
             file instead of linking it"
                .into(),
        ));
    }
    make_private(path)?;
    Ok(Some(()))
}

/// The error for a failure while first reading the file: a file that is not
/// an SQLite database, or a corrupt one, is explained as such.
pub(super) fn first_read_error(source: rusqlite::Error, op: &'static str, path: &Path) -> Error {
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => Error::Problem {
            what: "spool",
            path: path.to_path_buf(),
            problem: format!("is not an SQLite database, or is corrupt ({source})"),
            fix: "it was left untouched: move it aside (keep it if it may hold events) \
                  and a new spool is created in its place"
                .into(),
            errno: crate::errno::EILSEQ,
        },
        _ => Error::Sqlite {
            op,
            path: path.to_path_buf(),
            source,
        },
    }
}
