//! `enqueue`: events from tools that cannot link the library. Validated as
//! every producer's are; a batch is all or nothing.
//!
//! The idempotency ids of a `producer_group` member are its own: they are
//! stored as `uid:<uid>:<id>` (in the spool and in PostgreSQL), so a member
//! can neither pre-claim another producer's id (suppressing its event) nor
//! learn whether an id was used. The owner's and root's ids are stored as
//! given.

use outboxd::protocol::{self, EnqueuedBatch, ErrorBody, ErrorCode};
use outboxd::spool::NewEvent;
use serde_json::{Value, json};

use crate::context::Context;

pub async fn enqueue(
    ctx: &Context,
    request: protocol::Enqueue,
    scope: Option<u32>,
) -> Result<Value, ErrorBody> {
    let batch = request.batch;
    let mut events: Vec<NewEvent> = request.events;
    if let Some(uid) = scope {
        // Checked as given first: the errors name the id the producer sent.
        for (index, event) in events.iter().enumerate() {
            outboxd::spool::validate(event).map_err(|e| {
                let message = match batch {
                    true => format!("event {index}: {e}"),
                    false => e.to_string(),
                };
                ErrorBody::new(ErrorCode::InvalidEvent, message)
            })?;
        }
        for event in &mut events {
            if let Some(id) = &mut event.id {
                *id = format!("uid:{uid}:{id}");
            }
        }
    }
    let results = ctx
        .producer
        .run(move |spool| match batch {
            true => spool.enqueue_batch(&events),
            false => spool.enqueue(&events[0]).map(|one| vec![one]),
        })
        .await
        .map_err(|e| match e {
            outboxd::Error::Invalid { .. } => {
                ErrorBody::new(ErrorCode::InvalidEvent, e.to_string())
            }
            e => ErrorBody::new(ErrorCode::Internal, e.to_string()),
        })?;
    Ok(match batch {
        true => json!(EnqueuedBatch { events: results }),
        false => json!(results[0]),
    })
}
