//! A batch of events in PostgreSQL's binary `COPY` format, encoded on the
//! spool thread straight from SQLite's rows (no per-row allocation) into
//! one buffer, frozen when the batch is read, with the offsets that let any
//! run of its rows be sent on its own (to isolate a row PostgreSQL
//! rejects).
//!
//! The data goes out as [`PIECE`]-sized `CopyData` messages, each a
//! zero-copy slice of the frozen buffer: PostgreSQL refuses a message over
//! 1 GiB (and a batch as one message would also be copied whole into the
//! connection's write buffer).
//!
//! Row layout, matching [`COPY_SQL`]: `source_id uuid, seq int8, topic
//! text, key text, payload jsonb, id text, enqueued_at timestamptz,
//! bytes_through int8` (the source's payload bytes through this event: the
//! batch starts where the cursor's count ends, see `schema`).

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use outboxd::spool::EventRef;
use uuid::Uuid;

/// The statement the encoded rows are sent with.
pub const COPY_SQL: &str = "COPY outbox.events (source_id, seq, topic, key, payload, id, \
                            enqueued_at, bytes_through) FROM STDIN (FORMAT binary)";

/// Binary COPY's signature, flags and header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The end-of-data marker: a field count of -1.
const TRAILER: &[u8] = &[0xff, 0xff];
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// jsonb's binary format version byte.
const JSONB_VERSION: u8 = 1;

/// The most bytes of COPY data sent as one `CopyData` message.
pub const PIECE: usize = 1 << 20;

/// Encoded rows.
#[derive(Default)]
pub struct Batch {
    /// Rows being encoded (until [`Batch::seal`]).
    building: BytesMut,
    /// The encoded rows, frozen.
    rows: Bytes,
    /// Where each row ends in `rows`.
    ends: Vec<usize>,
    pub seqs: Vec<i64>,
    /// Each row's `bytes_through`: the source's payload bytes through it.
    pub bytes_through: Vec<i64>,
    /// The source's payload bytes before this batch.
    bytes_before: i64,
    /// The events' text bytes ([`EventRef::size`]), what the byte bound
    /// counts.
    pub size: usize,
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

    /// An empty batch whose events follow `bytes_before` payload bytes of
    /// their source.
    pub fn after_bytes(bytes_before: i64) -> Batch {
        Batch {
            bytes_before,
            ..Batch::default()
        }
    }

    /// The source's payload bytes through the last event (where the next
    /// batch starts).
    pub fn bytes_end(&self) -> i64 {
        self.bytes_through
            .last()
            .copied()
            .unwrap_or(self.bytes_before)
    }

    /// The bytes of the encoded rows.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.rows.len() + self.building.len()
    }

    /// Appends one event.
    pub fn push(&mut self, source: &Uuid, event: EventRef<'_>) {
        let bytes_through = self.bytes_end() + event.payload.len() as i64;
        let buf = &mut self.building;
        buf.reserve(72 + event.topic.len() + event.payload.len());
        buf.put_i16(8);
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
        buf.put_i32(8);
        buf.put_i64(bytes_through);
        self.ends.push(buf.len());
        self.bytes_through.push(bytes_through);
        self.size += event.size();
        self.seqs.push(event.seq);
    }

    /// Freezes the encoded rows (once every row is pushed): from now on
    /// any run of rows is sent without a copy.
    pub fn seal(mut self) -> Batch {
        debug_assert!(self.rows.is_empty(), "sealed once");
        self.rows = self.building.split().freeze();
        self.building = BytesMut::new();
        self
    }

    /// The bytes of the encoded rows `range`.
    #[cfg(test)]
    pub fn range_bytes(&self, range: Range<usize>) -> usize {
        let (start, end) = self.offsets(range);
        end - start
    }

    fn offsets(&self, range: Range<usize>) -> (usize, usize) {
        let at = |i: usize| match i {
            0 => 0,
            i => self.ends[i - 1],
        };
        (at(range.start), at(range.end))
    }

    /// The COPY data for rows `range` of a sealed batch: the header, the
    /// rows in slices of at most [`PIECE`] bytes of the frozen buffer, the
    /// trailer. Nothing is copied.
    pub fn pieces(&self, range: Range<usize>) -> impl Iterator<Item = Bytes> + Send + 'static {
        debug_assert!(self.building.is_empty(), "sealed");
        let (start, end) = self.offsets(range);
        let rows = self.rows.slice(start..end);
        let count = rows.len().div_ceil(PIECE);
        std::iter::once(Bytes::from_static(HEADER))
            .chain(
                (0..count).map(move |i| rows.slice(i * PIECE..((i + 1) * PIECE).min(rows.len()))),
            )
            .chain(std::iter::once(Bytes::from_static(TRAILER)))
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
        let batch = batch.seal();
        let joined = |pieces: Vec<Bytes>| pieces.concat();
        let all = joined(batch.pieces(0..3).collect());
        assert!(all.starts_with(b"PGCOPY\n\xff\r\n\0"));
        assert!(all.ends_with(&[0xff, 0xff]));
        let one = joined(batch.pieces(1..2).collect());
        let row = one.len() - HEADER.len() - TRAILER.len();
        assert_eq!(all.len() - HEADER.len() - TRAILER.len(), 3 * row);
        assert_eq!(&one[HEADER.len()..HEADER.len() + 2], &[0, 8]);
        assert_eq!(batch.seqs[0], 1);
        assert_eq!(batch.last_seq(), Some(3));
    }

    #[test]
    fn each_row_carries_its_sources_payload_bytes_through_it() {
        let source = Uuid::nil();
        let mut batch = Batch::after_bytes(1000);
        assert_eq!(batch.bytes_end(), 1000);
        for seq in 1..=3 {
            batch.push(&source, event(seq));
        }
        // "{}" is two bytes.
        assert_eq!(batch.bytes_through, vec![1002, 1004, 1006]);
        assert_eq!(batch.bytes_end(), 1006);
        let batch = batch.seal();
        let row: Vec<u8> = batch.pieces(2..3).collect::<Vec<_>>().concat();
        let field = &row[row.len() - TRAILER.len() - 8..row.len() - TRAILER.len()];
        assert_eq!(i64::from_be_bytes(field.try_into().unwrap()), 1006);
    }

    #[test]
    fn big_rows_go_as_pieces_of_one_buffer_at_most_a_mebibyte_each() {
        let source = Uuid::nil();
        let payload = format!("\"{}\"", "x".repeat(250_000));
        let mut batch = Batch::default();
        for seq in 1..=10 {
            batch.push(
                &source,
                EventRef {
                    payload: &payload,
                    ..event(seq)
                },
            );
        }
        let batch = batch.seal();
        let pieces: Vec<Bytes> = batch.pieces(0..10).collect();
        let body = &pieces[1..pieces.len() - 1];
        assert_eq!(
            body.len(),
            batch.bytes().div_ceil(PIECE),
            "{}",
            batch.bytes()
        );
        assert!(body.iter().all(|p| !p.is_empty() && p.len() <= PIECE));
        // Zero-copy: each piece points into the frozen buffer, in order.
        let base = batch.rows.as_ptr() as usize;
        for (i, piece) in body.iter().enumerate() {
            assert_eq!(piece.as_ptr() as usize, base + i * PIECE);
        }
        assert_eq!(
            pieces.iter().map(Bytes::len).sum::<usize>(),
            HEADER.len() + batch.bytes() + TRAILER.len()
        );
        // A run of rows starts where its first row starts.
        let tail: Vec<Bytes> = batch.pieces(9..10).collect();
        assert_eq!(tail[1].as_ptr() as usize, base + batch.range_bytes(0..9));
    }
}
