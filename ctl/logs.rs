//! `outboxctl logs [-n N] [-f] [--postgres]`: the daemon's (or
//! PostgreSQL's) log file, as `tail` would show it. Following survives
//! rotation: when the file is replaced or truncated, the new one is read
//! from its start.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::safefs;

use crate::output::Output;

/// How much of the end of a file is read to find its last lines.
const TAIL_WINDOW: u64 = 1 << 20;

pub fn run(paths: &Paths, lines: usize, follow: bool, postgres: bool, out: &Output) -> u8 {
    if out.is_json() {
        out.error("logs prints log lines as they are; it has no --json form");
        return exit_code::FAILURE;
    }
    let log = if postgres {
        &paths.pg_log
    } else {
        &paths.log_file
    };
    match tail(log, lines, follow) {
        Ok(()) => exit_code::OK,
        // The reader went away (`outboxctl logs | head`): done, quietly.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => exit_code::OK,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            out.error(format!(
                "no log at {}: {}",
                log.display(),
                if postgres {
                    "PostgreSQL has not been started in this home"
                } else {
                    "the daemon writes it when it runs in the background (`outboxctl start`); \
                     in the foreground it logs to standard error"
                }
            ));
            exit_code::FAILURE
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            out.error(format!(
                "could not read {}: {e}; {}",
                log.display(),
                crate::daemon::denied_hint(&paths.home)
            ));
            exit_code::UNKNOWN
        }
        Err(e) => {
            out.error(format!("could not read {}: {e}", log.display()));
            exit_code::FAILURE
        }
    }
}

/// The last `lines` lines of `log`, starting no earlier than byte `from`.
pub fn last_lines(log: &Path, from: u64, lines: usize) -> io::Result<Vec<String>> {
    let mut file = File::open(log)?;
    read_last_lines(&mut file, from, lines)
}

/// The last `lines` lines of `file` from byte `from` on (within the last
/// [`TAIL_WINDOW`] bytes); leaves the file positioned at its end.
fn read_last_lines(file: &mut File, from: u64, lines: usize) -> io::Result<Vec<String>> {
    let len = file.metadata()?.len();
    let start = from.min(len).max(len.saturating_sub(TAIL_WINDOW));
    file.seek(SeekFrom::Start(start))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    let text = String::from_utf8_lossy(&text);
    let mut all: Vec<&str> = text.lines().collect();
    if start > from && !all.is_empty() {
        // The window began inside a line.
        all.remove(0);
    }
    Ok(all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.to_string())
        .collect())
}

fn tail(log: &Path, lines: usize, follow: bool) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    let mut file = File::open(log)?;
    let mut last = read_last_lines(&mut file, 0, lines)?;
    // A file rotated a moment ago holds few lines: the rest of the tail is
    // in the rotated files, newest first (`.1`, `.2`, ...).
    let mut number = 1;
    while last.len() < lines {
        let rotated = std::path::PathBuf::from(format!("{}.{number}", log.display()));
        let Ok(mut older) = File::open(&rotated) else {
            break;
        };
        let mut earlier = read_last_lines(&mut older, 0, lines - last.len())?;
        earlier.append(&mut last);
        last = earlier;
        number += 1;
    }
    for line in last {
        writeln!(stdout, "{line}")?;
    }
    stdout.flush()?;
    if !follow {
        return Ok(());
    }
    let mut inode = safefs::identity(&file.metadata()?);
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
            if safefs::identity(&meta) != inode || meta.len() < position {
                file = File::open(log)?;
                inode = safefs::identity(&file.metadata()?);
            }
        }
    }
}
