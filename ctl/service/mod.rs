//! `outboxctl service install|uninstall|status`: outboxd as a service of
//! the machine's service manager: a systemd unit on Linux, a launchd plist on
//! macOS; the system's (as the account `outboxd`, home `/var/lib/outboxd`)
//! or the user's (as the user, in the per-user home).
//!
//! The files written are the checked-in templates (`systemd/`, `launchd/`,
//! compiled in with `include_str!`) with their `{{PLACEHOLDERS}}` filled in,
//! so the repository's files and the installed ones never drift apart.
//! `install` also creates the account of a system install (Linux) and
//! installs the manual pages; it enables and starts nothing, and prints the
//! command that does. `uninstall` stops and disables the service (it cannot
//! run without its file), removes what `install` wrote, and leaves the data
//! and the account. `--dry-run` prints what would be done and does nothing.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use outboxd::exit_code;
use outboxd::paths::{self, SYSTEM_HOME};
use outboxd::quote;
use serde_json::{Value, json};

use crate::output::Output;

mod account;
mod plan;
mod probe;
mod render;

use account::*;
use plan::*;
use probe::*;
use render::*;

/// The account a system install runs as.
pub const ACCOUNT: &str = "outboxd";

const SYSTEM_UNIT: &str = include_str!("../../systemd/outboxd.service");

const USER_UNIT: &str = include_str!("../../systemd/outboxd-user.service");

const DAEMON_PLIST: &str = include_str!("../../launchd/com.outboxd.daemon.plist");

const AGENT_PLIST: &str = include_str!("../../launchd/com.outboxd.agent.plist");

/// The system's service or the user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    System,
    User,
}

/// Whose service manager the files are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// systemd.
    Linux,
    /// launchd.
    Macos,
}

impl Platform {
    pub fn parse(name: &str) -> Option<Platform> {
        match name {
            "linux" => Some(Platform::Linux),
            "macos" => Some(Platform::Macos),
            _ => None,
        }
    }

    /// This machine's.
    fn host() -> Platform {
        if cfg!(target_os = "macos") {
            Platform::Macos
        } else {
            Platform::Linux
        }
    }

    fn name(self) -> &'static str {
        match self {
            Platform::Linux => "linux",
            Platform::Macos => "macos",
        }
    }
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::System => "system",
            Scope::User => "user",
        }
    }
}

/// What the command line chose.
pub struct Target {
    pub scope: Option<Scope>,
    pub platform: Option<Platform>,
    /// `--home`, if given.
    pub home: Option<PathBuf>,
}

impl Target {
    /// This target for looking at or removing `scope`'s service: the system
    /// service's home is fixed, so `--home` (or `OUTBOXD_HOME`) does not
    /// matter to it; only `install` refuses one that differs.
    fn for_scope(&self, scope: Scope) -> Target {
        Target {
            scope: Some(scope),
            platform: self.platform,
            home: match scope {
                Scope::System => None,
                Scope::User => self.home.clone(),
            },
        }
    }
}

/// Which scope and platform the command line means: `--system` as root,
/// `--user` otherwise; this machine's service manager unless `--platform`.
fn resolve(target: &Target) -> (Scope, Platform) {
    let scope = target.scope.unwrap_or(if outboxd::process::euid() == 0 {
        Scope::System
    } else {
        Scope::User
    });
    (scope, target.platform.unwrap_or_else(Platform::host))
}

/// `outboxctl service install`.
pub fn install(target: &Target, dry_run: bool, outboxd: Option<&Path>, out: &Output) -> u8 {
    let (scope, platform) = resolve(target);
    finish(
        out,
        dry_run,
        Plan::new(target, scope, platform).and_then(|plan| {
            let exe = find_outboxd(outboxd)?;
            let mut steps = Vec::new();
            let mut notes = Vec::new();
            let mut problems = Vec::new();
            check_binary(&plan, &exe, &mut problems, &mut notes);
            if plan.scope == Scope::System {
                notes.extend(existing_home_owner(&plan.home));
            }
            account_steps(&plan, &mut steps, &mut notes, &mut problems)?;
            let content = plan.render(&exe)?;
            let updated =
                std::fs::read_to_string(&plan.file).is_ok_and(|installed| installed != content);
            if let Some(log) = &plan.log_file {
                let dir = log.parent().expect("a log file is in a directory");
                if !dir.exists() {
                    steps.push(Step::Dir {
                        path: dir.to_path_buf(),
                        mode: 0o700,
                        owner: (plan.scope == Scope::System).then(|| ACCOUNT.to_string()),
                    });
                }
            }
            steps.push(Step::Write {
                path: plan.file.clone(),
                mode: 0o644,
                kind: match plan.platform {
                    Platform::Linux => "systemd unit",
                    Platform::Macos => "launchd plist",
                },
                content,
            });
            for (path, page) in plan.man_pages() {
                steps.push(Step::Write {
                    path,
                    mode: 0o644,
                    kind: "manual page",
                    content: page.text,
                });
            }
            let status = quote::ctl(&plan.home, "status");
            let status = match plan.scope {
                Scope::System => format!("sudo {status}"),
                Scope::User => status,
            };
            notes.push(format!(
                "then `{status}` shows the daemon; the data lives in {}",
                plan.home.display()
            ));
            if plan.platform == Platform::Linux && plan.scope == Scope::User {
                notes.push(format!(
                    "to keep it running while you are logged out: `loginctl enable-linger {}`",
                    outboxd::account::name_of(outboxd::process::euid())
                ));
            }
            let extra = json!({"outboxd": exe});
            Ok(Done {
                next: Some(plan.next(updated)),
                plan,
                steps,
                problems,
                notes,
                extra,
            })
        }),
    )
}

/// `outboxctl service uninstall`.
pub fn uninstall(target: &Target, dry_run: bool, out: &Output) -> u8 {
    let (scope, platform) = resolve(target);
    finish(
        out,
        dry_run,
        Plan::new(&target.for_scope(scope), scope, platform).map(|plan| {
            let mut steps = Vec::new();
            let mut notes = Vec::new();
            let systemd = match plan.platform {
                Platform::Linux => manager_state(&plan).ok(),
                Platform::Macos => None,
            };
            match plan.platform {
                Platform::Linux => {
                    let manager = systemd.as_ref();
                    let enabled =
                        manager
                            .and_then(|m| m.get("UnitFileState"))
                            .is_some_and(|state| {
                                state.starts_with("enabled") || state.starts_with("linked")
                            });
                    let active = manager
                        .and_then(|m| m.get("ActiveState"))
                        .is_some_and(|state| state != "inactive");
                    if enabled || active {
                        let mut argv = plan.systemctl();
                        argv.extend(["disable", "--now", "outboxd"]);
                        steps.push(Step::Run {
                            argv: argv.into_iter().map(String::from).collect(),
                            why: "the service cannot run without its unit".into(),
                        });
                    }
                }
                Platform::Macos => {
                    if launchd_loaded(&plan) {
                        steps.push(Step::Run {
                            argv: vec!["launchctl".into(), "bootout".into(), plan.launchd_target()],
                            why: "the job cannot run without its plist".into(),
                        });
                    }
                }
            }
            let mut files = vec![plan.file.clone()];
            files.extend(plan.man_pages().into_iter().map(|(path, _)| path));
            for path in files {
                if path.exists() {
                    steps.push(Step::Remove { path });
                }
            }
            if systemd.is_some() && steps.iter().any(|s| matches!(s, Step::Remove { .. })) {
                let mut argv = plan.systemctl();
                argv.push("daemon-reload");
                steps.push(Step::Run {
                    argv: argv.into_iter().map(String::from).collect(),
                    why: "systemd forgets the unit".into(),
                });
            }
            if steps.is_empty() {
                notes.push(format!(
                    "nothing to uninstall: {} is not there",
                    plan.file.display()
                ));
            } else {
                notes.push(match plan.scope {
                    Scope::System => format!(
                        "the data stays in {home} and the account {ACCOUNT} stays; to remove \
                         them too: `rm -rf {home} && userdel {ACCOUNT}`",
                        home = quote::shell(&plan.home)
                    ),
                    Scope::User => format!(
                        "the data stays in {home}; to remove it too: `rm -rf {home}`",
                        home = quote::shell(&plan.home)
                    ),
                });
            }
            Done {
                plan,
                steps,
                problems: Vec::new(),
                notes,
                next: None,
                extra: json!({}),
            }
        }),
    )
}

/// What `install` or `uninstall` decided.
struct Done {
    plan: Plan,
    steps: Vec<Step>,
    /// Reasons not to install (shown, but not refused, by `--dry-run`).
    problems: Vec<String>,
    notes: Vec<String>,
    /// The command to run next.
    next: Option<String>,
    extra: Value,
}

/// Carries out (or, with `--dry-run`, prints) what was decided.
fn finish(out: &Output, dry_run: bool, decided: Result<Done, Failure>) -> u8 {
    let done = match decided {
        Ok(done) => done,
        Err(failure) => {
            out.error(&failure.message);
            return failure.code;
        }
    };
    let plan = &done.plan;
    if !dry_run {
        if plan.platform != Platform::host() {
            out.error(format!(
                "--platform {} writes files for another operating system: only with --dry-run",
                plan.platform.name()
            ));
            return exit_code::FAILURE;
        }
        if plan.scope == Scope::System && outboxd::process::euid() != 0 {
            out.error("the system service is installed by root: run this with sudo, or use --user");
            return exit_code::UNKNOWN;
        }
        if !done.problems.is_empty() {
            out.error(done.problems.join("; "));
            return exit_code::FAILURE;
        }
    }
    let next = &done.next;
    let mut text = String::new();
    let mut performed = Vec::new();
    for step in &done.steps {
        if !dry_run && let Err(failure) = step.perform() {
            for line in &performed {
                out.progress(line);
            }
            out.error(&failure.message);
            return failure.code;
        }
        let line = step.describe(dry_run);
        if dry_run
            && let Step::Write {
                kind: "systemd unit" | "launchd plist",
                content,
                ..
            } = step
        {
            let _ = write!(text, "{line}:\n{}\n", indent(content));
        } else {
            let _ = writeln!(text, "{line}");
        }
        performed.push(line);
    }
    for problem in &done.problems {
        let _ = writeln!(text, "problem: {problem}");
    }
    for note in &done.notes {
        let _ = writeln!(text, "{note}");
    }
    if let Some(next) = next {
        let _ = writeln!(text, "next: {next}");
    }
    let mut json = done.extra.clone();
    json["dry_run"] = json!(dry_run);
    json["service"] = plan.json();
    json["steps"] = done.steps.iter().map(Step::json).collect();
    json["notes"] = json!(done.notes);
    if !done.problems.is_empty() {
        json["problems"] = json!(done.problems);
    }
    json["next"] = json!(next);
    out.result(text.trim_end(), json);
    exit_code::OK
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `outboxctl service status`: what is installed where (both scopes unless
/// one is named), and what the service manager says of it. Exit 0 when
/// something is installed, 3 when nothing is.
pub fn status(target: &Target, out: &Output) -> u8 {
    let platform = target.platform.unwrap_or_else(Platform::host);
    let scopes = match target.scope {
        Some(scope) => vec![scope],
        None => vec![Scope::System, Scope::User],
    };
    let exe = find_outboxd(None).ok();
    let mut text = String::new();
    let mut reports = Vec::new();
    let mut any = false;
    for scope in scopes {
        let plan = match Plan::new(&target.for_scope(scope), scope, platform) {
            Ok(plan) => plan,
            Err(failure) => {
                let _ = writeln!(text, "{} service: {}", scope.name(), failure.message);
                reports.push(json!({"scope": scope.name(), "error": failure.message}));
                continue;
            }
        };
        let installed = std::fs::read_to_string(&plan.file).ok();
        any |= installed.is_some();
        let current = exe.as_ref().and_then(|exe| plan.render(exe).ok());
        let state = match (&installed, &current) {
            (None, _) => "not installed".to_string(),
            (Some(file), Some(now)) if file == now => "installed, up to date".to_string(),
            (Some(_), Some(_)) => format!(
                "installed, but not what `outboxctl service install --{}` would write now \
                 (another outboxd binary, another version, or edited)",
                scope.name()
            ),
            (Some(_), None) => "installed".to_string(),
        };
        let _ = writeln!(text, "{} service ({})", scope.name(), plan.platform.name());
        let _ = writeln!(text, "  file      {}: {state}", plan.file.display());
        let pages: Vec<(PathBuf, bool)> = plan
            .man_pages()
            .into_iter()
            .map(|(path, _)| {
                let there = path.exists();
                (path, there)
            })
            .collect();
        for (path, there) in &pages {
            let _ = writeln!(
                text,
                "  man page  {}: {}",
                path.display(),
                if *there { "installed" } else { "not installed" }
            );
        }
        let home_state = if plan.home.is_dir() {
            "exists"
        } else {
            "not created yet"
        };
        let _ = writeln!(text, "  home      {} ({home_state})", plan.home.display());
        if scope == Scope::System {
            let account = outboxd::account::by_name(ACCOUNT).ok().flatten();
            let _ = writeln!(
                text,
                "  account   {ACCOUNT}: {}",
                account.as_ref().map_or("missing".into(), |a| format!(
                    "uid {}, gid {}",
                    a.uid, a.gid
                ))
            );
        }
        let manager = match plan.platform {
            Platform::Linux => match manager_state(&plan) {
                Ok(props) => {
                    let get = |k: &str| props.get(k).map_or("?", String::as_str);
                    let _ = writeln!(
                        text,
                        "  systemd   {} ({}), {} ({}), main pid {}",
                        get("LoadState"),
                        get("UnitFileState"),
                        get("ActiveState"),
                        get("SubState"),
                        get("MainPID")
                    );
                    json!(props)
                }
                Err(why) => {
                    let _ = writeln!(text, "  systemd   unknown: {why}");
                    json!({"error": why})
                }
            },
            Platform::Macos => {
                let loaded = launchd_loaded(&plan);
                let _ = writeln!(
                    text,
                    "  launchd   {} {}",
                    plan.launchd_target(),
                    if loaded { "loaded" } else { "not loaded" }
                );
                json!({"loaded": loaded})
            }
        };
        let mut report = plan.json();
        report["installed"] = json!(installed.is_some());
        report["state"] = json!(state);
        report["man_pages"] = pages
            .iter()
            .map(|(path, there)| json!({"path": path, "installed": there}))
            .collect();
        report["home_exists"] = json!(plan.home.is_dir());
        report["manager"] = manager;
        reports.push(report);
    }
    out.result(text.trim_end(), json!({"services": reports}));
    if any {
        exit_code::OK
    } else {
        exit_code::NOT_RUNNING
    }
}

#[cfg(test)]
mod tests;

/// A home that is already there and is not the service account's:
/// systemd's `StateDirectory=` gives it, recursively, to that account at
/// the first start.
fn existing_home_owner(home: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(home).ok()?;
    let owner = outboxd::account::name_of(meta.uid());
    (owner != ACCOUNT).then(|| {
        format!(
            "{} exists and belongs to {owner}: at its first start systemd gives it and \
             everything in it to {ACCOUNT} (StateDirectory=), and the daemon then runs as \
             {ACCOUNT}; if {owner}'s daemon runs there, stop it first (`{}`)",
            home.display(),
            quote::ctl(home, "stop")
        )
    })
}
