//! Opening files in a home without being tricked.
//!
//! Anything in a home may have been put there to trick whoever opens it: a
//! symlink to a file elsewhere, a FIFO that blocks the reader forever, a
//! device such as `/dev/zero` that never ends, a file of another owner. Every
//! file the daemon or `outboxctl` opens in a home goes through here:
//!
//! - the last component is opened without following it (a symlink is
//!   refused) and without blocking (a FIFO cannot block the open);
//! - the opened file is checked, not the path: it must be a regular file
//!   (or a directory, for directories) owned by an expected uid;
//! - reads are capped.
//!
//! The neutral checks are this file; how a file is opened and what its
//! owner and mode are is each operating system's (`unix.rs`: `O_NOFOLLOW |
//! O_NONBLOCK` and `fstat`; `windows.rs`: `FILE_FLAG_OPEN_REPARSE_POINT`,
//! a reparse point refused, and owners and modes left to the home's ACL).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as os;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as os;

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read only; the file must exist.
    Read,
    /// Read and write, created with `mode` if missing.
    ReadWrite { mode: u32 },
    /// Append, created with `mode` if missing.
    Append { mode: u32 },
    /// Write a new file with `mode`; fails if one exists.
    CreateNew { mode: u32 },
}

/// Who may own a file for it to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Exactly this uid.
    Is(u32),
    /// This uid or root (root's files cannot be changed by the account, so
    /// reading them tricks nobody).
    IsOrRoot(u32),
}

impl Owner {
    fn accepts(self, uid: u32) -> bool {
        match self {
            Owner::Is(want) => uid == want,
            Owner::IsOrRoot(want) => uid == want || uid == 0,
        }
    }

    fn describe(self) -> String {
        match self {
            Owner::Is(uid) => crate::account::name_of(uid),
            Owner::IsOrRoot(uid) => format!("{} or root", crate::account::name_of(uid)),
        }
    }
}

/// Opens the regular file at `path`, refusing a symlink (at the last
/// component), anything but a regular file, and another owner. `Ok(None)`
/// when it does not exist and `mode` does not create it.
pub fn open(path: &Path, mode: Mode, owner: Owner) -> Result<Option<File>> {
    let file = match os::open_nofollow(path, mode) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound && mode == Mode::Read => return Ok(None),
        Err(e) if os::is_link_refused(&e) => {
            return Err(Error::problem(
                "file",
                path,
                "is a symbolic link",
                "outboxd never follows links inside its home: replace the link with the file itself",
                crate::errno::ELOOP,
            ));
        }
        Err(e) => return Err(e).at(verb(mode), path),
    };
    check_file(&file, path, owner)?;
    if matches!(
        mode,
        Mode::Read | Mode::ReadWrite { .. } | Mode::Append { .. }
    ) {
        // Regular files never block: back to ordinary blocking I/O.
        os::set_blocking(&file).at("configure", path)?;
    }
    Ok(Some(file))
}

/// Reads the whole regular file at `path`, at most `cap` bytes (a larger
/// file is an error, not a truncation). `Ok(None)` when it does not exist.
pub fn read_capped(path: &Path, cap: u64, owner: Owner) -> Result<Option<Vec<u8>>> {
    let Some(file) = open(path, Mode::Read, owner)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .at("read", path)?;
    if bytes.len() as u64 > cap {
        return Err(Error::problem(
            "file",
            path,
            format!("is larger than {cap} bytes"),
            "this cannot be the file outboxd wrote: move it away",
            crate::errno::EFBIG,
        ));
    }
    Ok(Some(bytes))
}

/// Checks that an open descriptor is a regular file owned by `owner`.
pub fn check_file(file: &File, path: &Path, owner: Owner) -> Result<()> {
    let meta = file.metadata().at("inspect", path)?;
    if !meta.file_type().is_file() {
        return Err(Error::problem(
            "file",
            path,
            format!("is not a regular file (it is a {})", os::kind(&meta)),
            "move it away; outboxd only reads and writes regular files in its home",
            crate::errno::EINVAL,
        ));
    }
    if !owner.accepts(os::owner(&meta)) {
        return Err(Error::problem(
            "file",
            path,
            format!(
                "is owned by {}, not by {}",
                crate::account::name_of(os::owner(&meta)),
                owner.describe()
            ),
            "remove it or give it back to the home's owner (chown); outboxd never uses files \
             another account could have planted",
            crate::errno::EPERM,
        ));
    }
    Ok(())
}

/// Checks that the directory at `path` (not followed if a symlink) is a
/// real directory owned by `owner` that nobody else can write to.
pub fn check_private_dir(path: &Path, owner: Owner) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).at("inspect", path)?;
    if meta.file_type().is_symlink() {
        return Err(Error::problem(
            "directory",
            path,
            "is a symbolic link",
            "outboxd never follows links inside its home: replace it with a real directory",
            crate::errno::ELOOP,
        ));
    }
    if !meta.is_dir() {
        return Err(Error::problem(
            "directory",
            path,
            format!("is not a directory (it is a {})", os::kind(&meta)),
            "move it away",
            crate::errno::ENOTDIR,
        ));
    }
    if !owner.accepts(os::owner(&meta)) {
        return Err(Error::problem(
            "directory",
            path,
            format!(
                "is owned by {}, not by {}",
                crate::account::name_of(os::owner(&meta)),
                owner.describe()
            ),
            "give it back to the home's owner (chown) or remove it",
            crate::errno::EPERM,
        ));
    }
    check_not_writable_by_others(path, &meta)
}

/// Refuses a directory that its group or everyone may write to: anyone who
/// can write there can replace what the daemon trusts.
pub fn check_not_writable_by_others(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    if let Some(mode) = os::writable_by_others(meta) {
        return Err(Error::problem(
            "directory",
            path,
            format!("can be written by other users (mode {mode:04o})"),
            format!("run `chmod go-w {}`", crate::quote::shell(path)),
            crate::errno::EPERM,
        ));
    }
    Ok(())
}

/// The uid that owns a file, as the owner checks see it.
pub fn owner_of(meta: &std::fs::Metadata) -> u32 {
    os::owner(meta)
}

/// What names a file while it exists (device and inode on Unix); `None`
/// where the system gives nothing comparable (Windows).
pub fn identity(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    os::identity(meta)
}

/// Whether a file is a program one may run (a regular file with an
/// execute bit on Unix).
pub fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.is_file() && os::executable_bits(meta)
}

/// Makes the entries of directory `dir` durable (a rename into it), where
/// the system needs that asked (Unix: `fsync` of the directory).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    os::sync_dir(dir)
}

/// How many names (hard links) a file has (1 where unknown).
pub fn link_count(meta: &std::fs::Metadata) -> u64 {
    os::link_count(meta)
}

/// Replaces `path` whole or not at all: a new file of this account beside
/// it (0600, never through a link), synced, then renamed over it. With
/// `durable`, the directory is synced too, so the new name survives a
/// power loss (a record that later steps rely on).
pub fn replace(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    // One writer at a time (the holder of the home's lock), so one name:
    // a writer killed half-way leaves a file the next write clears.
    let fresh = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&fresh);
    let mut file = open(
        &fresh,
        Mode::CreateNew { mode: 0o600 },
        Owner::Is(crate::process::euid()),
    )?
    .expect("CreateNew creates the file");
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .at("write", &fresh)?;
    std::fs::rename(&fresh, path).at("replace", path)?;
    if durable {
        sync_dir(dir).at("sync", dir)?;
    }
    Ok(())
}

/// Creates the new file `path` with `mode` (Unix), never through a link;
/// fails if it exists.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    os::open_nofollow(path, Mode::CreateNew { mode })
}

/// Takes group and other permissions away from the regular file `path`
/// described by `meta` (Unix; a no-op where ACLs decide). Returns whether
/// anything changed.
pub fn make_owner_only(path: &Path, meta: &std::fs::Metadata) -> io::Result<bool> {
    os::make_owner_only(path, meta)
}

fn verb(mode: Mode) -> &'static str {
    match mode {
        Mode::Read => "open",
        Mode::ReadWrite { .. } | Mode::Append { .. } => "open or create",
        Mode::CreateNew { .. } => "create",
    }
}
