//! Which PostgreSQL binaries run a home's cluster. A cluster belongs to the
//! major version that made it (its `PG_VERSION`): an existing cluster only
//! ever runs on binaries of that major, and a new one takes the newest
//! major found. Shared by the daemon (at start) and `outboxctl` (`upgrade
//! postgres`, `config show`).
//!
//! The order, for an existing cluster of major M:
//! 1. `pg_bin` when configured; refused when it is not M.
//! 2. The directory recorded in `pg/binaries.json` (written by the daemon
//!    and by `upgrade postgres`), when its `postgres` is still the file
//!    recorded and of major M.
//! 3. Where packages install M (`/usr/lib/postgresql/M/bin`, …).
//! 4. Every other installed directory whose `postgres --version` is M.
//!
//! None: the start is refused before anything on disk changes, naming the
//! major needed, the majors found, and the two ways out.
//!
//! Knowing a directory's major costs a `postgres --version` (about 20 ms)
//! unless its path says it (`…/postgresql/15/bin`) or the record does: a
//! warm start runs none.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Origin};
use crate::paths::Paths;
use crate::safefs::{self, Owner};

/// The binaries a cluster runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub dir: PathBuf,
    pub major: u32,
    /// Where they came from, for `status`: "configured by …", "installed",
    /// "recorded by the last start".
    pub source: String,
}

/// What to do when none were found.
#[derive(Debug)]
pub enum Missing {
    /// Nothing installed at all: download (where this build can).
    Nothing { wanted: Option<u32> },
    /// Other majors are installed, not the cluster's: refused.
    Refused(Error),
}

/// The record of the binaries a home's cluster last ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub bin_dir: PathBuf,
    pub major: u32,
    /// The identity of `bin_dir/postgres` when recorded (device, inode,
    /// size, modification time): a replaced binary is asked its version
    /// again.
    pub postgres: Identity,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

/// The largest record read.
const MAX_RECORD: u64 = 64 * 1024;

/// The major version of the home's cluster (its `PG_VERSION`), if it has one.
pub fn cluster_major(paths: &Paths) -> Option<u32> {
    major_of_data(&paths.pg_data)
}

/// The major version of the cluster in `data`, if it holds one.
pub fn major_of_data(data: &Path) -> Option<u32> {
    let path = data.join("PG_VERSION");
    let text = safefs::read_capped(&path, 64, Owner::Is(crate::process::euid())).ok()??;
    String::from_utf8_lossy(&text).trim().parse().ok()
}

/// The binaries for the home's cluster (see the module's order).
pub fn find(config: &Config) -> Result<Result<Found, Missing>, Error> {
    let paths = &config.paths;
    let wanted = cluster_major(paths);
    if let Some(dir) = &config.pg_bin {
        return configured(config, dir, wanted).map(Ok);
    }
    let Some(wanted) = wanted else {
        // A new cluster: the newest major found (the first found of it).
        return Ok(newest(installed())
            .map(|(major, dir)| Found {
                dir,
                major,
                source: "installed".into(),
            })
            .ok_or(Missing::Nothing { wanted: None }));
    };
    let found = match find_major(paths, wanted) {
        Ok(found) => return Ok(Ok(found)),
        Err(installed) => installed,
    };
    if found.is_empty() && read_record(paths).is_none() {
        return Ok(Err(Missing::Nothing {
            wanted: Some(wanted),
        }));
    }
    Ok(Err(Missing::Refused(wrong_major(paths, wanted, &found))))
}

/// The newest major of `found`, the first in search order among equals.
pub fn newest(found: Vec<(u32, PathBuf)>) -> Option<(u32, PathBuf)> {
    found.into_iter().rev().max_by_key(|(major, _)| *major)
}

/// Binaries of major `wanted` (pg_bin aside): the recorded ones, where
/// packages put that major, or any installed directory of that major.
/// Without them, what is installed (for the message that says so).
pub fn find_major(paths: &Paths, wanted: u32) -> Result<Found, Vec<(u32, PathBuf)>> {
    if let Some(record) = read_record(paths)
        && record.major == wanted
        && missing_binaries(&record.bin_dir).is_none()
        && identity(&record.bin_dir).as_ref() == Some(&record.postgres)
    {
        return Ok(Found {
            dir: record.bin_dir,
            major: wanted,
            source: "recorded by the last start".into(),
        });
    }
    let installed_dir = |dir: PathBuf| Found {
        dir,
        major: wanted,
        source: "installed".into(),
    };
    if let Some(dir) = dirs_of_major(wanted)
        .into_iter()
        .find(|dir| missing_binaries(dir).is_none())
    {
        return Ok(installed_dir(dir));
    }
    let found = installed();
    match found.iter().find(|(major, _)| *major == wanted) {
        Some((_, dir)) => Ok(installed_dir(dir.clone())),
        None => Err(found),
    }
}

/// `pg_bin` as configured, checked against the cluster's major.
fn configured(config: &Config, dir: &Path, wanted: Option<u32>) -> Result<Found, Error> {
    let origin = config.origin("pg_bin");
    let fix = match origin {
        Origin::File(_) => {
            "fix pg_bin in config.toml: it must name the bin directory of a PostgreSQL installation"
        }
        Origin::Env(_) => {
            "fix OUTBOXD_PG_BIN: it must name the bin directory of a PostgreSQL installation"
        }
        _ => "point --pg-bin at the bin directory of a PostgreSQL installation",
    };
    if let Some(problem) = missing_binaries(dir) {
        return Err(Error::problem(
            "PostgreSQL binaries",
            dir,
            format!("{problem} (set by {origin})"),
            fix,
            crate::errno::ENOENT,
        ));
    }
    let major = major_of(dir, &config.paths).map_err(|why| {
        Error::problem(
            "PostgreSQL binaries",
            dir,
            format!("{why} (set by {origin})"),
            fix,
            crate::errno::EINVAL,
        )
    })?;
    if let Some(wanted) = wanted
        && major != wanted
    {
        let others: Vec<String> = installed()
            .into_iter()
            .filter(|(m, _)| *m == wanted)
            .map(|(_, dir)| dir.display().to_string())
            .collect();
        let own = match others.first() {
            Some(dir) => format!("set pg_bin to {dir} (PostgreSQL {wanted}, installed)"),
            None => format!("install PostgreSQL {wanted} and set pg_bin to its bin directory"),
        };
        return Err(Error::problem(
            "PostgreSQL cluster",
            &config.paths.pg_data,
            format!(
                "was made by PostgreSQL {wanted}, but pg_bin (set by {origin}) is PostgreSQL \
                 {major}: a cluster runs only on its own major version; nothing was changed"
            ),
            format!(
                "{own}, or move the cluster to {major}: {}",
                upgrade_command(&config.paths, dir)
            ),
            crate::errno::EINVAL,
        ));
    }
    Ok(Found {
        dir: dir.to_path_buf(),
        major,
        source: format!("configured by {origin}"),
    })
}

/// The refusal when the cluster's major is not installed.
fn wrong_major(paths: &Paths, wanted: u32, found: &[(u32, PathBuf)]) -> Error {
    let listed: Vec<String> = found
        .iter()
        .map(|(major, dir)| format!("{major} ({})", dir.display()))
        .collect();
    let newest = found
        .iter()
        .filter(|(m, _)| *m > wanted)
        .max_by_key(|(m, _)| *m);
    let upgrade = match newest {
        Some((_, dir)) => upgrade_command(paths, dir),
        None => crate::quote::ctl(&paths.home, "upgrade postgres --to <bin directory>"),
    };
    Error::problem(
        "PostgreSQL cluster",
        &paths.pg_data,
        format!(
            "was made by PostgreSQL {wanted}, and no PostgreSQL {wanted} binaries are installed \
             (found: {}); a cluster runs only on its own major version, so outboxd did not \
             start it and changed nothing",
            if listed.is_empty() {
                "none".to_string()
            } else {
                listed.join(", ")
            }
        ),
        format!(
            "install PostgreSQL {wanted} again (Debian: apt install postgresql-{wanted}; \
             Homebrew: brew install postgresql@{wanted}) or point pg_bin at its bin directory, \
             or move the cluster to a newer major: {upgrade}"
        ),
        crate::errno::ENOENT,
    )
}

fn upgrade_command(paths: &Paths, dir: &Path) -> String {
    crate::quote::ctl(
        &paths.home,
        &format!("upgrade postgres --to {}", crate::quote::shell(dir)),
    )
}

/// Every installed binary directory with its major, in search order,
/// each directory once.
pub fn installed() -> Vec<(u32, PathBuf)> {
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut found = Vec::new();
    for dir in candidate_dirs() {
        // Once per installation: /usr/local/bin/postgres may be a link to
        // /usr/lib/postgresql/15/bin/postgres, found earlier.
        let binary = dir.join(format!("postgres{}", std::env::consts::EXE_SUFFIX));
        let key = fs::canonicalize(&binary).unwrap_or(binary);
        if seen.contains(&key) || missing_binaries(&dir).is_some() {
            continue;
        }
        seen.push(key);
        if let Some(major) = major_from_path(&dir).or_else(|| ask_version(&dir).ok()) {
            found.push((major, dir));
        }
    }
    found
}

/// The major of the binaries in `dir`: from the home's record, its path,
/// or `postgres --version`.
pub fn major_of(dir: &Path, paths: &Paths) -> Result<u32, String> {
    if let Some(record) = read_record(paths)
        && record.bin_dir == dir
        && identity(dir).as_ref() == Some(&record.postgres)
    {
        return Ok(record.major);
    }
    match major_from_path(dir) {
        Some(major) => Ok(major),
        None => ask_version(dir),
    }
}

/// `…/postgresql/15/bin`, `…/postgresql@15/bin`, `…/pgsql-15/bin`.
fn major_from_path(dir: &Path) -> Option<u32> {
    let parent = dir.parent()?;
    let name = parent.file_name()?.to_string_lossy();
    let grand = parent.parent()?.file_name()?.to_string_lossy();
    let number = if grand == "postgresql" {
        name.as_ref()
    } else {
        name.strip_prefix("postgresql@")
            .or_else(|| name.strip_prefix("pgsql-"))?
    };
    number.split('.').next()?.parse().ok()
}

/// Runs `postgres --version`: "postgres (PostgreSQL) 17.10" is 17.
fn ask_version(dir: &Path) -> Result<u32, String> {
    let binary = dir.join(format!("postgres{}", std::env::consts::EXE_SUFFIX));
    let out = std::process::Command::new(&binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("could not run {} --version: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|word| {
            let major = word.split('.').next()?;
            (word.contains('.') || word.chars().all(|c| c.is_ascii_digit()))
                .then(|| major.parse().ok())
                .flatten()
        })
        .ok_or_else(|| {
            format!(
                "{} --version did not print a version: {}",
                binary.display(),
                text.trim()
            )
        })
}

/// Where packages install the binaries of major `major`.
pub fn dirs_of_major(major: u32) -> Vec<PathBuf> {
    [
        format!("/usr/lib/postgresql/{major}/bin"),
        format!("/usr/pgsql-{major}/bin"),
        format!("/opt/homebrew/opt/postgresql@{major}/bin"),
        format!("/usr/local/opt/postgresql@{major}/bin"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

/// What is searched, for messages.
pub const SEARCHED: &str = "searched pg_config --bindir, /usr/lib/postgresql/*/bin, Homebrew, \
                            /usr/local/pgsql/bin, /usr/local/bin, /usr/bin";

/// Where installed PostgreSQL binaries are looked for, in order.
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        && out.status.success()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    for parent in [
        "/usr/lib/postgresql",
        "/opt/homebrew/opt",
        "/usr/local/opt",
        "/usr",
    ] {
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let number = name
                    .trim_start_matches("postgresql@")
                    .trim_start_matches("postgresql")
                    .trim_start_matches("pgsql-");
                let major = number.split('.').next()?.parse().ok()?;
                Some((major, entry.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        dirs.extend(versions.into_iter().map(|(_, dir)| dir));
    }
    for fixed in [
        "/opt/homebrew/opt/postgresql/bin",
        "/usr/local/pgsql/bin",
        "/usr/local/bin",
        "/usr/bin",
    ] {
        dirs.push(PathBuf::from(fixed));
    }
    dirs
}

/// What is wrong with a binary directory, or `None` when it has them all.
pub fn missing_binaries(dir: &Path) -> Option<String> {
    if !dir.is_dir() {
        return Some("does not exist or is not a directory".into());
    }
    let missing: Vec<&str> = ["postgres", "initdb", "pg_ctl"]
        .into_iter()
        .filter(|name| !has_tool(dir, name))
        .collect();
    (!missing.is_empty()).then(|| format!("lacks {}", missing.join(", ")))
}

/// Whether `dir` holds the program `name`.
pub fn has_tool(dir: &Path, name: &str) -> bool {
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
        .is_file()
}

/// The identity of `dir/postgres`, if it is there: device and inode
/// where the system has them, size and modification time everywhere.
fn identity(dir: &Path) -> Option<Identity> {
    let meta = fs::metadata(dir.join(format!("postgres{}", std::env::consts::EXE_SUFFIX))).ok()?;
    let (dev, ino) = safefs::identity(&meta).unwrap_or_default();
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    Some(Identity {
        dev,
        ino,
        size: meta.len(),
        mtime_ns,
    })
}

/// The home's record, if it has a readable one.
pub fn read_record(paths: &Paths) -> Option<Record> {
    let bytes = safefs::read_capped(
        &paths.pg_binaries,
        MAX_RECORD,
        Owner::Is(crate::process::euid()),
    )
    .ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Records that the cluster runs on `dir` (major `major`).
pub fn write_record(paths: &Paths, dir: &Path, major: u32) -> Result<(), Error> {
    let Some(postgres) = identity(dir) else {
        return Ok(());
    };
    let record = Record {
        bin_dir: dir.to_path_buf(),
        major,
        postgres,
    };
    if read_record(paths).as_ref() == Some(&record) {
        return Ok(());
    }
    let text = serde_json::to_vec_pretty(&record).expect("a record is JSON");
    safefs::replace(&paths.pg_binaries, &text, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_are_read_from_package_paths() {
        let of = |p: &str| major_from_path(Path::new(p));
        assert_eq!(of("/usr/lib/postgresql/15/bin"), Some(15));
        assert_eq!(of("/opt/homebrew/opt/postgresql@17/bin"), Some(17));
        assert_eq!(of("/usr/pgsql-16/bin"), Some(16));
        assert_eq!(of("/usr/local/pgsql/bin"), None);
        assert_eq!(of("/usr/bin"), None);
    }
}
