//! The results of the other ops.

use super::*;

/// The result of `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub server: String,
    pub version: String,
    pub ops: Vec<String>,
}

/// The result of `config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigShown {
    pub settings: Vec<crate::config::Effective>,
}

/// The result of `metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsText {
    /// OpenMetrics text exposition.
    pub text: String,
}

/// The result of `stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stopping {
    pub stopping: bool,
}

/// The result of `reload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    /// Settings whose new values apply now.
    pub applied: Vec<String>,
    /// Settings that changed but apply only at the next start.
    pub at_restart: Vec<String>,
}

/// The result of a batch `enqueue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnqueuedBatch {
    pub events: Vec<Enqueued>,
}

/// The result of `flush`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flushed {
    /// The highest seq enqueued when the flush began; everything up to it
    /// is now in PostgreSQL or dead-lettered.
    pub through_seq: i64,
    /// How many of those are dead letters rather than in PostgreSQL.
    pub dead_letters: u64,
    /// How many of those the drain skipped because PostgreSQL already held
    /// their idempotency id (old duplicates: the earlier event is there,
    /// this one is not).
    #[serde(default)]
    pub duplicates: u64,
    pub waited_secs: f64,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub seq: i64,
    pub topic: String,
    pub key: Option<String>,
    pub id: Option<String>,
    /// The payload's JSON text, byte for byte as it was enqueued.
    #[serde(
        deserialize_with = "raw_json::deserialize",
        serialize_with = "raw_json::serialize"
    )]
    pub payload: String,
    /// When it was enqueued and when it failed (seconds since the Unix epoch).
    pub enqueued_at: f64,
    pub failed_at: f64,
    pub error: String,
    pub attempts: u32,
}

impl From<crate::spool::DeadLetter> for DeadLetter {
    fn from(dead: crate::spool::DeadLetter) -> DeadLetter {
        DeadLetter {
            seq: dead.seq,
            topic: dead.topic,
            key: dead.key,
            id: dead.id,
            payload: dead.payload,
            enqueued_at: dead.enqueued_at as f64 / 1e6,
            failed_at: dead.failed_at as f64 / 1e6,
            error: dead.error,
            attempts: dead.attempts,
        }
    }
}

/// The result of `dead_letters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLettersResult {
    /// `list`: the dead letters, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letters: Vec<DeadLetter>,
    /// `requeue`/`purge`: how many were affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affected: Option<u64>,
    /// How many remain.
    pub remaining: u64,
}
