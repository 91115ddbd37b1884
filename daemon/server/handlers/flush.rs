//! `flush`: wait until everything enqueued so far has left the spool.

use outboxd::protocol::{self, ErrorBody, ErrorCode, Flushed};

use crate::context::Context;

pub async fn flush(_ctx: &Context, _request: protocol::Flush) -> Result<Flushed, ErrorBody> {
    Err(ErrorBody::new(
        ErrorCode::Unavailable,
        "flush is not available yet",
    ))
}
