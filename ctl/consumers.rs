//! `outboxctl consumers list|reset|delete`: the durable named consumers
//! (`outboxd::consumer`) kept in PostgreSQL, their lag, and moving or
//! removing their cursors.

use std::time::{SystemTime, UNIX_EPOCH};

use outboxd::consumer::{self, Lag, Position};
use outboxd::exit_code;
use outboxd::paths::Paths;
use serde_json::json;

use crate::daemon::CtlError;
use crate::output::Output;

/// The most consumers listed.
const MAX_LISTED: i64 = 10_000;

pub enum Action {
    List,
    Reset { name: String, to: Position },
    Delete { name: String },
}

/// `start`, `now`, or `SOURCE_ID:SEQ`.
pub fn parse_position(text: &str) -> Result<Position, String> {
    match text {
        "start" => Ok(Position::Start),
        "now" => Ok(Position::Now),
        other => {
            let (source, seq) = other
                .split_once(':')
                .ok_or_else(|| format!("{other:?}: say start, now, or SOURCE_ID:SEQ"))?;
            Ok(Position::Seq {
                source_id: source
                    .parse()
                    .map_err(|e| format!("{source:?} is not a source id: {e}"))?,
                seq: seq
                    .parse()
                    .map_err(|e| format!("{seq:?} is not a seq: {e}"))?,
            })
        }
    }
}

pub fn run(paths: &Paths, action: Action, database_url: Option<&str>, out: &Output) -> u8 {
    match crate::runtime::block_on(act(paths, action, database_url, out)) {
        Ok(code) => code,
        Err(err) => {
            let code = err.exit_code();
            out.error(&err);
            code
        }
    }
}

async fn act(
    paths: &Paths,
    action: Action,
    database_url: Option<&str>,
    out: &Output,
) -> Result<u8, CtlError> {
    let (target, _reach) = crate::tail::connection_config(paths, database_url)?;
    let client = target
        .connect(None)
        .await
        .map_err(crate::tail::connect_failed)?;
    let failed = |e: consumer::ConsumerError| CtlError::Failed(e.to_string());
    let missing = |name: &str| {
        CtlError::Failed(format!(
            "there is no consumer named {name:?} (`outboxctl consumers list` shows them)"
        ))
    };
    match action {
        Action::List => {
            let lags = consumer::lags(&client, MAX_LISTED).await.map_err(failed)?;
            out.result(render(&lags), json!({ "consumers": lags }));
        }
        Action::Reset { name, to } => {
            if !consumer::reset(&client, &name, to).await.map_err(failed)? {
                return Err(missing(&name));
            }
            let at = match to {
                Position::Start => "the start".to_string(),
                Position::Now => "now".to_string(),
                Position::Seq { source_id, seq } => format!("seq {seq} of source {source_id}"),
            };
            out.result(
                format!("moved the cursors of consumer {name} to {at}"),
                json!({ "consumer": name, "reset": true }),
            );
        }
        Action::Delete { name } => {
            if !consumer::delete(&client, &name).await.map_err(failed)? {
                return Err(missing(&name));
            }
            out.result(
                format!("deleted consumer {name} and its cursors"),
                json!({ "consumer": name, "deleted": true }),
            );
        }
    }
    Ok(exit_code::OK)
}

fn render(lags: &[Lag]) -> String {
    if lags.is_empty() {
        return "no consumers".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut text = format!(
        "{:<24} {:>10} {:>12} {:>12}",
        "NAME", "BEHIND", "OLDEST", "LAST SEEN"
    );
    for lag in lags {
        let oldest = lag
            .oldest_secs
            .map_or_else(|| "-".to_string(), |secs| format!("{secs:.0}s"));
        text.push_str(&format!(
            "\n{:<24} {:>10} {:>12} {:>11.0}s ago",
            lag.name,
            lag.events,
            oldest,
            (now - lag.seen_at).max(0.0)
        ));
    }
    text
}
