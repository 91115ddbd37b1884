//! A batch of events in PostgreSQL's binary `COPY` format, encoded on the
//! spool thread straight from SQLite's rows (no per-row allocation), with
//! the offsets that let any run of its rows be sent again on its own (to
//! isolate a row PostgreSQL rejects).
//!
//! Row layout, matching [`COPY_SQL`]: `source_id uuid, seq int8, topic
//! text, key text, payload jsonb, id text, enqueued_at timestamptz`.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use outboxd::spool::EventRef;
use uuid::Uuid;

/// The statement the encoded rows are sent with.
pub const COPY_SQL: &str = "COPY outbox.events (source_id, seq, topic, key, payload, id, \
                            enqueued_at) FROM STDIN (FORMAT binary)";

/// Binary COPY's signature, flags and header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The end-of-data marker: a field count of -1.
const TRAILER: &[u8] = &[0xff, 0xff];
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// jsonb's binary format version byte.
const JSONB_VERSION: u8 = 1;

/// Encoded rows.
#[derive(Default)]
pub struct Batch {
    rows: BytesMut,
    /// Where each row ends in `rows`.
    ends: Vec<usize>,
    pub seqs: Vec<i64>,
    pub enqueued_at: Vec<i64>,
    /// Idempotency ids, by row (most are `None`).
    pub ids: Vec<Option<String>>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn last_seq(&self) -> Option<i64> {
        self.seqs.last().copied()
    }

    /// Appends one event.
    pub fn push(&mut self, source: &Uuid, event: EventRef<'_>) {
        let buf = &mut self.rows;
        buf.reserve(64 + event.topic.len() + event.payload.len());
        buf.put_i16(7);
        buf.put_i32(16);
        buf.put_slice(source.as_bytes());
        buf.put_i32(8);
        buf.put_i64(event.seq);
        text(buf, Some(event.topic));
        text(buf, event.key);
        buf.put_i32(event.payload.len() as i32 + 1);
        buf.put_u8(JSONB_VERSION);
        buf.put_slice(event.payload.as_bytes());
        text(buf, event.id);
        buf.put_i32(8);
        buf.put_i64(event.enqueued_at - PG_EPOCH_MICROS);
        self.ends.push(buf.len());
        self.seqs.push(event.seq);
        self.enqueued_at.push(event.enqueued_at);
        self.ids.push(event.id.map(str::to_string));
    }

    /// The COPY data for rows `range`: header, rows, trailer.
    pub fn copy_data(&self, range: Range<usize>) -> Bytes {
        let start = match range.start {
            0 => 0,
            i => self.ends[i - 1],
        };
        let end = match range.end {
            0 => 0,
            i => self.ends[i - 1],
        };
        let mut data = BytesMut::with_capacity(HEADER.len() + (end - start) + TRAILER.len());
        data.put_slice(HEADER);
        data.put_slice(&self.rows[start..end]);
        data.put_slice(TRAILER);
        data.freeze()
    }
}

fn text(buf: &mut BytesMut, value: Option<&str>) {
    match value {
        Some(text) => {
            buf.put_i32(text.len() as i32);
            buf.put_slice(text.as_bytes());
        }
        None => buf.put_i32(-1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64) -> EventRef<'static> {
        EventRef {
            seq,
            topic: "t",
            key: None,
            id: Some("x"),
            payload: "{}",
            enqueued_at: PG_EPOCH_MICROS + 1,
        }
    }

    #[test]
    fn any_run_of_rows_is_a_complete_copy_stream() {
        let source = Uuid::nil();
        let mut batch = Batch::default();
        for seq in 1..=3 {
            batch.push(&source, event(seq));
        }
        let all = batch.copy_data(0..3);
        assert!(all.starts_with(b"PGCOPY\n\xff\r\n\0"));
        assert!(all.ends_with(&[0xff, 0xff]));
        let one = batch.copy_data(1..2);
        let row = one.len() - HEADER.len() - TRAILER.len();
        assert_eq!(all.len() - HEADER.len() - TRAILER.len(), 3 * row);
        assert_eq!(&one[HEADER.len()..HEADER.len() + 2], &[0, 7]);
        assert_eq!(batch.seqs[0], 1);
        assert_eq!(batch.last_seq(), Some(3));
    }
}
