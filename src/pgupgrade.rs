//! The state of a PostgreSQL major upgrade (`outboxctl upgrade postgres`),
//! recorded in `pg/upgrade.json`, and the recovery of an upgrade that was
//! interrupted. Both the daemon (before it chooses binaries) and
//! `outboxctl upgrade` call [`recover`], so a crash or `kill -9` at any step
//! leaves a home that starts on the old cluster or on the new one.
//!
//! The directories, for an upgrade from 15 to 17:
//! - `pg/data`: the cluster in use;
//! - `pg/data.17.new`: the new cluster while it is filled;
//! - `pg/data.15`: the old cluster, kept after the move until `--finalize`;
//! - `pg/data.17.old`: the new cluster while `--rollback` removes it.
//!
//! The steps, and what recovery does from each:
//! - `copying`: the new cluster is being made and filled; `pg/data` is the
//!   old one, untouched. Recovery rolls back: it stops the upgrade's
//!   servers and removes `pg/data.17.new`.
//! - `swapping`: the copy was verified; the directories are being renamed.
//!   Recovery rolls forward (each rename is checked, so it can be redone).
//! - `done`: the home runs on the new cluster; the old one waits in
//!   `pg/data.15` for `--finalize` or `--rollback`.
//! - `rolling-back-copy`: `--rollback` copies the outbox tables drained
//!   since the move back into the old cluster, in one transaction.
//!   Recovery returns to `done` (the copy is redone by the next rollback).
//! - `rolling-back-swap`: the copy committed; the directories are being
//!   renamed back. Recovery rolls forward.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext};
use crate::paths::Paths;
use crate::safefs::{self, Owner};

/// Where an upgrade is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Copying,
    Swapping,
    Done,
    RollingBackCopy,
    RollingBackSwap,
}

impl Step {
    /// As the record spells it: `copying`, `rolling-back-swap`.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Copying => "copying",
            Step::Swapping => "swapping",
            Step::Done => "done",
            Step::RollingBackCopy => "rolling-back-copy",
            Step::RollingBackSwap => "rolling-back-swap",
        }
    }
}

/// The record of an upgrade in progress (`pg/upgrade.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub step: Step,
    pub from_major: u32,
    pub to_major: u32,
    pub old_bin: PathBuf,
    pub new_bin: PathBuf,
    /// `dump and restore` or `pg_upgrade`.
    pub method: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// The spool's recorded database before the move, and after it.
    pub old_target: Option<String>,
    pub new_target: Option<String>,
}

impl Marker {
    /// `pg/data.17.new`: the new cluster while it is made.
    pub fn new_dir(&self, paths: &Paths) -> PathBuf {
        paths.pg_dir.join(format!("data.{}.new", self.to_major))
    }

    /// `pg/data.15`: the old cluster, kept after the move.
    pub fn kept_dir(&self, paths: &Paths) -> PathBuf {
        paths.pg_dir.join(format!("data.{}", self.from_major))
    }

    /// What `status` says of an upgrade that awaits `--finalize` or
    /// `--rollback`.
    pub fn note(&self, paths: &Paths) -> String {
        format!(
            "upgraded from PostgreSQL {} to {}; the old cluster is kept in {} until `{}` (or \
             `{}` returns to it)",
            self.from_major,
            self.to_major,
            self.kept_dir(paths).display(),
            crate::quote::ctl(&paths.home, "upgrade postgres --finalize"),
            crate::quote::ctl(&paths.home, "upgrade postgres --rollback"),
        )
    }

    /// `pg/data.17.old`: the new cluster while a rollback removes it.
    pub fn discarded_dir(&self, paths: &Paths) -> PathBuf {
        paths.pg_dir.join(format!("data.{}.old", self.to_major))
    }
}

/// The largest marker read.
const MAX_MARKER: u64 = 64 * 1024;

/// The home's upgrade marker, if there is one.
pub fn read(paths: &Paths) -> Result<Option<Marker>, Error> {
    let Some(bytes) = safefs::read_capped(
        &paths.pg_upgrade,
        MAX_MARKER,
        Owner::Is(crate::process::euid()),
    )?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::problem(
            "upgrade record",
            &paths.pg_upgrade,
            format!("cannot be read: {e}"),
            "it is written only by outboxctl upgrade postgres; if you moved the cluster by hand, \
             remove the file",
            crate::errno::EINVAL,
        )
    })
}

/// Records `marker` (whole, or not at all).
pub fn write(paths: &Paths, marker: &Marker) -> Result<(), Error> {
    let text = serde_json::to_vec_pretty(marker).expect("a marker is JSON");
    safefs::replace(&paths.pg_upgrade, &text, true)
}

/// Removes the marker: no upgrade is in progress.
pub fn clear(paths: &Paths) -> Result<(), Error> {
    match fs::remove_file(&paths.pg_upgrade) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).at("remove", &paths.pg_upgrade)
        }
        _ => safefs::sync_dir(&paths.pg_dir).at("sync", &paths.pg_dir),
    }
}

/// The start of the names of the temporary directories an upgrade of this
/// home makes (its servers' sockets, pg_upgrade's work), so that the
/// recovery after a kill finds and removes them.
pub fn scratch_prefix(paths: &Paths) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in paths.home.to_string_lossy().bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("outboxd-upgrade-{hash:016x}-")
}

/// Removes this account's temporary directories of an upgrade of this
/// home that was killed (best effort).
fn clear_scratch(paths: &Paths) {
    let prefix = scratch_prefix(paths);
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let ours = entry.file_name().to_string_lossy().starts_with(&prefix)
            && fs::symlink_metadata(entry.path()).is_ok_and(|meta| {
                meta.is_dir() && safefs::owner_of(&meta) == crate::process::euid()
            });
        if ours {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Finishes or undoes an interrupted upgrade (see the module's steps).
/// Returns what it did, for the log and the terminal; `None` when there
/// was nothing to do (no upgrade, or one that is `done`).
pub fn recover(paths: &Paths, uid: u32) -> Result<Option<String>, Error> {
    let Some(mut marker) = read(paths)? else {
        return Ok(None);
    };
    clear_scratch(paths);
    match marker.step {
        Step::Done => Ok(None),
        Step::Copying => {
            stop_servers(paths, &marker, uid);
            remove_cluster_copy(&marker.new_dir(paths))?;
            clear(paths)?;
            Ok(Some(format!(
                "an interrupted upgrade from PostgreSQL {} to {} was rolled back: the cluster \
                 is still PostgreSQL {}",
                marker.from_major, marker.to_major, marker.from_major
            )))
        }
        Step::Swapping => {
            stop_servers(paths, &marker, uid);
            swap_in(paths, &marker)?;
            marker.step = Step::Done;
            write(paths, &marker)?;
            Ok(Some(format!(
                "an interrupted upgrade from PostgreSQL {} to {} was completed: the old cluster \
                 is kept in {}",
                marker.from_major,
                marker.to_major,
                marker.kept_dir(paths).display()
            )))
        }
        Step::RollingBackCopy => {
            stop_servers(paths, &marker, uid);
            marker.step = Step::Done;
            write(paths, &marker)?;
            Ok(Some(format!(
                "an interrupted rollback to PostgreSQL {} was undone: the home stays on {}",
                marker.from_major, marker.to_major
            )))
        }
        Step::RollingBackSwap => {
            stop_servers(paths, &marker, uid);
            swap_back(paths, &marker)?;
            clear(paths)?;
            Ok(Some(format!(
                "an interrupted rollback to PostgreSQL {} was completed",
                marker.from_major
            )))
        }
    }
}

/// Moves the verified new cluster into `pg/data` and keeps the old one
/// beside it; each rename is checked first, so this can be redone after a
/// crash at any point. Then the binaries record and the spool's recorded
/// database name the new cluster.
pub fn swap_in(paths: &Paths, marker: &Marker) -> Result<(), Error> {
    let (data, new, kept) = (
        &paths.pg_data,
        &marker.new_dir(paths),
        &marker.kept_dir(paths),
    );
    if crate::pgbin::major_of_data(data) == Some(marker.from_major) && new.exists() {
        fs::rename(data, kept).at("keep the old cluster as", kept)?;
        checkpoint("swap-half");
    }
    if !data.exists() && new.exists() {
        fs::rename(new, data).at("move the new cluster into", data)?;
    }
    safefs::sync_dir(&paths.pg_dir).at("sync", &paths.pg_dir)?;
    if crate::pgbin::major_of_data(data) != Some(marker.to_major) {
        return Err(broken(paths, marker));
    }
    crate::pgbin::write_record(paths, &marker.new_bin, marker.to_major)?;
    retarget(paths, marker.new_target.as_deref())
}

/// Returns the old cluster to `pg/data` and removes the new one; can be
/// redone after a crash at any point.
pub fn swap_back(paths: &Paths, marker: &Marker) -> Result<(), Error> {
    let (data, kept, discarded) = (
        &paths.pg_data,
        &marker.kept_dir(paths),
        &marker.discarded_dir(paths),
    );
    if crate::pgbin::major_of_data(data) == Some(marker.to_major) && kept.exists() {
        fs::rename(data, discarded).at("set aside the new cluster as", discarded)?;
        checkpoint("rollback-swap-half");
    }
    if !data.exists() && kept.exists() {
        fs::rename(kept, data).at("return the old cluster to", data)?;
    }
    safefs::sync_dir(&paths.pg_dir).at("sync", &paths.pg_dir)?;
    if crate::pgbin::major_of_data(data) != Some(marker.from_major) {
        return Err(broken(paths, marker));
    }
    crate::pgbin::write_record(paths, &marker.old_bin, marker.from_major)?;
    retarget(paths, marker.old_target.as_deref())?;
    remove_cluster_copy(discarded)
}

/// Sets the database the spool drains into (the drain refuses another).
fn retarget(paths: &Paths, target: Option<&str>) -> Result<(), Error> {
    if !paths.spool.exists() {
        return Ok(());
    }
    let mut spool = crate::spool::Spool::open_with(paths, crate::spool::Options::default())?;
    spool.set_target(target)
}

/// Removes a copy of a cluster that this upgrade made (never `pg/data`).
pub fn remove_cluster_copy(dir: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at("inspect", dir),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(dir).at("remove", dir),
        Ok(_) => fs::remove_file(dir).at("remove", dir),
    }
}

/// Stops the servers an interrupted upgrade may have left running on the
/// clusters it touches (each only if it is a postmaster of this account
/// on that directory).
fn stop_servers(paths: &Paths, marker: &Marker, uid: u32) {
    for dir in [
        paths.pg_data.clone(),
        marker.new_dir(paths),
        marker.kept_dir(paths),
        marker.discarded_dir(paths),
    ] {
        if dir.exists() {
            let _ = crate::postmaster::stop_orphan(&dir, uid, std::time::Duration::from_secs(30));
        }
    }
}

/// A test hook: when `OUTBOXD_TEST_UPGRADE_KILL_AT` names `step`, this
/// process dies there by SIGKILL (a real crash at a known point, for the
/// tests of recovery); `stop:<step>` freezes it there with SIGSTOP (the
/// tests of what others see during an upgrade). Nothing else reads the
/// variable.
pub fn checkpoint(step: &str) {
    let Ok(at) = std::env::var("OUTBOXD_TEST_UPGRADE_KILL_AT") else {
        return;
    };
    #[cfg(unix)]
    {
        use rustix::process::{Signal, getpid, kill_process};
        if at.strip_prefix("stop:") == Some(step) {
            let _ = kill_process(getpid(), Signal::STOP);
        }
        if at == step {
            let _ = kill_process(getpid(), Signal::KILL);
        }
    }
    if at == step {
        std::process::abort();
    }
}

fn broken(paths: &Paths, marker: &Marker) -> Error {
    Error::problem(
        "PostgreSQL cluster",
        &paths.pg_data,
        format!(
            "is not the cluster the upgrade from {} to {} expected (step {}; see {})",
            marker.from_major,
            marker.to_major,
            marker.step.as_str(),
            paths.pg_upgrade.display()
        ),
        format!(
            "look at {} and its siblings data.{}*: one of them is the cluster to keep; put it \
             at pg/data and remove {}",
            paths.pg_dir.display(),
            marker.from_major,
            paths.pg_upgrade.display()
        ),
        crate::errno::EINVAL,
    )
}
