//! `enqueue`: events from tools that cannot link the library. Validated as
//! every producer's are; a batch is all or nothing.

use outboxd::protocol::{self, Enqueued, EnqueuedBatch, ErrorBody, ErrorCode, WireEvent};
use outboxd::spool::NewEvent;
use serde_json::{Value, json};

use crate::context::Context;

pub async fn enqueue(ctx: &Context, request: protocol::Enqueue) -> Result<Value, ErrorBody> {
    let batch = request.batch;
    let events: Vec<NewEvent> = request.events.into_iter().map(new_event).collect();
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
    let results: Vec<Enqueued> = results
        .into_iter()
        .map(|r| Enqueued {
            seq: r.seq,
            duplicate: r.duplicate,
        })
        .collect();
    Ok(match batch {
        true => json!(EnqueuedBatch { events: results }),
        false => json!(results[0]),
    })
}

fn new_event(wire: WireEvent) -> NewEvent {
    NewEvent {
        topic: wire.topic,
        key: wire.key,
        id: wire.id,
        payload: wire.payload,
    }
}
