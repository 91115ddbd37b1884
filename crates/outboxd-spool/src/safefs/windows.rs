//! Opening files on Windows: `FILE_FLAG_OPEN_REPARSE_POINT` opens a
//! symbolic link or junction itself, which is then refused. Owners and
//! permission bits are not compared: a home under `%LOCALAPPDATA%` (or
//! `%ProgramData%` for the service) is kept private by the ACL it inherits,
//! and every file counts as the current account's.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::windows::fs::OpenOptionsExt;
use std::path::Path;

use windows_sys::Win32::Foundation::ERROR_CANT_RESOLVE_FILENAME;
use windows_sys::Win32::Storage::FileSystem::FILE_FLAG_OPEN_REPARSE_POINT;

use super::Mode;

/// Opens `path`; a symbolic link or junction at its last component is
/// opened as itself and refused.
pub fn open_nofollow(path: &Path, mode: Mode) -> io::Result<File> {
    let mut options = OpenOptions::new();
    match mode {
        Mode::Read => options.read(true),
        Mode::ReadWrite { .. } => options.read(true).write(true).create(true),
        Mode::Append { .. } => options.append(true).create(true),
        Mode::CreateNew { .. } => options.write(true).create_new(true),
    };
    options.custom_flags(FILE_FLAG_OPEN_REPARSE_POINT);
    let file = options.open(path)?;
    if file.metadata()?.file_type().is_symlink() {
        return Err(io::Error::from_raw_os_error(
            ERROR_CANT_RESOLVE_FILENAME as i32,
        ));
    }
    Ok(file)
}

/// Whether an open failed because the last component is a link.
pub fn is_link_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_CANT_RESOLVE_FILENAME as i32)
}

/// Files opened here always block.
pub fn set_blocking(_file: &File) -> io::Result<()> {
    Ok(())
}

/// Every file counts as the current account's (see the module's comment).
pub fn owner(_meta: &std::fs::Metadata) -> u32 {
    crate::process::euid()
}

/// Nothing comparable without unstable std: replacement goes unnoticed.
pub fn identity(_meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// NTFS journals its directories: nothing to ask.
pub fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Windows has no execute bits: every file counts.
pub fn executable_bits(_meta: &std::fs::Metadata) -> bool {
    true
}

/// Not known without unstable std.
pub fn link_count(_meta: &std::fs::Metadata) -> u64 {
    1
}

/// Left to the home's ACL.
pub fn make_owner_only(_path: &Path, _meta: &std::fs::Metadata) -> io::Result<bool> {
    Ok(false)
}

/// Left to the directory's ACL.
pub fn writable_by_others(_meta: &std::fs::Metadata) -> Option<u32> {
    None
}

/// What a file is, for messages.
pub fn kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_file() {
        "regular file"
    } else {
        "device or pipe"
    }
}
