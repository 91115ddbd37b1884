//! The error numbers the library's errors carry (`ERRNO=` in readiness
//! messages, exit statuses): the system's own on Unix, the C runtime's
//! numbering on Windows, where no system call returns them.

#[cfg(unix)]
pub use libc::{
    EACCES, EADDRINUSE, EAGAIN, EBUSY, EEXIST, EFBIG, EILSEQ, EINVAL, EIO, ELOOP, EMFILE,
    ENAMETOOLONG, ENFILE, ENOENT, ENOSPC, ENOTDIR, ENOTEMPTY, EPERM, EPROTO, ERANGE, ESRCH, ESTALE,
};

#[cfg(windows)]
mod crt {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const EIO: i32 = 5;
    pub const EAGAIN: i32 = 11;
    pub const EACCES: i32 = 13;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const ENOTDIR: i32 = 20;
    pub const EINVAL: i32 = 22;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const ERANGE: i32 = 34;
    pub const ENAMETOOLONG: i32 = 38;
    pub const ENOTEMPTY: i32 = 41;
    pub const EILSEQ: i32 = 42;
    pub const EADDRINUSE: i32 = 100;
    pub const ELOOP: i32 = 114;
    pub const EPROTO: i32 = 134;
    /// Not in the C runtime: Linux's number.
    pub const ESTALE: i32 = 116;
}
#[cfg(windows)]
pub use crt::*;
