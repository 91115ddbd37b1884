//! The Windows side of the home's layout: the default home is
//! `%LOCALAPPDATA%\outboxd`, whose ACL (inherited from the user's profile)
//! already keeps other users out.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The home of the system service (the `LocalSystem` account's daemon).
pub const SYSTEM_HOME: &str = r"C:\ProgramData\outboxd";

/// The control endpoint: the home's named pipe.
pub fn control_socket(home: &Path, _run_dir: &Path) -> PathBuf {
    PathBuf::from(format!(r"\\.\pipe\{}", crate::win32::object_name(home)))
}

/// `%LOCALAPPDATA%\outboxd`.
pub fn default_home() -> Result<PathBuf> {
    match std::env::var_os("LOCALAPPDATA").filter(|d| !d.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir).join("outboxd")),
        None => Ok(user_home()?.join(r"AppData\Local\outboxd")),
    }
}

/// `%USERPROFILE%`.
pub fn user_home() -> Result<PathBuf> {
    std::env::var_os("USERPROFILE")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| Error::NoHome("USERPROFILE is not set".into()))
}

/// Creates a directory (and its parents) if it is missing. It inherits the
/// ACL of its parent: under `%LOCALAPPDATA%`, the user's, SYSTEM's and
/// Administrators' only.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).at("create directory", dir)
}

/// The final path of `path`. Wine cannot give it for a path over 260
/// characters (`ERROR_MORE_DATA`): the absolute path stands in for it
/// there (links inside a home are refused anyway).
pub fn canonicalize(path: &Path) -> std::io::Result<PathBuf> {
    match std::fs::canonicalize(path) {
        Err(e) if e.raw_os_error() == Some(234) => std::path::absolute(path),
        other => other,
    }
}

/// `path` without the verbatim prefix `canonicalize` gives
/// (`\\?\C:\x` is `C:\x`, `\\?\UNC\host\share` is `\\host\share`).
pub fn plain(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    if let Some(rest) = text.strip_prefix(r"\\?\UNC\") {
        return PathBuf::from(format!(r"\\{rest}"));
    }
    match text.strip_prefix(r"\\?\") {
        Some(rest) if rest.as_bytes().get(1) == Some(&b':') => PathBuf::from(rest),
        _ => path.to_path_buf(),
    }
}
