//! Exit codes shared by the binaries and their tests.
//!
//! `outboxctl status` follows the LSB init-script conventions; the daemon
//! uses its own small set so that a supervisor can tell "already running"
//! from a real failure (`RestartPreventExitStatus=` in the systemd unit).

/// Success; for `status`: running and healthy.
pub const OK: u8 = 0;
/// A failure; for `status`: not running, but stale files are left.
pub const FAILURE: u8 = 1;
/// `status`: not running. The daemon: another daemon holds the lock.
pub const NOT_RUNNING: u8 = 3;
/// The daemon's exit code when another daemon already holds the lock.
pub const ALREADY_RUNNING: u8 = 3;
/// `status`: the state is unknown (for example permission denied).
pub const UNKNOWN: u8 = 4;
/// `status`: running but degraded (LSB's range for application use).
pub const DEGRADED: u8 = 150;
