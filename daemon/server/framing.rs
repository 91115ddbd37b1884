//! Reading request lines and writing response lines, with limits: a line is
//! read into at most [`MAX_LINE`] + 1 bytes, and a write gives up after the
//! idle timeout.

use std::io;
use std::time::Duration;

use outboxd::protocol::{MAX_LINE, Response};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How a read of one request line ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Line,
    Eof,
    TooLarge,
}

/// Reads one line into `line` (newline and a trailing CR stripped), reading
/// at most [`MAX_LINE`] + 1 bytes of it.
pub async fn read_frame<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> io::Result<Frame> {
    let limit = MAX_LINE as u64 + 1;
    let read = (&mut *reader).take(limit).read_until(b'\n', line).await?;
    if read == 0 {
        return Ok(Frame::Eof);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        return Ok(Frame::Line);
    }
    if line.len() > MAX_LINE {
        return Ok(Frame::TooLarge);
    }
    // The last line, without a newline, before the peer closed its side.
    Ok(Frame::Line)
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
    use tokio::io::BufReader;

    async fn frames(input: &[u8]) -> Vec<(Frame, Vec<u8>)> {
        let mut reader = BufReader::new(input);
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            let frame = read_frame(&mut reader, &mut line).await.unwrap();
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
}
