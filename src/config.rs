//! The daemon's configuration: defaults, overlaid by `config.toml` in the
//! home, overlaid by command-line flags.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, IoContext, Result};
use crate::paths::Paths;

/// How long a control connection may stay silent before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How many control connections are served at once. When more arrive, the
/// oldest connection waiting for a request is closed to make room.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;

/// Settings that may come from `config.toml` or the command line. Every field
/// is optional: an unset field keeps the value from the layer below.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Seconds a control connection may stay silent.
    pub idle_timeout_secs: Option<f64>,
    /// The most control connections served at once.
    pub max_connections: Option<usize>,
    /// The directory holding the PostgreSQL binaries to use.
    pub pg_bin: Option<PathBuf>,
    /// A TCP port on 127.0.0.1 for PostgreSQL; without it, only its Unix socket.
    pub pg_port: Option<u16>,
    /// The account to run as when started as root.
    pub user: Option<String>,
    /// Use this existing PostgreSQL instead of the embedded one.
    pub database_url: Option<String>,
}

impl Settings {
    /// `self`, with the fields that `over` sets replaced.
    pub fn overlay(self, over: Settings) -> Settings {
        Settings {
            idle_timeout_secs: over.idle_timeout_secs.or(self.idle_timeout_secs),
            max_connections: over.max_connections.or(self.max_connections),
            pg_bin: over.pg_bin.or(self.pg_bin),
            pg_port: over.pg_port.or(self.pg_port),
            user: over.user.or(self.user),
            database_url: over.database_url.or(self.database_url),
        }
    }
}

/// The daemon's whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub paths: Paths,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// The PostgreSQL binaries asked for, if any (else they are searched for).
    pub pg_bin: Option<PathBuf>,
    /// The TCP port PostgreSQL listens on (loopback), if any.
    pub pg_port: Option<u16>,
    /// The account to run as when started as root, if named.
    pub user: Option<String>,
    /// An external PostgreSQL to use instead of the embedded one.
    pub database_url: Option<String>,
    /// The command-line settings, kept so that a reload applies them again.
    pub flags: Settings,
}

/// The port that names PostgreSQL's Unix socket when no TCP port is set.
pub const DEFAULT_PG_PORT: u16 = 5432;

impl Config {
    /// The port PostgreSQL uses: the TCP port if set, else the default (which
    /// then only names the socket file).
    pub fn pg_port(&self) -> u16 {
        self.pg_port.unwrap_or(DEFAULT_PG_PORT)
    }
}

impl Config {
    /// Reads `config.toml` again, with the same command-line flags on top.
    pub fn reload(&self) -> Result<Config> {
        Config::load(self.paths.clone(), self.flags.clone())
    }

    /// Reads `config.toml` (if present) and overlays `flags` on it.
    pub fn load(paths: Paths, flags: Settings) -> Result<Config> {
        let file = read_file(&paths)?;
        let settings = file.overlay(flags.clone());
        let invalid = |message: String| Error::Config {
            path: paths.config_file.clone(),
            message,
        };
        let idle_timeout = match settings.idle_timeout_secs {
            None => DEFAULT_IDLE_TIMEOUT,
            Some(secs) => Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    invalid(format!("idle_timeout_secs must be positive, not {secs}"))
                })?,
        };
        let max_connections = match settings.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(0) => return Err(invalid("max_connections must be at least 1".into())),
            Some(n) => n,
        };
        if settings.pg_port == Some(0) {
            return Err(invalid(
                "pg_port must be a port number from 1 to 65535".into(),
            ));
        }
        if let Some(url) = &settings.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database_url must start with postgres:// or postgresql://".into(),
            ));
        }
        Ok(Config {
            paths,
            idle_timeout,
            max_connections,
            pg_bin: settings.pg_bin,
            pg_port: settings.pg_port,
            user: settings.user,
            database_url: settings.database_url,
            flags,
        })
    }
}

fn read_file(paths: &Paths) -> Result<Settings> {
    let path = &paths.config_file;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Settings::default()),
        Err(e) => return Err(e).at("read configuration", path),
    };
    toml::from_str(&text).map_err(|e| Error::Config {
        path: path.clone(),
        message: e.to_string().trim_end().replace('\n', " "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home_with(config: Option<&str>) -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::for_home(dir.path());
        if let Some(text) = config {
            std::fs::write(&paths.config_file, text).unwrap();
        }
        (dir, paths)
    }

    #[test]
    fn defaults_then_file_then_flags() {
        let (_dir, paths) = home_with(None);
        let config = Config::load(paths, Settings::default()).unwrap();
        assert_eq!(config.idle_timeout, DEFAULT_IDLE_TIMEOUT);

        let (_dir, paths) = home_with(Some("idle_timeout_secs = 2.5\nmax_connections = 4\n"));
        let flags = Settings {
            max_connections: Some(9),
            ..Settings::default()
        };
        let config = Config::load(paths, flags).unwrap();
        assert_eq!(config.idle_timeout, Duration::from_millis(2500));
        assert_eq!(config.max_connections, 9);
    }

    #[test]
    fn typos_and_bad_values_name_the_file() {
        let (_dir, paths) = home_with(Some("idle_timeout = 3\n"));
        let err = Config::load(paths.clone(), Settings::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.toml") && err.contains("idle_timeout"),
            "{err}"
        );

        let (_dir, paths) = home_with(Some("idle_timeout_secs = -1\n"));
        let err = Config::load(paths, Settings::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be positive"), "{err}");
    }
}
