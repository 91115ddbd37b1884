//! The manual pages, generated from the command-line definitions
//! (`clap_mangen`): `outboxd.8` from the daemon's ([`outboxd::cli`]) and
//! `outboxctl.1` from this tool's, every subcommand on the one page.
//! `outboxctl man DIR` writes them; `outboxctl service install` installs them.

use std::path::Path;

use clap::CommandFactory;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};
use outboxd::exit_code;

use crate::output::Output;

/// One manual page: its file name, its section and its roff text.
pub struct Page {
    pub name: &'static str,
    pub section: &'static str,
    pub text: String,
}

/// Both pages.
pub fn pages() -> [Page; 2] {
    [
        Page {
            name: "outboxd.8",
            section: "man8",
            text: daemon_page(),
        },
        Page {
            name: "outboxctl.1",
            section: "man1",
            text: ctl_page(),
        },
    ]
}

/// `outboxctl man DIR`: writes `DIR/man8/outboxd.8` and `DIR/man1/outboxctl.1`.
pub fn write(dir: &Path, out: &Output) -> u8 {
    let mut written = Vec::new();
    for page in pages() {
        let path = dir.join(page.section).join(page.name);
        let wrote = std::fs::create_dir_all(path.parent().expect("has a parent"))
            .and_then(|()| std::fs::write(&path, &page.text));
        if let Err(e) = wrote {
            out.error(format!("could not write {}: {e}", path.display()));
            return exit_code::FAILURE;
        }
        written.push(path);
    }
    let text = written
        .iter()
        .map(|p| format!("wrote {}", p.display()))
        .collect::<Vec<_>>()
        .join("\n");
    out.result(text, serde_json::json!({ "written": written }));
    exit_code::OK
}

fn daemon_page() -> String {
    let man = Man::new(outboxd::cli::DaemonArgs::command())
        .section("8")
        .manual("outboxd");
    let mut roff = Roff::default();
    section(
        &mut roff,
        "EXIT STATUS",
        &[
            ("0", "stopped cleanly (SIGTERM, SIGINT or a stop request)"),
            (
                "1",
                "an error; the message says what failed, where, and what to do",
            ),
            (
                "3",
                "another daemon already holds the home's lock (already running)",
            ),
        ],
    );
    section(
        &mut roff,
        "SIGNALS",
        &[
            (
                "SIGTERM, SIGINT",
                "stop: the drain, then PostgreSQL, then exit 0",
            ),
            ("SIGHUP", "reopen the log file and reread config.toml"),
        ],
    );
    section(
        &mut roff,
        "ENVIRONMENT",
        &[
            ("OUTBOXD_HOME", "the home, as --home"),
            (
                "OUTBOXD_LOG",
                "the log filter (tracing EnvFilter syntax: debug, info,outboxd=debug)",
            ),
            (
                "NOTIFY_SOCKET, WATCHDOG_USEC",
                "the systemd notify protocol: READY=1, STATUS=, STOPPING=1, WATCHDOG=1",
            ),
            (
                "JOURNAL_STREAM",
                "when it names standard error, log lines carry no timestamp (journald adds one)",
            ),
        ],
    );
    section(
        &mut roff,
        "FILES",
        &[
            (
                "HOME/outboxd.lock",
                "the PID lock, held while the daemon runs",
            ),
            ("HOME/run/outboxd.sock", "the control socket"),
            ("HOME/outbox.db", "the SQLite spool"),
            ("HOME/config.toml", "optional configuration"),
            (
                "HOME/log/outboxd.log, HOME/log/postgres.log",
                "the logs (the daemon's own with --daemonize only)",
            ),
            ("HOME/pg/data", "the PostgreSQL cluster"),
        ],
    );
    see_also(
        &mut roff,
        "outboxctl(1), systemd.service(5), launchd.plist(5)",
    );
    assemble(&man, roff.render())
}

fn ctl_page() -> String {
    let mut command = crate::Cli::command();
    command.build();
    let mut roff = Roff::default();
    roff.control("SH", ["COMMANDS"]);
    let mut commands_text = roff.render();
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        commands(sub, &mut commands_text);
    }
    let mut roff = Roff::default();
    section(
        &mut roff,
        "EXIT STATUS",
        &[
            ("0", "done; status: running and healthy"),
            (
                "1",
                "failed; status: not running, but stale files or its PostgreSQL are left",
            ),
            ("2", "a mistake on the command line"),
            ("3", "not running; service status: nothing installed"),
            (
                "4",
                "unknown or not allowed (no such home, permission denied, not trusted)",
            ),
            ("150", "status: running but degraded"),
        ],
    );
    section(
        &mut roff,
        "ENVIRONMENT",
        &[
            ("OUTBOXD_HOME", "the home, as --home"),
            ("OUTBOXD_DATABASE_URL", "tail: an external PostgreSQL"),
        ],
    );
    see_also(&mut roff, "outboxd(8)");
    let man = Man::new(command).manual("outboxd");
    assemble(&man, commands_text + &roff.render())
}

/// A page: `man`'s title, name, synopsis, description and options, then
/// `body`, then the version.
fn assemble(man: &Man, body: String) -> String {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    for render in [
        Man::render_title,
        Man::render_name_section,
        Man::render_synopsis_section,
        Man::render_description_section,
        Man::render_options_section,
    ] {
        render(man, &mut head).expect("render into memory");
    }
    man.render_version_section(&mut tail)
        .expect("render into memory");
    let whole = String::from_utf8(head).expect("roff is UTF-8")
        + &body
        + &String::from_utf8(tail).expect("roff is UTF-8");
    // Each rendered part starts with the same two-line preamble; once is
    // enough.
    let mut seen = std::collections::HashSet::new();
    let mut page = String::new();
    for line in whole.lines() {
        let preamble = line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq");
        if !preamble || seen.insert(line) {
            page.push_str(line);
            page.push('\n');
        }
    }
    page
}

/// A subcommand on the page: a subsection with its synopsis, description
/// and options; or, for a group of subcommands, each of them.
fn commands(command: &clap::Command, text: &mut String) {
    let subs: Vec<&clap::Command> = command
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .collect();
    if !subs.is_empty() {
        for sub in subs {
            commands(sub, text);
        }
        return;
    }
    let name = command.get_bin_name().unwrap_or(command.get_name());
    let mut roff = Roff::default();
    roff.control("SS", [name]);
    text.push_str(&roff.render());
    // The global options (and help, version) are the page's, not each
    // command's.
    let mut own = command.clone();
    let shared: Vec<String> = command
        .get_arguments()
        .filter(|a| a.is_global_set() || matches!(a.get_id().as_str(), "help" | "version"))
        .map(|a| a.get_id().to_string())
        .collect();
    for id in shared {
        own = own.mut_arg(id, |a| a.hide(true));
    }
    let man = Man::new(own);
    let mut body = Vec::new();
    for render in [
        Man::render_synopsis_section,
        Man::render_description_section,
        Man::render_options_section,
    ] {
        render(&man, &mut body).expect("render into memory");
    }
    // A part's own heading would end the subsection: a paragraph instead.
    for line in String::from_utf8(body).expect("roff is UTF-8").lines() {
        match line {
            ".SH SYNOPSIS" => {}
            _ if line.starts_with(".SH ") => text.push_str(".PP\n"),
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
}

/// A section of tagged paragraphs.
fn section(roff: &mut Roff, title: &str, items: &[(&str, &str)]) {
    roff.control("SH", [title]);
    for (tag, text) in items {
        roff.control("TP", []);
        roff.text([bold(*tag)]);
        roff.text([roman(*text)]);
    }
}

fn see_also(roff: &mut Roff, pages: &str) {
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(pages)]);
}
