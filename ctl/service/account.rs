//! The account of a system install (Linux): `outboxd`, made when missing.

use super::*;

/// The account of a system install: created on Linux when missing; on
/// macOS it must exist (the plist names it).
pub(super) fn account_steps(
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
