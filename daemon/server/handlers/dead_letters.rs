//! `dead_letters`: list, requeue or purge the events PostgreSQL rejected.

use outboxd::protocol::{self, DeadLettersResult, ErrorBody, ErrorCode};

use crate::context::Context;

pub async fn dead_letters(
    _ctx: &Context,
    _request: protocol::DeadLetters,
) -> Result<DeadLettersResult, ErrorBody> {
    Err(ErrorBody::new(
        ErrorCode::Unavailable,
        "dead letters are not available yet",
    ))
}
