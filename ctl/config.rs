//! `outboxctl config show`: every setting in force and where its value came
//! from (default, file, flag, environment). From the running daemon when
//! there is one (its flags included); else as a daemon started now would
//! see it (`config.toml` and this environment).

use outboxd::config::{Config, Effective, Flags, Settings};
use outboxd::error::Origin;
use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::protocol::{ConfigShown, Request};
use serde_json::json;

use crate::daemon::{self, CtlError};
use crate::output::Output;

pub fn show(paths: &Paths, out: &Output) -> u8 {
    let found = match daemon::connect(paths, daemon::ANSWER_TIMEOUT) {
        Ok((mut client, _)) => client
            .call_as::<ConfigShown>(&Request::Config)
            .map(|shown| (shown.settings, "the running daemon"))
            .map_err(|e| CtlError::Failed(e.to_string())),
        Err(CtlError::NotRunning { .. }) => local(paths).map(|s| (s, "a daemon started now")),
        Err(err) => Err(err),
    };
    // The running daemon's settings may hide a file that no longer loads.
    if matches!(found, Ok((_, "the running daemon")))
        && let Err(e) = local_config(paths)
    {
        out.warn(format!(
            "{} as it is now would stop the next start: {e}",
            paths.config_file.display()
        ));
    }
    match found {
        Ok((settings, whose)) => {
            let width = settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
            let mut text = format!("configuration of {whose} (home {})", paths.home.display());
            for setting in &settings {
                let value = match &setting.value {
                    serde_json::Value::Null => "(unset)".to_string(),
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                text.push_str(&format!(
                    "\n  {:width$}  {value}  ({})",
                    setting.key,
                    describe(&setting.origin)
                ));
            }
            let (line, cluster) = cluster(paths);
            text.push_str(&format!("\n  cluster   {line}"));
            out.result(text, json!({"settings": settings, "cluster": cluster}));
            exit_code::OK
        }
        Err(err) => out.failed(&err),
    }
}

/// The home's cluster: its major (`PG_VERSION`), the binaries it last ran
/// on, and an upgrade in progress; as a line and as JSON (null without a
/// cluster).
fn cluster(paths: &Paths) -> (String, serde_json::Value) {
    let Some(major) = outboxd::pgbin::cluster_major(paths) else {
        let line = format!("none yet ({} has no cluster)", paths.pg_data.display());
        return (line, serde_json::Value::Null);
    };
    let record = outboxd::pgbin::read_record(paths);
    let upgrade = outboxd::pgupgrade::read(paths).ok().flatten();
    let mut line = format!("PostgreSQL {major} ({})", paths.pg_data.display());
    if let Some(record) = &record {
        line.push_str(&format!(", last run on {}", record.bin_dir.display()));
    }
    if let Some(upgrade) = &upgrade {
        line.push_str(&format!(
            "; an upgrade from {} to {} is {}",
            upgrade.from_major,
            upgrade.to_major,
            upgrade.step.as_str()
        ));
    }
    let json = json!({
        "major": major,
        "data_dir": paths.pg_data,
        "bin_dir": record.map(|r| r.bin_dir),
        "upgrade": upgrade,
    });
    (line, json)
}

fn describe(origin: &Origin) -> String {
    match origin {
        Origin::Default => "default".into(),
        Origin::File(path) => format!("file {}", path.display()),
        Origin::Flag(flag) => format!("flag {flag}"),
        Origin::Env(name) => format!("environment {name}"),
    }
}

/// The configuration from `config.toml` and the variables a daemon reads.
fn local(paths: &Paths) -> Result<Vec<Effective>, CtlError> {
    local_config(paths)
        .map(|config| config.effective())
        .map_err(|e| CtlError::from_lib(paths, e))
}

/// The configuration a daemon started now (by `start`, with this
/// environment) would run with, validated as the daemon validates it.
pub fn local_config(paths: &Paths) -> outboxd::Result<Config> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let settings = Settings {
        pg_bin: env("OUTBOXD_PG_BIN").map(Into::into),
        database_url: env("OUTBOXD_DATABASE_URL"),
        log_format: env("OUTBOXD_LOG_FORMAT"),
        ..Settings::default()
    };
    let mut flags = Flags {
        settings,
        ..Flags::default()
    };
    for (key, var) in [
        ("pg_bin", "OUTBOXD_PG_BIN"),
        ("database_url", "OUTBOXD_DATABASE_URL"),
        ("log_format", "OUTBOXD_LOG_FORMAT"),
    ] {
        flags.origins.insert(key.into(), Origin::Env(var.into()));
    }
    Config::load(paths.clone(), &flags)
}
