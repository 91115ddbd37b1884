//! `dead_letters`: list, requeue or purge the events PostgreSQL rejected.

use outboxd::protocol::{
    self, DeadLetter, DeadLetterAction, DeadLettersResult, ErrorBody, ErrorCode,
};
use outboxd::spool::Selection;

use crate::context::Context;

/// How many dead letters `list` returns by default.
const DEFAULT_LIMIT: usize = 100;

pub async fn dead_letters(
    ctx: &Context,
    request: protocol::DeadLetters,
) -> Result<DeadLettersResult, ErrorBody> {
    let selection = match (request.action, request.all, request.seqs.is_empty()) {
        (DeadLetterAction::List, _, _) => None,
        (_, true, _) => Some(Selection::All),
        (_, false, false) => Some(Selection::Seqs(request.seqs)),
        (_, false, true) => {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "requeue and purge need \"seqs\": [...] or \"all\": true",
            ));
        }
    };
    let limit = request.limit.unwrap_or(DEFAULT_LIMIT);
    let action = request.action;
    ctx.producer
        .run(move |spool| {
            let (dead_letters, affected) = match (action, selection) {
                (DeadLetterAction::Requeue, Some(which)) => {
                    (Vec::new(), Some(spool.requeue_dead_letters(which)? as u64))
                }
                (DeadLetterAction::Purge, Some(which)) => {
                    (Vec::new(), Some(spool.purge_dead_letters(which)? as u64))
                }
                _ => (spool.list_dead_letters(limit)?, None),
            };
            let remaining = spool.stats(None)?.dead_letters;
            Ok(DeadLettersResult {
                dead_letters: dead_letters.into_iter().map(DeadLetter::from).collect(),
                affected,
                remaining,
            })
        })
        .await
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))
}
