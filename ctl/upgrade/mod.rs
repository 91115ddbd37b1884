//! `outboxctl upgrade postgres`: moves the home's embedded cluster to a
//! newer PostgreSQL major while producers go on enqueuing (they write to
//! the spool; the drain waits until the daemon runs again).
//!
//! In order: recover an upgrade that was cut short; plan (the majors and
//! binaries, the method, the disk space, how long it should take);
//! stop the daemon if it runs and hold the home's lock, so that nothing
//! else starts on the home; make the new cluster in `pg/data.<new>.new` and
//! fill it (the old major's `pg_dumpall` into the new `psql`, or
//! `pg_upgrade` when the new binaries have it); compare the row counts of
//! every outbox table and `ANALYZE`; swap the directories (the old cluster
//! stays as `pg/data.<old>`); start the daemon again if it ran. Each step
//! is recorded in `pg/upgrade.json` first (see `outboxd::pgupgrade`), so a
//! crash anywhere leaves a home that starts on one cluster or the other.
//!
//! `--finalize` removes the old cluster; `--rollback` returns to it, with
//! the outbox tables drained since the move copied back.

mod copy;
mod server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outboxd::exit_code;
use outboxd::lock::PidLock;
use outboxd::paths::Paths;
use outboxd::pgbin;
use outboxd::pgupgrade::{self, Marker, Step, checkpoint};
use outboxd::safefs::{self, Owner};
use serde_json::{Value, json};

use crate::daemon::{self, CtlError};
use crate::output::Output;
use server::Server;

/// What the command was asked.
pub struct Args {
    pub to: Option<PathBuf>,
    pub dry_run: bool,
    pub finalize: bool,
    pub rollback: bool,
}

/// A conservative rate for the time estimate of a dump and restore.
const DUMP_BYTES_PER_SEC: f64 = 40e6;

pub fn run(paths: &Paths, args: Args, out: &Output) -> u8 {
    match upgrade(paths, &args, out) {
        Ok((text, json)) => {
            out.result(text, json);
            exit_code::OK
        }
        Err(err) => out.failed(&err),
    }
}

fn upgrade(paths: &Paths, args: &Args, out: &Output) -> Result<(String, Value), CtlError> {
    daemon::check_home(paths)?;
    let lib = |e| failed(paths, e);
    let uid = outboxd::process::euid();
    if let Some(done) = pgupgrade::recover(paths, uid).map_err(lib)? {
        out.progress(format!("outboxctl: {done}"));
    }
    let marker = pgupgrade::read(paths).map_err(lib)?;
    match (args.finalize, args.rollback, marker) {
        (true, true, _) => Err(CtlError::Failed(
            "--finalize and --rollback exclude each other".into(),
        )),
        (true, false, Some(marker)) => finalize(paths, &marker, args.dry_run),
        (false, true, Some(marker)) => rollback(paths, marker, args.dry_run, out),
        (true, false, None) | (false, true, None) => Err(CtlError::Failed(format!(
            "no upgrade of {} awaits --finalize or --rollback",
            paths.pg_data.display()
        ))),
        (false, false, Some(marker)) => Err(CtlError::Failed(format!(
            "the cluster was upgraded from PostgreSQL {} to {} and the old one is still kept: \
             `{}` removes it, or `{}` returns to it; then upgrade again",
            marker.from_major,
            marker.to_major,
            outboxd::quote::ctl(&paths.home, "upgrade postgres --finalize"),
            outboxd::quote::ctl(&paths.home, "upgrade postgres --rollback"),
        ))),
        (false, false, None) => forward(paths, args, out),
    }
}

/// How the data moves.
enum Method {
    DumpRestore { dumpall: PathBuf, psql: PathBuf },
    PgUpgrade { tool: PathBuf },
}

impl Method {
    fn name(&self) -> &'static str {
        match self {
            Method::DumpRestore { .. } => "dump and restore",
            Method::PgUpgrade { .. } => "pg_upgrade",
        }
    }
}

/// What an upgrade will do.
struct Plan {
    from: u32,
    to: u32,
    old_bin: PathBuf,
    new_bin: PathBuf,
    method: Method,
    data_bytes: u64,
    free_bytes: Option<u64>,
    estimate: Duration,
    warnings: Vec<String>,
}

impl Plan {
    fn text(&self, paths: &Paths) -> String {
        let mut text = format!(
            "upgrade {} from PostgreSQL {} ({}) to {} ({}) by {}\n  data      {} MB; free {} \
             (a copy needs about as much again)\n  expected  about {} s; producers go on \
             enqueuing, the drain waits\n  keeps     the old cluster as {} until --finalize",
            paths.pg_data.display(),
            self.from,
            self.old_bin.display(),
            self.to,
            self.new_bin.display(),
            self.method.name(),
            self.data_bytes / 1_000_000,
            self.free_bytes
                .map_or("unknown".to_string(), |f| format!("{} MB", f / 1_000_000)),
            self.estimate.as_secs().max(1),
            paths.pg_dir.join(format!("data.{}", self.from)).display(),
        );
        for warning in &self.warnings {
            text.push_str(&format!("\n  warning   {warning}"));
        }
        text
    }

    fn json(&self) -> Value {
        json!({
            "from_major": self.from,
            "to_major": self.to,
            "old_bin": self.old_bin,
            "new_bin": self.new_bin,
            "method": self.method.name(),
            "data_bytes": self.data_bytes,
            "free_bytes": self.free_bytes,
            "estimate_secs": self.estimate.as_secs_f64(),
            "warnings": self.warnings,
        })
    }
}

fn plan(paths: &Paths, to: Option<&Path>) -> Result<Plan, CtlError> {
    let config = crate::config::local_config(paths).map_err(|e| CtlError::from_lib(paths, e))?;
    if config.database_url.is_some() {
        return Err(CtlError::Failed(
            "this home drains into an external PostgreSQL (database_url): upgrade that server \
             with its own tools; `upgrade postgres` moves only the embedded cluster"
                .into(),
        ));
    }
    let from = pgbin::cluster_major(paths).ok_or_else(|| {
        CtlError::Failed(format!(
            "{} holds no cluster yet: there is nothing to upgrade (a new cluster takes the \
             newest major installed)",
            paths.pg_data.display()
        ))
    })?;
    // The old cluster is kept under this name until --finalize.
    let kept = paths.pg_dir.join(format!("data.{from}"));
    if std::fs::symlink_metadata(&kept).is_ok() {
        return Err(CtlError::Failed(format!(
            "{} exists, and the upgrade keeps the old cluster under that name: move it away (or \
             remove it, if it is an old copy you no longer need) and upgrade again",
            kept.display()
        )));
    }
    let configured = config.pg_bin.clone();
    let configured_major = configured
        .as_deref()
        .and_then(|dir| pgbin::major_of(dir, paths).ok());
    // The old binaries: pg_bin when it is the cluster's major, else the
    // cluster's own major wherever it is installed.
    let old_bin = match (&configured, configured_major) {
        (Some(dir), Some(major)) if major == from => dir.clone(),
        _ => pgbin::find_major(paths, from)
            .map(|found| found.dir)
            .map_err(|_| {
                CtlError::Failed(format!(
                    "the cluster is PostgreSQL {from}, and no PostgreSQL {from} binaries are \
                     installed: the upgrade starts the old cluster to read it, so install \
                     PostgreSQL {from} again (Debian: apt install postgresql-{from}) or name its \
                     bin directory with pg_bin"
                ))
            })?,
    };
    let (new_bin, to) = match to {
        Some(dir) => {
            if let Some(problem) = pgbin::missing_binaries(dir) {
                return Err(CtlError::Failed(format!(
                    "--to {}: {problem}; name the bin directory of the newer PostgreSQL",
                    dir.display()
                )));
            }
            let major = pgbin::major_of(dir, paths).map_err(CtlError::Failed)?;
            (dir.to_path_buf(), major)
        }
        None => {
            let newest = match (&configured, configured_major) {
                (Some(dir), Some(major)) if major > from => Some((major, dir.clone())),
                _ => pgbin::newest(pgbin::installed()),
            };
            match newest {
                Some((major, dir)) if major > from => (dir, major),
                _ => {
                    return Err(CtlError::Failed(format!(
                        "no PostgreSQL newer than the cluster's {from} is installed ({}): \
                         install one, or name its bin directory with --to",
                        pgbin::SEARCHED
                    )));
                }
            }
        }
    };
    if to <= from {
        return Err(CtlError::Failed(format!(
            "{} is PostgreSQL {to}, not newer than the cluster's {from}: an upgrade only moves \
             to a newer major",
            new_bin.display()
        )));
    }
    let method = if pgbin::has_tool(&new_bin, "pg_upgrade") {
        Method::PgUpgrade {
            tool: new_bin.join("pg_upgrade"),
        }
    } else {
        let psql = [&old_bin, &new_bin]
            .into_iter()
            .map(|dir| dir.join("psql"))
            .find(|psql| psql.is_file());
        match (pgbin::has_tool(&old_bin, "pg_dumpall"), psql) {
            (true, Some(psql)) => Method::DumpRestore {
                dumpall: old_bin.join("pg_dumpall"),
                psql,
            },
            _ => {
                return Err(CtlError::Failed(format!(
                    "cannot move the data: {} has no pg_upgrade, and {} lacks pg_dumpall or \
                     psql; install PostgreSQL {from}'s client tools (Debian: apt install \
                     postgresql-client-{from}) or a PostgreSQL {to} that ships pg_upgrade",
                    new_bin.display(),
                    old_bin.display()
                )));
            }
        }
    };
    let data_bytes = size_of(&paths.pg_data);
    let free_bytes = free_space(&paths.pg_dir);
    let mut warnings = Vec::new();
    if let Some(dir) = &configured
        && configured_major != Some(to)
    {
        warnings.push(format!(
            "pg_bin (set by {}) names {}: set it to {} or remove it, or the next start refuses \
             the new cluster",
            config.origin("pg_bin"),
            dir.display(),
            new_bin.display()
        ));
    }
    if let Some(free) = free_bytes
        && free < data_bytes + data_bytes / 10 + (64 << 20)
    {
        return Err(CtlError::Failed(format!(
            "{} has {} MB free, and the new cluster needs about {} MB (the old one stays until \
             --finalize): free some space first",
            paths.pg_dir.display(),
            free / 1_000_000,
            (data_bytes + data_bytes / 10) / 1_000_000
        )));
    }
    let estimate = match method {
        Method::DumpRestore { .. } => {
            Duration::from_secs_f64(2.0 + data_bytes as f64 / DUMP_BYTES_PER_SEC)
        }
        Method::PgUpgrade { .. } => {
            Duration::from_secs_f64(5.0 + data_bytes as f64 / (4.0 * DUMP_BYTES_PER_SEC))
        }
    };
    Ok(Plan {
        from,
        to,
        old_bin,
        new_bin,
        method,
        data_bytes,
        free_bytes,
        estimate,
        warnings,
    })
}

fn forward(paths: &Paths, args: &Args, out: &Output) -> Result<(String, Value), CtlError> {
    let plan = plan(paths, args.to.as_deref())?;
    if args.dry_run {
        return Ok((
            format!("would {}", plan.text(paths)),
            json!({"dry_run": true, "plan": plan.json()}),
        ));
    }
    out.progress(plan.text(paths));
    let started = Instant::now();
    let password = secret(paths)?;
    let old_target = spool_target(paths)?;
    let (was_running, lock) = take_home(paths, out)?;
    let mut marker = Marker {
        step: Step::Copying,
        from_major: plan.from,
        to_major: plan.to,
        old_bin: plan.old_bin.clone(),
        new_bin: plan.new_bin.clone(),
        method: plan.method.name().into(),
        started_at: outboxd::utc::unix_now(),
        new_target: None,
        old_target: old_target.clone(),
    };
    let lib = |e| failed(paths, e);
    pgupgrade::write(paths, &marker).map_err(lib)?;
    checkpoint("start");
    let filled = fill(paths, &plan, &mut marker, &password, out);
    let (moved, counts) = match filled {
        Ok(filled) => filled,
        Err(err) => {
            // Nothing was swapped: the old cluster is as it was.
            let _ = pgupgrade::remove_cluster_copy(&marker.new_dir(paths));
            let _ = pgupgrade::clear(paths);
            let still = format!(
                "the upgrade was abandoned and the cluster is still PostgreSQL {}",
                plan.from
            );
            return Err(given_up(paths, lock, was_running, out, err, &still));
        }
    };
    enter(paths, &mut marker, Step::Swapping, "swap")?;
    pgupgrade::swap_in(paths, &marker).map_err(lib)?;
    marker.step = Step::Done;
    pgupgrade::write(paths, &marker).map_err(lib)?;
    drop(lock);
    checkpoint("done");
    let restarted = restart_if(paths, was_running, out)?;
    let elapsed = started.elapsed();
    let rows: i64 = counts.iter().map(|(_, n)| n).sum();
    let text = format!(
        "upgraded {} from PostgreSQL {} to {} in {:.1} s ({moved}; {rows} outbox rows, counts \
         equal){}; the old cluster is kept in {} until `{}` (`{}` returns to it)",
        paths.pg_data.display(),
        plan.from,
        plan.to,
        elapsed.as_secs_f64(),
        if restarted {
            "; the daemon runs again"
        } else {
            ""
        },
        marker.kept_dir(paths).display(),
        outboxd::quote::ctl(&paths.home, "upgrade postgres --finalize"),
        outboxd::quote::ctl(&paths.home, "upgrade postgres --rollback"),
    );
    for warning in &plan.warnings {
        out.warn(warning);
    }
    Ok((
        text,
        json!({
            "upgraded": true,
            "plan": plan.json(),
            "elapsed_secs": elapsed.as_secs_f64(),
            "counts": counts.iter().map(|(t, n)| (t.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "kept": marker.kept_dir(paths),
            "daemon_restarted": restarted,
        }),
    ))
}

/// Makes the new cluster in `pg/data.<new>.new`, fills it, and checks it:
/// the same row count in every outbox table, then `ANALYZE`. Records in
/// `marker` the database the spool will drain into. Returns what moved
/// and the counts.
fn fill(
    paths: &Paths,
    plan: &Plan,
    marker: &mut Marker,
    password: &str,
    out: &Output,
) -> Result<(String, Vec<(String, i64)>), CtlError> {
    let lib = |e| failed(paths, e);
    let log = paths.log_dir.join("upgrade.log");
    let scratch = pgupgrade::scratch_prefix(paths);
    let new_dir = marker.new_dir(paths);
    pgupgrade::remove_cluster_copy(&new_dir).map_err(lib)?;
    let database = database_of(marker.old_target.as_deref());
    out.progress(format!(
        "starting PostgreSQL {} on the old cluster",
        plan.from
    ));
    let old = Server::start(
        &plan.old_bin,
        plan.from,
        &paths.pg_data,
        password,
        &log,
        &scratch,
    )?;
    let before = copy::outbox_counts(&old, &database)?;
    let (encoding, collate, ctype) = copy::locale(&old)?;
    checkpoint("initdb");
    out.progress(format!("making the PostgreSQL {} cluster", plan.to));
    initdb(
        &plan.new_bin,
        &new_dir,
        paths,
        &encoding,
        &collate,
        &ctype,
        &log,
    )?;
    for file in ["pg_hba.conf", "pg_ident.conf"] {
        copy_file(&paths.pg_data.join(file), &new_dir.join(file))?;
    }
    checkpoint("copy");
    let (moved, old) = match &plan.method {
        Method::DumpRestore { dumpall, psql } => {
            let new = Server::start(&plan.new_bin, plan.to, &new_dir, password, &log, &scratch)?;
            out.progress(format!(
                "copying with {} into {}",
                dumpall.display(),
                psql.display()
            ));
            let bytes = copy::dump_and_restore(&old, &new, dumpall, psql, &log)?;
            new.stop()?;
            (
                format!("{} MB dumped and restored", bytes / 1_000_000),
                Some(old),
            )
        }
        Method::PgUpgrade { tool } => {
            old.stop()?;
            out.progress(format!("copying with {}", tool.display()));
            let clusters = copy::Clusters {
                old_bin: &plan.old_bin,
                new_bin: &plan.new_bin,
                old_data: &paths.pg_data,
                new_data: &new_dir,
            };
            let mode = copy::pg_upgrade(tool, clusters, password, &log, &scratch)?;
            (format!("pg_upgrade {mode}"), None)
        }
    };
    checkpoint("verify");
    out.progress("comparing row counts and analyzing");
    let new = Server::start(&plan.new_bin, plan.to, &new_dir, password, &log, &scratch)?;
    let after = copy::outbox_counts(&new, &database)?;
    if before != after {
        return Err(CtlError::Failed(format!(
            "the copy does not match: outbox tables before {before:?}, after {after:?}; see {}",
            log.display()
        )));
    }
    copy::analyze(&new)?;
    marker.new_target = marker
        .old_target
        .as_ref()
        .map(|_| copy::target(&new, &database))
        .transpose()?;
    new.stop()?;
    if let Some(old) = old {
        old.stop()?;
    }
    Ok((moved, after))
}

fn finalize(paths: &Paths, marker: &Marker, dry_run: bool) -> Result<(String, Value), CtlError> {
    let kept = marker.kept_dir(paths);
    if dry_run {
        return Ok((
            format!(
                "would remove {} (PostgreSQL {})",
                kept.display(),
                marker.from_major
            ),
            json!({"dry_run": true, "remove": kept}),
        ));
    }
    let lib = |e| failed(paths, e);
    pgupgrade::remove_cluster_copy(&kept).map_err(lib)?;
    pgupgrade::clear(paths).map_err(lib)?;
    Ok((
        format!(
            "removed {}: the upgrade to PostgreSQL {} is final",
            kept.display(),
            marker.to_major
        ),
        json!({"finalized": true, "removed": kept}),
    ))
}

fn rollback(
    paths: &Paths,
    mut marker: Marker,
    dry_run: bool,
    out: &Output,
) -> Result<(String, Value), CtlError> {
    let kept = marker.kept_dir(paths);
    if pgbin::major_of_data(&kept) != Some(marker.from_major) {
        return Err(CtlError::Failed(format!(
            "{} does not hold the PostgreSQL {} cluster: nothing to return to",
            kept.display(),
            marker.from_major
        )));
    }
    if dry_run {
        return Ok((
            format!(
                "would return {} to PostgreSQL {} ({}), copying the outbox tables drained since \
                 the upgrade back, and remove the PostgreSQL {} cluster",
                paths.pg_data.display(),
                marker.from_major,
                kept.display(),
                marker.to_major
            ),
            json!({"dry_run": true, "rollback_to": kept}),
        ));
    }
    let lib = |e| failed(paths, e);
    let password = secret(paths)?;
    let (was_running, lock) = take_home(paths, out)?;
    enter(paths, &mut marker, Step::RollingBackCopy, "rollback-copy")?;
    let rows = match copy_back(paths, &marker, &password, out) {
        Ok(rows) => rows,
        Err(err) => {
            // The old cluster's transaction did not commit: stay on the new.
            marker.step = Step::Done;
            let _ = pgupgrade::write(paths, &marker);
            let still = format!(
                "the rollback was abandoned and the cluster is still PostgreSQL {}",
                marker.to_major
            );
            return Err(given_up(paths, lock, was_running, out, err, &still));
        }
    };
    enter(paths, &mut marker, Step::RollingBackSwap, "rollback-swap")?;
    pgupgrade::swap_back(paths, &marker).map_err(lib)?;
    pgupgrade::clear(paths).map_err(lib)?;
    drop(lock);
    let restarted = restart_if(paths, was_running, out)?;
    Ok((
        format!(
            "returned {} to PostgreSQL {} ({rows} outbox rows copied back){}; the PostgreSQL {} \
             cluster was removed",
            paths.pg_data.display(),
            marker.from_major,
            if restarted {
                "; the daemon runs again"
            } else {
                ""
            },
            marker.to_major
        ),
        json!({"rolled_back": true, "rows_copied_back": rows, "daemon_restarted": restarted}),
    ))
}

/// A failure of the upgrade's own files (the record, the clusters'
/// directories): what failed and what to do, never "untrusted".
/// Records that the upgrade enters `step` (in `pg/upgrade.json`, which a
/// recovery after a crash reads), then passes the test hook `at`.
fn enter(paths: &Paths, marker: &mut Marker, step: Step, at: &str) -> Result<(), CtlError> {
    marker.step = step;
    pgupgrade::write(paths, marker).map_err(|e| failed(paths, e))?;
    checkpoint(at);
    Ok(())
}

fn failed(paths: &Paths, e: outboxd::Error) -> CtlError {
    match e.is_permission_denied() {
        true => CtlError::from_lib(paths, e),
        false => CtlError::Failed(e.to_string()),
    }
}

/// `--rollback`'s copy: both clusters' servers, and the outbox tables of
/// the new one copied back into the old one in one transaction.
fn copy_back(
    paths: &Paths,
    marker: &Marker,
    password: &str,
    out: &Output,
) -> Result<u64, CtlError> {
    let log = paths.log_dir.join("upgrade.log");
    let scratch = pgupgrade::scratch_prefix(paths);
    out.progress(format!(
        "copying the outbox tables back into PostgreSQL {}",
        marker.from_major
    ));
    let new = Server::start(
        &marker.new_bin,
        marker.to_major,
        &paths.pg_data,
        password,
        &log,
        &scratch,
    )?;
    let old = Server::start(
        &marker.old_bin,
        marker.from_major,
        &marker.kept_dir(paths),
        password,
        &log,
        &scratch,
    )?;
    let rows = copy::carry_back(&new, &old, &database_of(marker.old_target.as_deref()))?;
    new.stop()?;
    old.stop()?;
    Ok(rows)
}

/// A step before the swap failed and was undone: releases the home,
/// starts the daemon again if it ran, and says so.
fn given_up(
    paths: &Paths,
    lock: PidLock,
    was_running: bool,
    out: &Output,
    err: CtlError,
    still: &str,
) -> CtlError {
    drop(lock);
    let again = match restart_if(paths, was_running, out) {
        Ok(true) => "; the daemon runs again",
        Ok(false) => "",
        Err(_) => "; the daemon could not be started again (see `outboxctl status`)",
    };
    CtlError::Failed(format!("{err}; {still}{again}"))
}

/// Stops the daemon if it runs and takes the home's lock, so that no
/// daemon starts on the home while its cluster moves. Returns whether a
/// daemon ran.
fn take_home(paths: &Paths, out: &Output) -> Result<(bool, PidLock), CtlError> {
    let holder = match daemon::inspect_lock(paths)? {
        outboxd::lock::LockState::Held { pid, .. } => Some(pid),
        _ => None,
    };
    // A daemon its service manager runs is stopped and started by it: one
    // started here would run outside the unit, which would then fail.
    if let Some(unit) = holder.and_then(service_unit) {
        return Err(CtlError::Failed(format!(
            "outboxd runs as the systemd service {unit}: stop it with `systemctl{} stop {unit}` \
             (producers go on enqueuing), upgrade, then `systemctl{} start {unit}`",
            if unit_is_user(holder) { " --user" } else { "" },
            if unit_is_user(holder) { " --user" } else { "" },
        )));
    }
    let was_running = holder.is_some();
    if was_running {
        out.progress("stopping the daemon (producers go on enqueuing into the spool)");
        crate::stop::stop(paths, None)?;
    }
    let lock = PidLock::acquire(paths).map_err(|e| CtlError::from_lib(paths, e))?;
    Ok((was_running, lock))
}

/// The systemd service unit whose cgroup holds `pid` (Linux), if any.
fn service_unit(pid: i32) -> Option<String> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    unit_of(&cgroup)
}

/// The outboxd service unit of a process's cgroup path (the units
/// `outboxctl service install` writes), unless the process sits in a scope
/// (a login session) or in another service (cron, a CI runner) that
/// started it with `outboxctl start`.
fn unit_of(cgroup: &str) -> Option<String> {
    // systemd's own hierarchy under cgroup v1, else the unified one (v2).
    let path = cgroup
        .lines()
        .find_map(|line| line.split_once(":name=systemd:").map(|(_, path)| path))
        .or_else(|| cgroup.lines().find_map(|line| line.strip_prefix("0::")))?;
    let last = path.trim().rsplit('/').next()?;
    (last.ends_with(".service") && last.starts_with("outboxd")).then(|| last.to_string())
}

/// Whether `pid` runs under a user's service manager.
fn unit_is_user(pid: Option<i32>) -> bool {
    pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
        .is_some_and(|cgroup| cgroup.contains("/user@"))
}

fn restart_if(paths: &Paths, was_running: bool, out: &Output) -> Result<bool, CtlError> {
    if !was_running {
        return Ok(false);
    }
    out.progress("starting the daemon again");
    crate::start::start(paths, None, out)?;
    Ok(true)
}

/// initdb for the new cluster: the old one's superuser and password, its
/// encoding and locale (pg_upgrade requires them, and a dump's databases
/// expect them).
fn initdb(
    bin: &Path,
    data: &Path,
    paths: &Paths,
    encoding: &str,
    collate: &str,
    ctype: &str,
    log: &Path,
) -> Result<(), CtlError> {
    let out = std::process::Command::new(bin.join("initdb"))
        .arg("-D")
        .arg(data)
        .args(["-U", "postgres", "-A", "scram-sha-256", "-E", encoding])
        .arg(format!("--lc-collate={collate}"))
        .arg(format!("--lc-ctype={ctype}"))
        .arg("--pwfile")
        .arg(&paths.pg_secret)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            CtlError::Failed(format!(
                "could not run {}: {e}",
                bin.join("initdb").display()
            ))
        })?;
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut file| {
            use std::io::Write;
            file.write_all(&out.stdout)?;
            file.write_all(&out.stderr)
        });
    if !out.status.success() {
        return Err(CtlError::Failed(format!(
            "initdb of the new cluster {} failed ({}): {}",
            data.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> Result<(), CtlError> {
    std::fs::copy(from, to).map(|_| ()).map_err(|e| {
        CtlError::Failed(format!(
            "could not copy {} to {}: {e}",
            from.display(),
            to.display()
        ))
    })
}

fn secret(paths: &Paths) -> Result<String, CtlError> {
    let bytes = safefs::read_capped(&paths.pg_secret, 4096, Owner::Is(outboxd::process::euid()))
        .map_err(|e| CtlError::from_lib(paths, e))?
        .ok_or_else(|| {
            CtlError::Failed(format!(
                "{} is missing: the cluster's password is needed to move it",
                paths.pg_secret.display()
            ))
        })?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_string())
}

/// The database the spool drains into, as its record names it.
fn spool_target(paths: &Paths) -> Result<Option<String>, CtlError> {
    if !paths.spool.exists() {
        return Ok(None);
    }
    let mut spool = outboxd::spool::Spool::open_with(paths, outboxd::spool::Options::default())
        .map_err(|e| CtlError::from_spool(paths, e))?;
    spool.target().map_err(|e| CtlError::from_spool(paths, e))
}

/// `database D` of a spool's record; the embedded default otherwise.
fn database_of(target: Option<&str>) -> String {
    target
        .and_then(|t| t.rsplit_once("database "))
        .map_or("postgres".to_string(), |(_, d)| d.to_string())
}

/// The bytes of the files under `dir` (links not followed).
fn size_of(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) if meta.is_file() => total += meta.len(),
                _ => {}
            }
        }
    }
    total
}

fn free_space(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail * stat.f_frsize)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_service_is_told_from_a_session_by_its_cgroup() {
        let of = super::unit_of;
        assert_eq!(
            of("0::/system.slice/outboxd.service\n").as_deref(),
            Some("outboxd.service")
        );
        assert_eq!(
            of("0::/user.slice/user-1000.slice/user@1000.service/app.slice/outboxd.service\n")
                .as_deref(),
            Some("outboxd.service")
        );
        assert_eq!(of("0::/user.slice/user-1000.slice/session-4.scope\n"), None);
        assert_eq!(
            of("0::/user.slice/user-1000.slice/user@1000.service\n"),
            None
        );
        assert_eq!(of("0::/\n"), None);
        assert_eq!(
            of("0::/system.slice/cron.service\n"),
            None,
            "started from cron"
        );
        assert_eq!(
            of("9:name=systemd:/system.slice/outboxd.service\n0::/\n").as_deref(),
            Some("outboxd.service"),
            "under cgroup v1, systemd's own hierarchy"
        );
    }
}
