//! Serde helpers for a `String` field that holds JSON text: written out as
//! that JSON, byte for byte, and read back as the exact text that was sent
//! (`#[serde(with = "outboxd_spool::json_text")]`). A payload never passes
//! through a `serde_json::Value`, which would round `1.50` to `1.5` and
//! `1e400` to an error.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    Ok(raw.get().to_string())
}

pub fn serialize<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    let raw = RawValue::from_string(text.to_string()).map_err(serde::ser::Error::custom)?;
    raw.serialize(s)
}
