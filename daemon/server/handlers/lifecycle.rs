//! `stop` (the daemon), `start`/`stop` of a component, and `reload`.

use outboxd::protocol::{Component, DaemonState, ErrorBody, ErrorCode, Reloaded, Stopping};
use serde_json::{Value, json};
use tracing::info;

use crate::component::Command;
use crate::context::Context;

pub fn stop_daemon(ctx: &Context) -> Stopping {
    info!("stop requested over the control socket");
    ctx.shutdown.trigger("stop request");
    Stopping { stopping: true }
}

pub async fn start_component(ctx: &Context, component: Component) -> Result<Value, ErrorBody> {
    ask(ctx, component, Command::Start).await
}

pub async fn stop_component(ctx: &Context, component: Component) -> Result<Value, ErrorBody> {
    ask(ctx, component, Command::Stop).await
}

/// Asks a component to start or stop; the result is its status.
async fn ask(
    ctx: &Context,
    component: Component,
    command: fn(crate::component::Reply) -> Command,
) -> Result<Value, ErrorBody> {
    let state = ctx.state.get();
    if state != DaemonState::Running {
        return Err(ErrorBody::new(
            ErrorCode::Unavailable,
            format!("the daemon is {state}: try again when it runs"),
        ));
    }
    let unavailable = |why: String| ErrorBody::new(ErrorCode::Unavailable, why);
    match component {
        Component::Postgres => {
            ctx.postgres.ask(command).await.map_err(unavailable)?;
            Ok(json!(ctx.postgres.status()))
        }
        Component::Drain => {
            ctx.drain.ask(command).await.map_err(unavailable)?;
            Ok(json!(ctx.drain.status()))
        }
    }
}

pub async fn reload(ctx: &Context) -> Result<Reloaded, ErrorBody> {
    crate::reload::reload(ctx)
        .await
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))
}
