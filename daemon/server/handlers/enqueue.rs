//! `enqueue`: events from tools that cannot link the library.

use outboxd::protocol::{self, ErrorBody, ErrorCode};
use serde_json::Value;

use crate::context::Context;

pub async fn enqueue(_ctx: &Context, _request: protocol::Enqueue) -> Result<Value, ErrorBody> {
    Err(ErrorBody::new(
        ErrorCode::Unavailable,
        "enqueue is not available yet",
    ))
}
