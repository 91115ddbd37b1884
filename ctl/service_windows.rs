//! `outboxctl service install|uninstall|status` on Windows: not yet
//! available. Each command says so and what to do instead; nothing is
//! written.

use std::path::{Path, PathBuf};

use outboxd::exit_code;

use crate::output::Output;

/// The system's service or the user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    System,
    User,
}

/// Whose service manager the files are for (only Unix's exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {}

impl Platform {
    pub fn parse(_name: &str) -> Option<Platform> {
        None
    }
}

/// What the command line chose.
#[expect(dead_code, reason = "no Windows service yet")]
pub struct Target {
    pub scope: Option<Scope>,
    pub platform: Option<Platform>,
    pub home: Option<PathBuf>,
}

fn unavailable(out: &Output) -> u8 {
    out.error(
        "outboxd cannot register itself as a Windows service yet; run it at logon instead \
         (for example a Task Scheduler task that runs `outboxctl start`)",
    );
    exit_code::FAILURE
}

pub fn install(_target: &Target, _dry_run: bool, _outboxd: Option<&Path>, out: &Output) -> u8 {
    unavailable(out)
}

pub fn uninstall(_target: &Target, _dry_run: bool, out: &Output) -> u8 {
    unavailable(out)
}

pub fn status(_target: &Target, out: &Output) -> u8 {
    unavailable(out)
}
