//! What running the embedded server asks of the operating system: how it
//! is started (a child on Unix; through `pg_ctl` on Windows, which gives it
//! the restricted token PostgreSQL insists on), where it listens (a Unix
//! socket; 127.0.0.1 on Windows), how the readiness check knows the server
//! that answers is the one just started, and how a failed start is
//! described. The interface is [`Address`], [`spawn`],
//! [`connect_and_check`] and the helpers below; each operating system
//! implements it in a file of its own (`unix.rs`, `windows.rs`).

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

/// Why a readiness check failed.
pub enum Checked {
    Auth(String),
    Impostor,
    Other(String),
}

/// How a new cluster is made.
pub enum Initdb {
    /// Through postgresql_embedded, with the environment's locale.
    #[cfg_attr(windows, expect(dead_code, reason = "Windows runs initdb itself"))]
    Embedded,
    /// `initdb` run directly, with these extra arguments.
    #[cfg_attr(unix, expect(dead_code, reason = "Unix uses postgresql_embedded"))]
    Direct(&'static [&'static str]),
}
