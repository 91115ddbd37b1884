//! Opening files in a home without being tricked.
//!
//! Anything in a home may have been put there to trick whoever opens it: a
//! symlink to a file elsewhere, a FIFO that blocks the reader forever, a
//! device such as `/dev/zero` that never ends, a file of another owner. Every
//! file the daemon or `outboxctl` opens in a home goes through here:
//!
//! - the last component is opened with `O_NOFOLLOW` (a symlink is refused)
//!   and `O_NONBLOCK` (a FIFO cannot block the open), relative to a
//!   directory descriptor where a directory could be swapped;
//! - the opened descriptor is checked with `fstat`, not the path: it must be
//!   a regular file (or a directory, for directories) owned by an expected
//!   uid;
//! - reads are capped.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

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
    let fd = match open_raw(None, path, mode) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound && mode == Mode::Read => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::problem(
                "file",
                path,
                "is a symbolic link",
                "outboxd never follows links inside its home: replace the link with the file itself",
                libc::ELOOP,
            ));
        }
        Err(e) => return Err(e).at(verb(mode), path),
    };
    let file = File::from(fd);
    check_file(&file, path, owner)?;
    if matches!(
        mode,
        Mode::Read | Mode::ReadWrite { .. } | Mode::Append { .. }
    ) {
        // Regular files never block: back to ordinary blocking I/O.
        set_blocking(&file).at("configure", path)?;
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
            libc::EFBIG,
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
            format!("is not a regular file (it is a {})", kind(&meta)),
            "move it away; outboxd only reads and writes regular files in its home",
            libc::EINVAL,
        ));
    }
    if !owner.accepts(meta.uid()) {
        return Err(Error::problem(
            "file",
            path,
            format!(
                "is owned by {}, not by {}",
                crate::account::name_of(meta.uid()),
                owner.describe()
            ),
            "remove it or give it back to the home's owner (chown); outboxd never uses files \
             another account could have planted",
            libc::EPERM,
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
            libc::ELOOP,
        ));
    }
    if !meta.is_dir() {
        return Err(Error::problem(
            "directory",
            path,
            format!("is not a directory (it is a {})", kind(&meta)),
            "move it away",
            libc::ENOTDIR,
        ));
    }
    if !owner.accepts(meta.uid()) {
        return Err(Error::problem(
            "directory",
            path,
            format!(
                "is owned by {}, not by {}",
                crate::account::name_of(meta.uid()),
                owner.describe()
            ),
            "give it back to the home's owner (chown) or remove it",
            libc::EPERM,
        ));
    }
    check_not_writable_by_others(path, &meta)
}

/// Refuses a directory that its group or everyone may write to: anyone who
/// can write there can replace what the daemon trusts.
pub fn check_not_writable_by_others(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Error::problem(
            "directory",
            path,
            format!("can be written by other users (mode {mode:04o})"),
            format!("run `chmod go-w {}`", crate::quote::shell(path)),
            libc::EPERM,
        ));
    }
    Ok(())
}

fn verb(mode: Mode) -> &'static str {
    match mode {
        Mode::Read => "open",
        Mode::ReadWrite { .. } | Mode::Append { .. } => "open or create",
        Mode::CreateNew { .. } => "create",
    }
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() || t.is_block_device() {
        "device"
    } else {
        "regular file"
    }
}

/// `openat(dir or AT_FDCWD, path, flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)`.
fn open_raw(dir: Option<&OwnedFd>, path: &Path, mode: Mode) -> io::Result<OwnedFd> {
    use rustix::fs::{CWD, Mode as Perm, OFlags};
    let (flags, create_mode) = match mode {
        Mode::Read => (OFlags::RDONLY, 0),
        Mode::ReadWrite { mode } => (OFlags::RDWR | OFlags::CREATE, mode),
        Mode::Append { mode } => (OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE, mode),
        Mode::CreateNew { mode } => (OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, mode),
    };
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let create_mode = Perm::from_raw_mode(create_mode as _);
    Ok(match dir {
        Some(dir) => rustix::fs::openat(dir, path, flags, create_mode)?,
        None => rustix::fs::openat(CWD, path, flags, create_mode)?,
    })
}

fn set_blocking(file: &File) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    rustix::fs::fcntl_setfl(file, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::euid;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn symlinks_fifos_devices_and_big_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let me = Owner::Is(euid());
        let target = dir.path().join("target");
        std::fs::write(&target, "secret").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = read_capped(&link, 100, me).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(open(&link, Mode::Append { mode: 0o600 }, me).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret");

        let fifo = dir.path().join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_capped(&fifo, 100, me).unwrap_err().to_string();
        assert!(err.contains("FIFO"), "{err}");

        let err = read_capped(Path::new("/dev/zero"), 100, Owner::IsOrRoot(euid()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("device"), "{err}");

        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 101]).unwrap();
        assert!(read_capped(&big, 100, me).is_err());
        assert_eq!(read_capped(&target, 100, me).unwrap().unwrap(), b"secret");
        assert_eq!(
            read_capped(&dir.path().join("none"), 100, me).unwrap(),
            None
        );
    }

    #[test]
    fn another_owner_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let other = Owner::Is(euid().wrapping_add(1));
        let err = read_capped(&file, 10, other).unwrap_err().to_string();
        assert!(err.contains("owned by"), "{err}");
    }
}
