//! `outboxctl logs [-n N] [-f]`: the daemon's log file, as `tail` would show
//! it. Following survives rotation: when the file is replaced or truncated,
//! the new one is read from its start.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use outboxd::exit_code;
use outboxd::paths::Paths;

use crate::output::Output;

/// How much of the end of the file is read to find the last lines.
const TAIL_WINDOW: u64 = 1 << 20;

pub fn run(paths: &Paths, lines: usize, follow: bool, out: &Output) -> u8 {
    match tail(&paths.log_file, lines, follow) {
        Ok(()) => exit_code::OK,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            out.error(format!(
                "no log at {}: the daemon writes it when it runs in the background (`outboxctl start`)",
                paths.log_file.display()
            ));
            exit_code::FAILURE
        }
        // The reader went away (`outboxctl logs | head`): not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => exit_code::OK,
        Err(e) => {
            out.error(format!("could not read {}: {e}", paths.log_file.display()));
            exit_code::FAILURE
        }
    }
}

fn tail(log: &Path, lines: usize, follow: bool) -> io::Result<()> {
    let mut file = File::open(log)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL_WINDOW)))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    let starts: Vec<usize> = std::iter::once(0)
        .chain(
            text.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .filter(|&i| i < text.len())
        .collect();
    let from = starts.len().saturating_sub(lines);
    let mut stdout = io::stdout().lock();
    if let Some(&start) = starts.get(from) {
        stdout.write_all(&text[start..])?;
    }
    stdout.flush()?;
    if !follow {
        return Ok(());
    }
    let mut inode = file.metadata()?.ino();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n > 0 {
            stdout.write_all(&buf[..n])?;
            stdout.flush()?;
            continue;
        }
        std::thread::sleep(Duration::from_millis(200));
        // Rotated (a new file at the path) or truncated: start over on it.
        if let Ok(meta) = std::fs::metadata(log) {
            let position = file.stream_position()?;
            if meta.ino() != inode || meta.len() < position {
                file = File::open(log)?;
                inode = file.metadata()?.ino();
            }
        }
    }
}
