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

/// The account a system install runs as.
pub const ACCOUNT: &str = "outboxd";

const SYSTEM_UNIT: &str = include_str!("../systemd/outboxd.service");
const USER_UNIT: &str = include_str!("../systemd/outboxd-user.service");
const DAEMON_PLIST: &str = include_str!("../launchd/com.outboxd.daemon.plist");
const AGENT_PLIST: &str = include_str!("../launchd/com.outboxd.agent.plist");

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

/// Why a service command failed, with its exit code.
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: exit_code::FAILURE,
        }
    }

    fn denied(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: exit_code::UNKNOWN,
        }
    }
}

/// Where everything of one (platform, scope) goes.
struct Plan {
    platform: Platform,
    scope: Scope,
    /// The daemon's home.
    home: PathBuf,
    /// The unit or plist.
    file: PathBuf,
    template: &'static str,
    /// `<prefix>/share/man`.
    man_dir: PathBuf,
    /// launchd: where the daemon's standard error goes.
    log_file: Option<PathBuf>,
    /// The user's home directory (for `%h` and `~`), in a user scope.
    user_dir: Option<PathBuf>,
}

impl Plan {
    fn new(target: &Target, scope: Scope, platform: Platform) -> Result<Plan, Failure> {
        let plan = match scope {
            Scope::System => {
                if let Some(home) = &target.home
                    && home != Path::new(SYSTEM_HOME)
                {
                    return Err(Failure::new(format!(
                        "the system service keeps its home in {SYSTEM_HOME} (--home or \
                         OUTBOXD_HOME says {}); install the per-user service with --user for \
                         another home, or leave --home out",
                        home.display()
                    )));
                }
                let (file, template, log_file) = match platform {
                    Platform::Linux => (
                        PathBuf::from("/etc/systemd/system/outboxd.service"),
                        SYSTEM_UNIT,
                        None,
                    ),
                    Platform::Macos => (
                        PathBuf::from("/Library/LaunchDaemons/com.outboxd.daemon.plist"),
                        DAEMON_PLIST,
                        Some(PathBuf::from("/Library/Logs/outboxd/outboxd.log")),
                    ),
                };
                Plan {
                    platform,
                    scope,
                    home: PathBuf::from(SYSTEM_HOME),
                    file,
                    template,
                    man_dir: PathBuf::from("/usr/local/share/man"),
                    log_file,
                    user_dir: None,
                }
            }
            Scope::User => {
                let dir = paths::user_home()
                    .map_err(|e| Failure::new(format!("no home directory: {e}")))?;
                let home = match &target.home {
                    Some(home) => std::path::absolute(home)
                        .map_err(|e| Failure::new(format!("{}: {e}", home.display())))?,
                    None => paths::per_user_home(platform == Platform::Macos)
                        .map_err(|e| Failure::new(e.to_string()))?,
                };
                let (file, template, log_file) = match platform {
                    Platform::Linux => {
                        let config = std::env::var_os("XDG_CONFIG_HOME")
                            .map(PathBuf::from)
                            .filter(|p| p.is_absolute())
                            .unwrap_or_else(|| dir.join(".config"));
                        (config.join("systemd/user/outboxd.service"), USER_UNIT, None)
                    }
                    Platform::Macos => (
                        dir.join("Library/LaunchAgents/com.outboxd.agent.plist"),
                        AGENT_PLIST,
                        Some(dir.join("Library/Logs/outboxd/outboxd.log")),
                    ),
                };
                Plan {
                    platform,
                    scope,
                    home,
                    file,
                    template,
                    man_dir: dir.join(".local/share/man"),
                    log_file,
                    user_dir: Some(dir),
                }
            }
        };
        Ok(plan)
    }

    /// The unit or plist with the placeholders filled in.
    fn render(&self, outboxd: &Path) -> Result<String, Failure> {
        let values = match self.platform {
            Platform::Linux => vec![
                ("OUTBOXD", systemd_word(utf8(outboxd)?)?),
                ("HOME", self.systemd_home()?),
            ],
            Platform::Macos => {
                let mut values = vec![
                    ("OUTBOXD", xml_escape(utf8(outboxd)?)?),
                    ("HOME", xml_escape(utf8(&self.home)?)?),
                ];
                if let Some(log) = &self.log_file {
                    values.push(("LOG", xml_escape(utf8(log)?)?));
                }
                values
            }
        };
        Ok(fill(self.template, &values))
    }

    /// The home as an `ExecStart=` word: `%h/...` when it is in the user's
    /// home directory.
    fn systemd_home(&self) -> Result<String, Failure> {
        let home = utf8(&self.home)?;
        if let Some(dir) = &self.user_dir
            && let Ok(rest) = self.home.strip_prefix(dir)
            && rest.components().all(|c| matches!(c, Component::Normal(_)))
        {
            let rest = rest.to_str().expect("part of a UTF-8 path");
            if rest.is_empty() {
                return Ok("%h".into());
            }
            let (escaped, quote) = systemd_escape(rest)?;
            return Ok(match quote {
                true => format!("\"%h/{escaped}\""),
                false => format!("%h/{escaped}"),
            });
        }
        systemd_word(home)
    }

    fn man_pages(&self) -> Vec<(PathBuf, crate::man::Page)> {
        crate::man::pages()
            .into_iter()
            .map(|page| (self.man_dir.join(page.section).join(page.name), page))
            .collect()
    }

    /// `systemctl` or `systemctl --user`.
    fn systemctl(&self) -> Vec<&'static str> {
        match self.scope {
            Scope::System => vec!["systemctl"],
            Scope::User => vec!["systemctl", "--user"],
        }
    }

    /// launchd's name of the job: `system/LABEL` or `gui/UID/LABEL`.
    fn launchd_target(&self) -> String {
        match self.scope {
            Scope::System => "system/com.outboxd.daemon".into(),
            Scope::User => format!("gui/{}/com.outboxd.agent", outboxd::process::euid()),
        }
    }

    /// The command that enables and starts the installed service.
    fn next(&self, updated: bool) -> String {
        match self.platform {
            Platform::Linux => {
                let ctl = self.systemctl().join(" ");
                if updated {
                    format!("{ctl} daemon-reload && {ctl} try-restart outboxd")
                } else {
                    format!("{ctl} daemon-reload && {ctl} enable --now outboxd")
                }
            }
            Platform::Macos => {
                let domain = match self.scope {
                    Scope::System => "system".to_string(),
                    Scope::User => format!("gui/{}", outboxd::process::euid()),
                };
                let bootstrap =
                    format!("launchctl bootstrap {domain} {}", quote::shell(&self.file));
                if updated {
                    format!("launchctl bootout {} ; {bootstrap}", self.launchd_target())
                } else {
                    bootstrap
                }
            }
        }
    }

    fn json(&self) -> Value {
        json!({
            "platform": self.platform.name(),
            "scope": self.scope.name(),
            "file": self.file,
            "home": self.home,
        })
    }
}

/// One thing `install` or `uninstall` does.
enum Step {
    /// Run a command (useradd, systemctl, launchctl).
    Run { argv: Vec<String>, why: String },
    /// Make a directory that is missing, for `owner` (an account name).
    Dir {
        path: PathBuf,
        mode: u32,
        owner: Option<String>,
    },
    /// Write a file (atomically, mode `mode`).
    Write {
        path: PathBuf,
        mode: u32,
        kind: &'static str,
        content: String,
    },
    /// Remove a file.
    Remove { path: PathBuf },
}

impl Step {
    fn describe(&self, dry_run: bool) -> String {
        match self {
            Step::Run { argv, why } => {
                let line = argv.join(" ");
                let run = if dry_run { "would run" } else { "ran" };
                format!("{run} `{line}` ({why})")
            }
            Step::Dir { path, mode, owner } => format!(
                "{} {} (mode {mode:04o}{})",
                if dry_run { "would create" } else { "created" },
                path.display(),
                owner
                    .as_ref()
                    .map_or(String::new(), |o| format!(", owner {o}"))
            ),
            Step::Write {
                path, mode, kind, ..
            } => {
                let write = if dry_run { "would write" } else { "wrote" };
                format!("{write} {} ({kind}, mode {mode:04o})", path.display())
            }
            Step::Remove { path } => {
                let remove = if dry_run { "would remove" } else { "removed" };
                format!("{remove} {}", path.display())
            }
        }
    }

    fn json(&self) -> Value {
        match self {
            Step::Run { argv, why } => json!({"run": argv, "why": why}),
            Step::Dir { path, mode, owner } => {
                json!({"mkdir": path, "mode": format!("{mode:04o}"), "owner": owner})
            }
            Step::Write {
                path,
                mode,
                kind,
                content,
            } => json!({
                "write": path,
                "mode": format!("{mode:04o}"),
                "kind": kind,
                "content": content,
            }),
            Step::Remove { path } => json!({"remove": path}),
        }
    }

    fn perform(&self) -> Result<(), Failure> {
        match self {
            Step::Run { argv, .. } => {
                let output = Command::new(&argv[0])
                    .args(&argv[1..])
                    .output()
                    .map_err(|e| Failure::new(format!("could not run {}: {e}", argv[0])))?;
                if !output.status.success() {
                    return Err(Failure::new(format!(
                        "`{}` failed ({}): {}",
                        argv.join(" "),
                        output.status,
                        String::from_utf8_lossy(&output.stderr).trim()
                    )));
                }
                Ok(())
            }
            Step::Dir { path, mode, owner } => {
                make_dir(path, *mode).map_err(|e| failed_at("create", path, e))?;
                if let Some(owner) = owner {
                    let account = outboxd::account::by_name(owner)
                        .ok()
                        .flatten()
                        .ok_or_else(|| Failure::new(format!("no account {owner}")))?;
                    std::os::unix::fs::lchown(path, Some(account.uid), Some(account.gid))
                        .map_err(|e| failed_at("give to the account", path, e))?;
                }
                Ok(())
            }
            Step::Write {
                path,
                mode,
                content,
                ..
            } => write_file(path, *mode, content).map_err(|e| failed_at("write", path, e)),
            Step::Remove { path } => match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(failed_at("remove", path, e)),
            },
        }
    }
}

fn failed_at(what: &str, path: &Path, e: std::io::Error) -> Failure {
    let message = format!("could not {what} {}: {e}", path.display());
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        Failure::denied(message)
    } else {
        Failure::new(message)
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

/// What systemd says of the unit (`systemctl show`), or why it cannot be
/// asked (no systemctl, systemd not running, no user manager).
fn manager_state(plan: &Plan) -> Result<std::collections::BTreeMap<String, String>, String> {
    let argv = plan.systemctl();
    let output = Command::new(argv[0])
        .args(&argv[1..])
        .args([
            "show",
            "-p",
            "LoadState,UnitFileState,ActiveState,SubState,MainPID,FragmentPath",
            "outboxd.service",
        ])
        .output()
        .map_err(|e| format!("could not run systemctl: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(stderr
            .lines()
            .next()
            .unwrap_or("systemctl failed")
            .to_string());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Whether launchd has the job loaded (`launchctl print` knows it).
fn launchd_loaded(plan: &Plan) -> bool {
    Command::new("launchctl")
        .args(["print", &plan.launchd_target()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The daemon binary the service runs: `--outboxd`, else `outboxd` next to
/// this `outboxctl`, else on `PATH`; absolute.
fn find_outboxd(chosen: Option<&Path>) -> Result<PathBuf, Failure> {
    let found = match chosen {
        Some(path) => Some(path.to_path_buf()),
        None => {
            let exe = crate::start::daemon_exe();
            if exe.is_absolute() {
                Some(exe)
            } else {
                std::env::var_os("PATH").and_then(|path| {
                    std::env::split_paths(&path)
                        .map(|dir| dir.join("outboxd"))
                        .find(|candidate| is_executable(candidate))
                })
            }
        }
    };
    let Some(found) = found else {
        return Err(Failure::new(
            "found no outboxd binary next to outboxctl or on PATH; install it there \
             (install -m 0755 target/release/outboxd /usr/local/bin/), or name it with \
             --outboxd PATH",
        ));
    };
    let found = std::path::absolute(&found)
        .map_err(|e| Failure::new(format!("{}: {e}", found.display())))?;
    if !is_executable(&found) {
        return Err(Failure::new(format!(
            "{} is not an executable file",
            found.display()
        )));
    }
    Ok(found)
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether a system service can run `exe` (else a problem: install
/// refuses), and whether others than root could replace it (a warning).
fn check_binary(plan: &Plan, exe: &Path, problems: &mut Vec<String>, notes: &mut Vec<String>) {
    if plan.scope == Scope::User {
        return;
    }
    let fix = format!(
        "copy it where the service can run it (install -m 0755 {} {}/outboxctl /usr/local/bin/) \
         and run /usr/local/bin/outboxctl service install",
        quote::shell(exe),
        quote::shell(exe.parent().unwrap_or(Path::new(".")))
    );
    if plan.platform == Platform::Linux
        && ["/home", "/root", "/run/user"]
            .iter()
            .any(|hidden| exe.starts_with(hidden))
    {
        problems.push(format!(
            "{} is under a directory that ProtectHome= hides from the service; {fix}",
            exe.display()
        ));
        return;
    }
    let mut replaceable = None;
    for current in exe.ancestors() {
        let Ok(meta) = std::fs::metadata(current) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            problems.push(format!(
                "the account {ACCOUNT} cannot reach {} ({} is mode {:04o}); {fix}",
                exe.display(),
                current.display(),
                mode & 0o7777
            ));
            return;
        }
        // A sticky directory (/var/tmp) lets no one else rename what is in it.
        let sticky = mode & 0o1000 != 0 && current != exe;
        if replaceable.is_none() && (meta.uid() != 0 || (mode & 0o022 != 0 && !sticky)) {
            replaceable = Some(format!(
                "warning: {} can be replaced by others than root ({} is {}'s, mode {:04o}), \
                 and the service would run what they put there; {fix}",
                exe.display(),
                current.display(),
                outboxd::account::name_of(meta.uid()),
                mode & 0o7777
            ));
        }
    }
    notes.extend(replaceable);
}

/// The account of a system install: created on Linux when missing; on
/// macOS it must exist (the plist names it).
fn account_steps(
    plan: &Plan,
    steps: &mut Vec<Step>,
    notes: &mut Vec<String>,
    problems: &mut Vec<String>,
) -> Result<(), Failure> {
    if plan.scope != Scope::System {
        return Ok(());
    }
    let exists = outboxd::account::by_name(ACCOUNT)
        .map_err(|e| Failure::new(e.to_string()))?
        .is_some();
    match plan.platform {
        Platform::Linux => {
            if exists {
                notes.push(format!("the account {ACCOUNT} exists"));
            } else {
                let shell = ["/usr/sbin/nologin", "/sbin/nologin"]
                    .into_iter()
                    .find(|p| Path::new(p).exists())
                    .unwrap_or("/bin/false");
                steps.push(Step::Run {
                    argv: [
                        "useradd",
                        "--system",
                        "--user-group",
                        "--no-create-home",
                        "--home-dir",
                        SYSTEM_HOME,
                        "--shell",
                        shell,
                        ACCOUNT,
                    ]
                    .map(String::from)
                    .to_vec(),
                    why: format!("the account the service runs as; systemd makes {SYSTEM_HOME}"),
                });
            }
        }
        Platform::Macos => {
            if !exists {
                problems.push(format!(
                    "the account {ACCOUNT} does not exist: create it (a hidden role account, \
                     for example with dscl: UniqueID and PrimaryGroupID below 500, \
                     UserShell /usr/bin/false, NFSHomeDirectory {SYSTEM_HOME}), then run \
                     this again"
                ));
            }
            if !plan.home.exists() {
                steps.push(Step::Dir {
                    path: plan.home.clone(),
                    mode: 0o700,
                    owner: Some(ACCOUNT.to_string()),
                });
            }
        }
    }
    Ok(())
}

/// `template` with each `{{NAME}}` replaced by its value, in one pass (a
/// value is never searched for placeholders).
fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .map(|end| start + end)
            .expect("a placeholder is closed");
        let name = &rest[start + 2..end];
        let value = values
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("the template's placeholder {name} has no value"));
        out.push_str(&value.1);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `text` as one word of an `ExecStart=` line: specifiers (`%`) and
/// variables (`$`) escaped, quoted when it holds blanks or quotes.
fn systemd_word(text: &str) -> Result<String, Failure> {
    let (escaped, quote) = systemd_escape(text)?;
    Ok(match quote {
        true => format!("\"{escaped}\""),
        false => escaped,
    })
}

/// `text` escaped for a unit file, and whether it needs double quotes.
fn systemd_escape(text: &str) -> Result<(String, bool), Failure> {
    if text.chars().any(char::is_control) {
        return Err(Failure::new(format!(
            "{text:?} holds a control character, which a unit file cannot hold"
        )));
    }
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    let quote = text.contains(|c: char| c.is_whitespace() || "\"'\\;".contains(c));
    Ok((escaped, quote))
}

/// A path as text; a service file holds UTF-8 only.
fn utf8(path: &Path) -> Result<&str, Failure> {
    path.to_str().ok_or_else(|| {
        Failure::new(format!(
            "{} is not UTF-8, which a service file cannot hold",
            path.display()
        ))
    })
}

/// `text` for an XML string element.
fn xml_escape(text: &str) -> Result<String, Failure> {
    if text.chars().any(char::is_control) {
        return Err(Failure::new(format!(
            "{text:?} holds a control character, which a plist cannot hold"
        )));
    }
    Ok(text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;"))
}

/// Makes `path` (mode `mode`) and any missing parents (0755).
fn make_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Writes `content` to `path` atomically (a temporary file in the same
/// directory, renamed over it), with mode `mode`; makes missing parents.
fn write_file(path: &Path, mode: u32, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("an absolute file path");
    make_dir(dir, 0o755)?;
    let mut file = tempfile::Builder::new()
        .prefix(".outboxctl-")
        .tempfile_in(dir)?;
    file.write_all(content.as_bytes())?;
    file.as_file().sync_all()?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_escaped_for_systemd() {
        assert_eq!(
            systemd_word("/usr/bin/outboxd").ok().unwrap(),
            "/usr/bin/outboxd"
        );
        assert_eq!(
            systemd_word("/opt/a b/outboxd").ok().unwrap(),
            "\"/opt/a b/outboxd\""
        );
        assert_eq!(systemd_word("/opt/100%/$x").ok().unwrap(), "/opt/100%%/$$x");
        assert_eq!(systemd_word("/a\"b").ok().unwrap(), "\"/a\\\"b\"");
        assert!(systemd_word("/a\nb").is_err());
    }

    #[test]
    fn the_home_is_written_relative_to_h() {
        let plan = |home: &str| Plan {
            platform: Platform::Linux,
            scope: Scope::User,
            home: PathBuf::from(home),
            file: PathBuf::from("/x"),
            template: USER_UNIT,
            man_dir: PathBuf::from("/m"),
            log_file: None,
            user_dir: Some(PathBuf::from("/home/me")),
        };
        let home = |h: &str| plan(h).systemd_home().ok().unwrap();
        assert_eq!(
            home("/home/me/.local/state/outboxd"),
            "%h/.local/state/outboxd"
        );
        assert_eq!(home("/home/me/my data/ob"), "\"%h/my data/ob\"");
        assert_eq!(home("/home/me"), "%h");
        assert_eq!(home("/srv/ob"), "/srv/ob");
        assert_eq!(home("/home/meself/ob"), "/home/meself/ob");
    }

    #[test]
    fn every_template_is_filled_and_values_are_not_searched() {
        let values = [
            ("OUTBOXD", "/opt/{{HOME}}/outboxd".to_string()),
            ("HOME", "/h".to_string()),
            ("LOG", "/l".to_string()),
        ];
        for template in [SYSTEM_UNIT, USER_UNIT, DAEMON_PLIST, AGENT_PLIST] {
            let filled = fill(template, &values);
            assert!(filled.contains("/opt/{{HOME}}/outboxd"), "{filled}");
            assert_eq!(filled.matches("{{").count(), 1, "{filled}");
        }
    }

    #[test]
    fn xml_is_escaped() {
        assert_eq!(xml_escape("/a&b<c>").ok().unwrap(), "/a&amp;b&lt;c&gt;");
    }
}
