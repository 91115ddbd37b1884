//! What is there already: the service manager's view of the unit, and the
//! `outboxd` binary a unit would run.

use super::*;

/// What systemd says of the unit (`systemctl show`), or why it cannot be
/// asked (no systemctl, systemd not running, no user manager).
pub(super) fn manager_state(
    plan: &Plan,
) -> Result<std::collections::BTreeMap<String, String>, String> {
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
pub(super) fn launchd_loaded(plan: &Plan) -> bool {
    Command::new("launchctl")
        .args(["print", &plan.launchd_target()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The daemon binary the service runs: `--outboxd`, else `outboxd` next to
/// this `outboxctl`, else on `PATH`; absolute.
pub(super) fn find_outboxd(chosen: Option<&Path>) -> Result<PathBuf, Failure> {
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

pub(super) fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether a system service can run `exe` (else a problem: install
/// refuses), and whether others than root could replace it (a warning).
pub(super) fn check_binary(
    plan: &Plan,
    exe: &Path,
    problems: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    if plan.scope == Scope::User {
        return;
    }
    let fix = format!(
        "copy it where the service can run it (install -m 0755 {} {}/outboxctl /usr/local/bin/) \
         and run /usr/local/bin/outboxctl service install",
        quote::shell(exe),
        quote::shell(exe.parent().unwrap_or(Path::new(".")))
    );
    if plan.platform == Platform::Linux {
        // Checked as named and as resolved: a link in /usr/local/bin to a
        // build in /tmp is as hidden as the build.
        let resolved = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
        for (dirs, setting) in [
            (&["/home", "/root", "/run/user"][..], "ProtectHome="),
            (&["/tmp", "/var/tmp"][..], "PrivateTmp="),
        ] {
            let hidden = [exe, resolved.as_path()]
                .into_iter()
                .find(|path| dirs.iter().any(|dir| path.starts_with(dir)));
            if let Some(path) = hidden {
                let via = match path == exe {
                    true => String::new(),
                    false => format!(" (it is a link to {})", path.display()),
                };
                problems.push(format!(
                    "{}{via} is under a directory that the unit's {setting} hides from the \
                     service (it would fail with status 203/EXEC); {fix}",
                    exe.display()
                ));
                return;
            }
        }
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
