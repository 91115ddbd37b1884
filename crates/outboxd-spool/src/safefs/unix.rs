//! Opening files on Unix: `openat` with `O_NOFOLLOW | O_CLOEXEC |
//! O_NONBLOCK`, and the owner and mode from `fstat`.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::Mode;

/// Opens `path` without following a symlink at its last component and
/// without blocking on a FIFO.
pub fn open_nofollow(path: &Path, mode: Mode) -> io::Result<File> {
    use rustix::fs::{CWD, Mode as Perm, OFlags};
    let (flags, create_mode) = match mode {
        Mode::Read => (OFlags::RDONLY, 0),
        Mode::ReadWrite { mode } => (OFlags::RDWR | OFlags::CREATE, mode),
        Mode::Append { mode } => (OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE, mode),
        Mode::CreateNew { mode } => (OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, mode),
    };
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let create_mode = Perm::from_raw_mode(create_mode as _);
    Ok(File::from(rustix::fs::openat(
        CWD,
        path,
        flags,
        create_mode,
    )?))
}

/// Whether an open failed because the last component is a symlink.
pub fn is_link_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// Back to blocking I/O after [`open_nofollow`].
pub fn set_blocking(file: &File) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    rustix::fs::fcntl_setfl(file, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// The uid that owns a file.
pub fn owner(meta: &std::fs::Metadata) -> u32 {
    meta.uid()
}

/// The device and inode.
pub fn identity(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    Some((meta.dev(), meta.ino()))
}

/// `fsync` of the directory.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether any execute bit is set.
pub fn executable_bits(meta: &std::fs::Metadata) -> bool {
    meta.mode() & 0o111 != 0
}

/// The number of hard links.
pub fn link_count(meta: &std::fs::Metadata) -> u64 {
    meta.nlink()
}

/// `chmod go-rwx` when group or others have any bit.
pub fn make_owner_only(path: &Path, meta: &std::fs::Metadata) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    if meta.mode() & 0o077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o700))?;
    Ok(true)
}

/// The permission bits of a directory its group or others may write to;
/// `None` when only its owner may.
pub fn writable_by_others(meta: &std::fs::Metadata) -> Option<u32> {
    let mode = meta.mode() & 0o7777;
    (mode & 0o022 != 0).then_some(mode)
}

pub fn kind(meta: &std::fs::Metadata) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::super::*;
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
