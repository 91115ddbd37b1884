//! A plan: the steps an install or uninstall takes (directories, files,
//! the account, the manager's commands), shown by `--dry-run` and carried
//! out in order, and the failure that stops it.

use super::*;

/// Why a service command failed, with its exit code.
pub(super) struct Failure {
    pub(super) message: String,
    pub(super) code: u8,
}

impl Failure {
    pub(super) fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: exit_code::FAILURE,
        }
    }

    pub(super) fn denied(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: exit_code::UNKNOWN,
        }
    }
}

/// Where everything of one (platform, scope) goes.
pub(super) struct Plan {
    pub(super) platform: Platform,
    pub(super) scope: Scope,
    /// The daemon's home.
    pub(super) home: PathBuf,
    /// The unit or plist.
    pub(super) file: PathBuf,
    pub(super) template: &'static str,
    /// `<prefix>/share/man`.
    pub(super) man_dir: PathBuf,
    /// launchd: where the daemon's standard error goes.
    pub(super) log_file: Option<PathBuf>,
    /// The user's home directory (for `%h` and `~`), in a user scope.
    pub(super) user_dir: Option<PathBuf>,
}

impl Plan {
    pub(super) fn new(target: &Target, scope: Scope, platform: Platform) -> Result<Plan, Failure> {
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
    pub(super) fn render(&self, outboxd: &Path) -> Result<String, Failure> {
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
    pub(super) fn systemd_home(&self) -> Result<String, Failure> {
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

    pub(super) fn man_pages(&self) -> Vec<(PathBuf, crate::man::Page)> {
        crate::man::pages()
            .into_iter()
            .map(|page| (self.man_dir.join(page.section).join(page.name), page))
            .collect()
    }

    /// `systemctl` or `systemctl --user`.
    pub(super) fn systemctl(&self) -> Vec<&'static str> {
        match self.scope {
            Scope::System => vec!["systemctl"],
            Scope::User => vec!["systemctl", "--user"],
        }
    }

    /// launchd's name of the job: `system/LABEL` or `gui/UID/LABEL`.
    pub(super) fn launchd_target(&self) -> String {
        match self.scope {
            Scope::System => "system/com.outboxd.daemon".into(),
            Scope::User => format!("gui/{}/com.outboxd.agent", outboxd::process::euid()),
        }
    }

    /// The command that enables and starts the installed service.
    pub(super) fn next(&self, updated: bool) -> String {
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

    pub(super) fn json(&self) -> Value {
        json!({
            "platform": self.platform.name(),
            "scope": self.scope.name(),
            "file": self.file,
            "home": self.home,
        })
    }
}

/// One thing `install` or `uninstall` does.
pub(super) enum Step {
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
    pub(super) fn describe(&self, dry_run: bool) -> String {
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

    pub(super) fn json(&self) -> Value {
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

    pub(super) fn perform(&self) -> Result<(), Failure> {
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

pub(super) fn failed_at(what: &str, path: &Path, e: std::io::Error) -> Failure {
    let message = format!("could not {what} {}: {e}", path.display());
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        Failure::denied(message)
    } else {
        Failure::new(message)
    }
}

/// Makes `path` (mode `mode`) and any missing parents (0755).
pub(super) fn make_dir(path: &Path, mode: u32) -> std::io::Result<()> {
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
pub(super) fn write_file(path: &Path, mode: u32, content: &str) -> std::io::Result<()> {
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
