//! Reading request lines and writing response lines, with limits: a line is
//! read into at most `limit` + 1 bytes (`MAX_LINE` for the owner,
//! [`PRODUCER_MAX_LINE`] for producers), the bytes of producers' lines
//! being read are charged to one shared [`Budget`], and a write gives up
//! after the idle timeout.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use outboxd::protocol::Response;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// The longest request line of a producer: room for one event of the
/// largest payload, twice over.
pub const PRODUCER_MAX_LINE: usize = 2 * outboxd::spool::MAX_PAYLOAD;

/// The most bytes of producers' request lines held at once, all
/// connections together.
pub const PRODUCER_BUDGET: usize = 32 << 20;

/// How a read of one request line ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Line,
    Eof,
    TooLarge,
    /// The shared budget of partial lines is spent.
    OverBudget,
}

/// Bytes of request lines being read, shared by connections.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    cap: usize,
}

impl Budget {
    pub const fn new(cap: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            cap,
        }
    }

    /// Takes `bytes` from the budget; false (and nothing taken) when that
    /// would exceed it.
    fn charge(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.cap)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// What a read has charged; given back when the read ends or is dropped
/// (an idle timeout or an eviction cancels a read half-way).
struct Charge<'a> {
    budget: Option<&'a Budget>,
    bytes: usize,
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        if let Some(budget) = self.budget {
            budget.release(self.bytes);
        }
    }
}

/// Reads one line into `line` (newline and a trailing CR stripped), reading
/// at most `limit` + 1 bytes of it, charging what it holds to `budget`.
pub async fn read_frame<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    limit: usize,
    budget: Option<&Budget>,
) -> io::Result<Frame> {
    let mut charge = Charge { budget, bytes: 0 };
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            // The last line, without a newline, before the peer closed its side.
            return Ok(if line.is_empty() {
                Frame::Eof
            } else {
                Frame::Line
            });
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let chunk = newline.map_or(available.len(), |i| i + 1);
        let take = chunk.min(limit + 1 - line.len());
        if let Some(budget) = budget {
            if !budget.charge(take) {
                return Ok(Frame::OverBudget);
            }
            charge.bytes += take;
        }
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if newline.is_some() && take == chunk {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Frame::Line);
        }
        if line.len() > limit {
            return Ok(Frame::TooLarge);
        }
    }
}

/// Writes one response line, giving up after `idle`.
pub async fn write_line<W: AsyncWrite + Unpin>(
    stream: &mut W,
    response: &Response,
    idle: Duration,
) -> io::Result<()> {
    let line = response.to_line();
    match tokio::time::timeout(idle, stream.write_all(&line)).await {
        Ok(result) => result,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outboxd::protocol::MAX_LINE;
    use tokio::io::BufReader;

    async fn frames(input: &[u8]) -> Vec<(Frame, Vec<u8>)> {
        let mut reader = BufReader::new(input);
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            let frame = read_frame(&mut reader, &mut line, MAX_LINE, None)
                .await
                .unwrap();
            let done = frame != Frame::Line;
            out.push((frame, line));
            if done {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn lines_are_split_and_stripped() {
        let got = frames(b"a\r\nb\nlast").await;
        assert_eq!(got[0], (Frame::Line, b"a".to_vec()));
        assert_eq!(got[1], (Frame::Line, b"b".to_vec()));
        assert_eq!(got[2], (Frame::Line, b"last".to_vec()));
        assert_eq!(got[3].0, Frame::Eof);
    }

    #[tokio::test]
    async fn an_overlong_line_is_refused_after_reading_its_cap() {
        let mut input = vec![b'x'; MAX_LINE + 10];
        input.push(b'\n');
        let got = frames(&input).await;
        assert_eq!(got[0].0, Frame::TooLarge);
        assert_eq!(got[0].1.len(), MAX_LINE + 1);
        let mut exact = vec![b'x'; MAX_LINE];
        exact.push(b'\n');
        assert_eq!(frames(&exact).await[0].0, Frame::Line);
    }

    #[tokio::test]
    async fn partial_lines_are_charged_to_the_budget_and_given_back() {
        let budget = Budget::new(100);
        let input = [b'x'; 150];
        let mut reader = BufReader::with_capacity(40, &input[..]);
        let mut line = Vec::new();
        let frame = read_frame(&mut reader, &mut line, 1000, Some(&budget))
            .await
            .unwrap();
        assert_eq!(frame, Frame::OverBudget);
        assert_eq!(budget.used(), 0, "a finished read gives its charge back");
        let mut reader = BufReader::new(&b"short\n"[..]);
        line.clear();
        let frame = read_frame(&mut reader, &mut line, 1000, Some(&budget))
            .await
            .unwrap();
        assert_eq!((frame, line.as_slice()), (Frame::Line, &b"short"[..]));
        assert_eq!(budget.used(), 0);
    }
}
