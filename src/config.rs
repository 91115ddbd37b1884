//! The daemon's configuration: defaults, overlaid by `config.toml` in the
//! home, overlaid by command-line flags (and their environment variables).
//!
//! Every setting is defined once, as a field of [`Settings`]: its doc comment
//! is the flag's help, its name is the `config.toml` key, and clap derives
//! the flag (`idle_timeout_secs` → `--idle-timeout-secs`). Layers are merged
//! through their serialized form, so adding a setting is adding a field.
//! Every value remembers its [`Origin`], so an error names the flag, the
//! variable or the file it came from.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Origin, Result};
use crate::paths::Paths;
use crate::safefs::{self, Owner};

/// The largest `config.toml` read; a larger file is refused.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// Settings that may come from `config.toml` or the command line. Every field
/// is optional: an unset field keeps the value from the layer below.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Close control connections silent for this many seconds [default: 30]
    #[arg(long, visible_alias = "idle-timeout", value_name = "SECS")]
    pub idle_timeout_secs: Option<f64>,

    /// Most control connections served at once; beyond it the oldest is
    /// closed [default: 128, at most the open-file limit allows]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Directory of the PostgreSQL binaries [default: search installed ones,
    /// then download]
    #[arg(long, env = "OUTBOXD_PG_BIN", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,

    /// Also let PostgreSQL listen on 127.0.0.1 at this port [default: its Unix
    /// socket only]
    #[arg(long, value_name = "PORT")]
    pub pg_port: Option<u16>,

    /// When started as root on a new home, the account to run as [default:
    /// outboxd, else postgres; an existing home runs as its owner]
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Use this PostgreSQL instead of the embedded one (postgresql://...;
    /// sslmode=require, verify-ca and verify-full with sslrootcert are supported)
    #[arg(
        long,
        env = "OUTBOXD_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Most events the drain moves in one transaction [default: 50000]
    #[arg(long, value_name = "N")]
    pub drain_batch_max: Option<usize>,

    /// Most bytes of events (topic, key, id and payload) the drain moves in
    /// one transaction; an event bigger than this goes alone. The daemon's
    /// memory peaks at about three times this [default: 16777216, 16 MiB]
    #[arg(long, env = "OUTBOXD_DRAIN_BATCH_BYTES", value_name = "BYTES")]
    pub drain_batch_bytes: Option<usize>,

    /// Seconds the drain keeps its PostgreSQL connection with nothing to
    /// move before it closes it (the next event opens a new one); 0 keeps
    /// it open [default: 60]
    #[arg(long, value_name = "SECS")]
    pub drain_idle_release_secs: Option<u64>,

    /// Seconds an idempotency id is remembered after its event was enqueued
    /// [default: 604800, seven days]
    #[arg(long, value_name = "SECS")]
    pub idempotency_window_secs: Option<u64>,

    /// Seconds without progress, while events are queued, after which the
    /// drain counts as stuck [default: 60]
    #[arg(long, value_name = "SECS")]
    pub stuck_after_secs: Option<u64>,

    /// Delete drained events older than this many days from
    /// outbox.events [default: keep them]
    #[arg(long, value_name = "DAYS")]
    pub retention_days: Option<u32>,

    /// Log lines as `text` or `json` (one object a line)
    /// [default: text]
    #[arg(long, env = "OUTBOXD_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Rotate log/outboxd.log (and copy-truncate log/postgres.log) past
    /// this size, in bytes [default: 10485760]
    #[arg(long, value_name = "BYTES")]
    pub log_max_bytes: Option<u64>,

    /// Rotated log files kept (outboxd.log.1 ... .N) [default: 5]
    #[arg(long, value_name = "N")]
    pub log_keep: Option<u32>,

    /// A group whose members may use the control socket as producers
    /// (enqueue, flush, status), but not stop or change the daemon
    /// [default: none]
    #[arg(long, value_name = "GROUP")]
    pub producer_group: Option<String>,
}

/// The command-line layer: the flags given, and for each where it came from
/// (a flag or its environment variable).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flags {
    pub settings: Settings,
    pub origins: BTreeMap<String, Origin>,
}

impl Flags {
    /// The flags of a parsed command line whose arguments include
    /// [`Settings`] (flattened).
    pub fn from_matches(settings: Settings, matches: &clap::ArgMatches) -> Flags {
        let mut origins = BTreeMap::new();
        for key in keys(&settings) {
            let origin = match matches.value_source(&key) {
                Some(clap::parser::ValueSource::EnvVariable) => {
                    Origin::Env(env_name(&key).unwrap_or_default())
                }
                _ => Origin::Flag(format!("--{}", key.replace('_', "-"))),
            };
            origins.insert(key, origin);
        }
        Flags { settings, origins }
    }
}

/// The environment variable that can set `key`, if any.
fn env_name(key: &str) -> Option<String> {
    match key {
        "pg_bin" => Some("OUTBOXD_PG_BIN".into()),
        "database_url" => Some("OUTBOXD_DATABASE_URL".into()),
        "drain_batch_bytes" => Some("OUTBOXD_DRAIN_BATCH_BYTES".into()),
        _ => None,
    }
}

/// The keys a layer sets.
fn keys(settings: &Settings) -> Vec<String> {
    to_map(settings).keys().cloned().collect()
}

fn to_map(settings: &Settings) -> Map<String, Value> {
    match serde_json::to_value(settings).expect("settings serialize") {
        Value::Object(map) => map.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => unreachable!("a struct serializes to an object"),
    }
}

/// How long a control connection may stay silent before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How many control connections are served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// The port that names PostgreSQL's Unix socket when no TCP port is set.
pub const DEFAULT_PG_PORT: u16 = 5432;
/// The most events in one drain transaction.
pub const DEFAULT_DRAIN_BATCH_MAX: usize = 50_000;
/// The most bytes of events in one drain transaction.
pub const DEFAULT_DRAIN_BATCH_BYTES: usize = 16 << 20;
/// The bounds of `drain_batch_bytes`.
pub const DRAIN_BATCH_BYTES_RANGE: std::ops::RangeInclusive<usize> = (64 << 10)..=(1 << 30);
/// How long an idle drain keeps its PostgreSQL connection: a drain that
/// moves something at least once a minute keeps it (no reconnection in
/// its latency); one that is quiet for longer gives it back, so that a
/// thousand mostly quiet hosts fit one server's connections. Reconnecting
/// costs a few milliseconds, once per quiet minute at most.
pub const DEFAULT_DRAIN_IDLE_RELEASE: Duration = Duration::from_secs(60);
/// How long idempotency ids are remembered.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a drain may make no progress with events queued before it counts as stuck.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(60);

/// The largest log file before it is rotated.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 << 20;
/// Rotated log files kept.
pub const DEFAULT_LOG_KEEP: u32 = 5;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One setting as it is in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effective {
    pub key: String,
    /// `null` when unset (the default is to do without).
    pub value: Value,
    pub origin: Origin,
}

/// The daemon's whole configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub paths: Paths,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// The PostgreSQL binaries asked for, if any (else they are searched for).
    pub pg_bin: Option<PathBuf>,
    /// The TCP port PostgreSQL listens on (loopback), if any.
    pub pg_port: Option<u16>,
    /// The account named to run as, if any.
    pub user: Option<String>,
    /// An external PostgreSQL to use instead of the embedded one.
    pub database_url: Option<String>,
    pub drain_batch_max: usize,
    pub drain_batch_bytes: usize,
    /// `None`: the drain keeps its connection while idle.
    pub drain_idle_release: Option<Duration>,
    pub idempotency_window: Duration,
    pub stuck_after: Duration,
    pub retention_days: Option<u32>,
    pub log_format: LogFormat,
    pub log_max_bytes: u64,
    pub log_keep: u32,
    /// The gid of `producer_group`, if set.
    pub producer_group: Option<(String, u32)>,
    /// Where each setting came from (a key absent here is a default).
    pub origins: BTreeMap<String, Origin>,
    /// The command-line layer, kept so that a reload applies it again.
    pub flags: Flags,
}

impl Config {
    /// Validates the command-line layer alone, before the home is touched,
    /// so that a bad flag is reported as a flag and creates nothing.
    pub fn check_flags(paths: &Paths, flags: &Flags) -> Result<()> {
        Config::from_layers(paths.clone(), Settings::default(), None, flags).map(|_| ())
    }

    /// Reads `config.toml` (if present: a regular file of this user or root,
    /// at most [`MAX_CONFIG_BYTES`]) and overlays `flags` on it.
    pub fn load(paths: Paths, flags: &Flags) -> Result<Config> {
        let file = read_file(&paths)?;
        let file_path = paths.config_file.clone();
        Config::from_layers(paths, file, Some(file_path), flags)
    }

    /// Reads `config.toml` again, with the same command-line flags on top.
    pub fn reload(&self) -> Result<Config> {
        Config::load(self.paths.clone(), &self.flags)
    }

    /// The port PostgreSQL uses: the TCP port if set, else the default (which
    /// then only names the socket file).
    pub fn pg_port(&self) -> u16 {
        self.pg_port.unwrap_or(DEFAULT_PG_PORT)
    }

    /// Where the value of `key` came from.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// Every setting's value in force (defaults included; a database URL
    /// without its password) and where it came from, in key order.
    pub fn effective(&self) -> Vec<Effective> {
        let in_force = Settings {
            idle_timeout_secs: Some(self.idle_timeout.as_secs_f64()),
            max_connections: Some(self.max_connections),
            pg_bin: self.pg_bin.clone(),
            pg_port: self.pg_port,
            user: self.user.clone(),
            database_url: self.database_url.as_deref().map(crate::redact::url),
            drain_batch_max: Some(self.drain_batch_max),
            drain_batch_bytes: Some(self.drain_batch_bytes),
            drain_idle_release_secs: Some(self.drain_idle_release.map_or(0, |d| d.as_secs())),
            idempotency_window_secs: Some(self.idempotency_window.as_secs()),
            stuck_after_secs: Some(self.stuck_after.as_secs()),
            retention_days: self.retention_days,
            log_format: Some(match self.log_format {
                LogFormat::Text => "text".into(),
                LogFormat::Json => "json".into(),
            }),
            log_max_bytes: Some(self.log_max_bytes),
            log_keep: Some(self.log_keep),
            producer_group: self.producer_group.as_ref().map(|(name, _)| name.clone()),
        };
        match serde_json::to_value(in_force).expect("settings serialize") {
            Value::Object(map) => map
                .into_iter()
                .map(|(key, value)| Effective {
                    origin: self.origin(&key),
                    key,
                    value,
                })
                .collect(),
            _ => unreachable!("a struct serializes to an object"),
        }
    }

    fn from_layers(
        paths: Paths,
        file: Settings,
        file_path: Option<PathBuf>,
        flags: &Flags,
    ) -> Result<Config> {
        let mut origins = BTreeMap::new();
        let mut merged = to_map(&file);
        if let Some(path) = &file_path {
            for key in merged.keys() {
                origins.insert(key.clone(), Origin::File(path.clone()));
            }
        }
        for (key, value) in to_map(&flags.settings) {
            let origin = flags
                .origins
                .get(&key)
                .cloned()
                .unwrap_or_else(|| Origin::Flag(format!("--{}", key.replace('_', "-"))));
            origins.insert(key.clone(), origin);
            merged.insert(key, value);
        }
        let s: Settings =
            serde_json::from_value(Value::Object(merged)).expect("merged layers deserialize");
        let invalid = |key: &str, message: String| Error::Config {
            origin: origins.get(key).cloned().unwrap_or(Origin::Default),
            message: format!("{key}: {message}"),
        };
        let idle_timeout = match s.idle_timeout_secs {
            None => DEFAULT_IDLE_TIMEOUT,
            Some(secs) => Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| !d.is_zero() && *d <= Duration::from_secs(86_400))
                .ok_or_else(|| {
                    invalid(
                        "idle_timeout_secs",
                        format!("must be more than 0 and at most 86400 seconds, not {secs}"),
                    )
                })?,
        };
        let max_connections = match s.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(0) => return Err(invalid("max_connections", "must be at least 1".into())),
            Some(n) => n,
        };
        if s.pg_port == Some(0) {
            return Err(invalid(
                "pg_port",
                "must be a port number from 1 to 65535".into(),
            ));
        }
        if let Some(url) = &s.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database_url",
                "must start with postgres:// or postgresql://".into(),
            ));
        }
        if let Some(url) = &s.database_url {
            let (url, _) = crate::pgurl::split(url).map_err(|e| invalid("database_url", e))?;
            if let Err(e) = url.parse::<tokio_postgres::Config>() {
                return Err(invalid("database_url", format!("is not a valid URL: {e}")));
            }
        }
        let drain_batch_max = match s.drain_batch_max {
            None => DEFAULT_DRAIN_BATCH_MAX,
            Some(n) if (1..=1_000_000).contains(&n) => n,
            Some(n) => {
                return Err(invalid(
                    "drain_batch_max",
                    format!("must be from 1 to 1000000, not {n}"),
                ));
            }
        };
        let drain_batch_bytes = match s.drain_batch_bytes {
            None => DEFAULT_DRAIN_BATCH_BYTES,
            Some(n) if DRAIN_BATCH_BYTES_RANGE.contains(&n) => n,
            Some(n) => {
                return Err(invalid(
                    "drain_batch_bytes",
                    format!(
                        "must be from {} (64 KiB) to {} (1 GiB), not {n}",
                        DRAIN_BATCH_BYTES_RANGE.start(),
                        DRAIN_BATCH_BYTES_RANGE.end()
                    ),
                ));
            }
        };
        let drain_idle_release = match s.drain_idle_release_secs {
            None => Some(DEFAULT_DRAIN_IDLE_RELEASE),
            Some(0) => None,
            Some(secs) if secs <= 86_400 => Some(Duration::from_secs(secs)),
            Some(secs) => {
                return Err(invalid(
                    "drain_idle_release_secs",
                    format!("must be from 0 (never) to 86400 seconds, not {secs}"),
                ));
            }
        };
        let log_format = match s.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "log_format",
                    format!("must be \"text\" or \"json\", not {other:?}"),
                ));
            }
        };
        let log_max_bytes = match s.log_max_bytes {
            None => DEFAULT_LOG_MAX_BYTES,
            Some(n) if n >= 4096 => n,
            Some(n) => {
                return Err(invalid(
                    "log_max_bytes",
                    format!("must be at least 4096, not {n}"),
                ));
            }
        };
        let producer_group = match &s.producer_group {
            None => None,
            Some(name) => match crate::account::group_id(name)? {
                Some(gid) => Some((name.clone(), gid)),
                None => {
                    return Err(invalid(
                        "producer_group",
                        format!("there is no group named {name:?} (create it with groupadd)"),
                    ));
                }
            },
        };
        Ok(Config {
            paths,
            log_format,
            log_max_bytes,
            log_keep: s.log_keep.unwrap_or(DEFAULT_LOG_KEEP),
            producer_group,
            idle_timeout,
            max_connections,
            pg_bin: s.pg_bin,
            pg_port: s.pg_port,
            user: s.user,
            database_url: s.database_url,
            drain_batch_max,
            drain_batch_bytes,
            drain_idle_release,
            idempotency_window: s
                .idempotency_window_secs
                .map_or(DEFAULT_IDEMPOTENCY_WINDOW, Duration::from_secs),
            stuck_after: s
                .stuck_after_secs
                .map_or(DEFAULT_STUCK_AFTER, Duration::from_secs),
            retention_days: s.retention_days,
            origins,
            flags: flags.clone(),
        })
    }
}

/// The settings in `config.toml`, or none when there is no file.
pub fn read_file(paths: &Paths) -> Result<Settings> {
    let path = &paths.config_file;
    let owner = Owner::IsOrRoot(crate::process::euid());
    let Some(bytes) = safefs::read_capped(path, MAX_CONFIG_BYTES, owner)? else {
        return Ok(Settings::default());
    };
    let text = String::from_utf8(bytes).map_err(|e| Error::Config {
        origin: Origin::File(path.clone()),
        message: format!(
            "is not UTF-8 text (at byte {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
    toml::from_str(&text).map_err(|e| Error::Config {
        origin: Origin::File(path.clone()),
        message: e.to_string().trim_end().to_string(),
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

    fn flags(settings: Settings) -> Flags {
        Flags {
            settings,
            origins: BTreeMap::new(),
        }
    }

    #[test]
    fn defaults_then_file_then_flags() {
        let (_dir, paths) = home_with(None);
        let config = Config::load(paths, &Flags::default()).unwrap();
        assert_eq!(config.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(config.origin("idle_timeout_secs"), Origin::Default);

        let (_dir, paths) = home_with(Some("idle_timeout_secs = 2.5\nmax_connections = 4\n"));
        let file = paths.config_file.clone();
        let config = Config::load(
            paths,
            &flags(Settings {
                max_connections: Some(9),
                ..Settings::default()
            }),
        )
        .unwrap();
        assert_eq!(config.idle_timeout, Duration::from_millis(2500));
        assert_eq!(config.max_connections, 9);
        assert_eq!(config.origin("idle_timeout_secs"), Origin::File(file));
        assert_eq!(
            config.origin("max_connections"),
            Origin::Flag("--max-connections".into())
        );
    }

    #[test]
    fn errors_name_where_the_value_came_from() {
        let (_dir, paths) = home_with(Some("idle_timeout = 3\n"));
        let err = Config::load(paths, &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.toml") && err.contains("idle_timeout"),
            "{err}"
        );

        let (_dir, paths) = home_with(Some("idle_timeout_secs = -1\n"));
        let err = Config::load(paths, &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.toml") && err.contains("more than 0"),
            "{err}"
        );

        let (_dir, paths) = home_with(None);
        let bad = flags(Settings {
            idle_timeout_secs: Some(-1.0),
            ..Settings::default()
        });
        let err = Config::check_flags(&paths, &bad).unwrap_err().to_string();
        assert!(err.contains("--idle-timeout-secs"), "{err}");
        assert!(!err.contains("config.toml"), "{err}");
    }
}
