//! One handler per op: each file answers one kind of request. The match
//! below is exhaustive over `Request`, so a new op cannot be forgotten.

mod dead_letters;
mod enqueue;
mod flush;
mod hello;
mod lifecycle;
mod status;

use outboxd::protocol::{
    self, ConfigShown, ErrorBody, ErrorCode, Id, MetricsText, Request, Response,
};
use serde::Serialize;
use tracing::debug;

use crate::context::Context;
use crate::server::Role;

/// Answers one request line from a peer in `role` (with `uid`, from its
/// credentials).
pub async fn handle(ctx: &Context, role: Role, uid: Option<u32>, line: &[u8]) -> Response {
    let (id, request) = match protocol::decode_request(line) {
        Ok(decoded) => decoded,
        Err(rejected) => {
            debug!(code = %rejected.error.code, "rejected a request");
            return Response::failure(rejected.id, rejected.error);
        }
    };
    let producer_may = matches!(
        request,
        Request::Hello(_) | Request::Status | Request::Enqueue(_) | Request::Flush(_)
    );
    if role == Role::Producer && !producer_may {
        let message = format!(
            "producers (the group {}) may only hello, status, enqueue and flush; {} needs the \
             daemon's account or root",
            ctx.config()
                .producer_group
                .map(|(name, _)| name)
                .unwrap_or_default(),
            request.op()
        );
        return Response::failure(id, ErrorBody::new(ErrorCode::Forbidden, message));
    }
    match request {
        Request::Hello(_) => respond(id, Ok(hello::hello())),
        Request::Status => respond(id, Ok(status::status(ctx).await)),
        Request::Start { component: None } => respond(id, Ok(status::status(ctx).await)),
        Request::Stop { component: None } => respond(id, Ok(lifecycle::stop_daemon(ctx))),
        Request::Start {
            component: Some(component),
        } => respond(id, lifecycle::start_component(ctx, component).await),
        Request::Stop {
            component: Some(component),
        } => respond(id, lifecycle::stop_component(ctx, component).await),
        Request::Reload => respond(id, lifecycle::reload(ctx).await),
        Request::Enqueue(enqueue) => {
            // A producer's idempotency ids are its own: scoped by its uid.
            let scope = match role {
                Role::Producer => uid,
                Role::Owner => None,
            };
            respond(id, enqueue::enqueue(ctx, enqueue, scope).await)
        }
        Request::Flush(flush) => respond(id, flush::flush(ctx, flush).await),
        Request::DeadLetters(dead) => respond(id, dead_letters::dead_letters(ctx, dead).await),
        Request::Config => respond(
            id,
            Ok(ConfigShown {
                settings: ctx.config().effective(),
            }),
        ),
        Request::Metrics => respond(
            id,
            Ok(MetricsText {
                text: outboxd::metrics::render(&status::status(ctx).await),
            }),
        ),
    }
}

fn respond<T: Serialize>(id: Id, outcome: Result<T, ErrorBody>) -> Response {
    match outcome {
        Ok(result) => Response::success(id, result),
        Err(error) => Response::failure(id, error),
    }
}
