//! `outboxctl service install|uninstall|status` on Windows: outboxd as a
//! service of the Windows service control manager, run as `LocalSystem`
//! with its home in `C:\ProgramData\outboxd` (or `--home`). `install`
//! registers `outboxd.exe --windows-service --daemonize --home <home>` (its
//! log in the home's `log\outboxd.log`) to start with
//! the machine (it starts nothing now, and prints the command that does);
//! `uninstall` stops the service and removes its registration, leaving the
//! data; `status` says what the service manager knows. A Windows service
//! belongs to the machine: `--user` is refused, with what to do instead.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outboxd::exit_code;
use outboxd::paths::SYSTEM_HOME;
use serde_json::json;
use windows_service::service::{
    ServiceAccess, ServiceErrorControl, ServiceInfo, ServiceStartType, ServiceState, ServiceType,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use crate::output::Output;

/// The service's name (the daemon's `SERVICE_NAME`).
const NAME: &str = "outboxd";

/// The system's service or the user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    System,
    User,
}

/// Whose service manager the files are for (Unix's only: `--platform`
/// writes unit files, which mean nothing here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {}

impl Platform {
    pub fn parse(_name: &str) -> Option<Platform> {
        None
    }
}

/// What the command line chose.
pub struct Target {
    pub scope: Option<Scope>,
    #[expect(dead_code, reason = "no platform parses on Windows")]
    pub platform: Option<Platform>,
    /// `--home`, if given.
    pub home: Option<PathBuf>,
}

/// A failure, said as `outboxctl` says errors.
fn fail(out: &Output, message: String) -> u8 {
    out.error(message);
    exit_code::FAILURE
}

fn refuse_user(target: &Target, out: &Output) -> Option<u8> {
    (target.scope == Some(Scope::User)).then(|| {
        fail(
            out,
            "a Windows service belongs to the machine: run `outboxctl service install --system` \
             as an administrator, or, for a daemon of your own, run `outboxctl start` at logon \
             (for example from a Task Scheduler task)"
                .into(),
        )
    })
}

fn manager(access: ServiceManagerAccess) -> Result<ServiceManager, String> {
    ServiceManager::local_computer(None::<&str>, access).map_err(|e| {
        format!("could not open the Windows service manager ({e}); run this as an administrator")
    })
}

/// `outboxctl service install`.
pub fn install(target: &Target, dry_run: bool, outboxd: Option<&Path>, out: &Output) -> u8 {
    if let Some(code) = refuse_user(target, out) {
        return code;
    }
    let exe = outboxd.map_or_else(crate::start::daemon_exe, Path::to_path_buf);
    if !exe.is_file() {
        return fail(
            out,
            format!(
                "{} is not a file: pass --outboxd with the path of outboxd.exe",
                exe.display()
            ),
        );
    }
    let home = target
        .home
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_HOME));
    let arguments = vec![
        OsString::from("--windows-service"),
        OsString::from("--daemonize"),
        OsString::from("--home"),
        home.clone().into_os_string(),
    ];
    let what = format!(
        "the Windows service {NAME}: {} --windows-service --daemonize --home {}, as LocalSystem, \
         started with the machine",
        exe.display(),
        home.display()
    );
    if dry_run {
        out.result(
            format!("would register {what}"),
            json!({"dry_run": true, "service": NAME, "executable": exe, "home": home}),
        );
        return exit_code::OK;
    }
    let info = ServiceInfo {
        name: OsString::from(NAME),
        display_name: OsString::from("outboxd"),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe.clone(),
        launch_arguments: arguments,
        dependencies: vec![],
        account_name: None,
        account_password: None,
    };
    let created = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)
        .and_then(|manager| {
            manager
                .create_service(&info, ServiceAccess::CHANGE_CONFIG)
                .map_err(|e| {
                    format!(
                        "could not register the Windows service {NAME} ({e}); is it registered \
                         already (`outboxctl service status`)?"
                    )
                })
        })
        .and_then(|service| {
            service
                .set_description("Drains the outbox of a home into its embedded PostgreSQL")
                .map_err(|e| format!("could not describe the Windows service {NAME}: {e}"))
        });
    match created {
        Ok(()) => {
            out.result(
                format!("registered {what}\nstart it now with: sc.exe start {NAME}"),
                json!({"service": NAME, "executable": exe, "home": home}),
            );
            exit_code::OK
        }
        Err(message) => fail(out, message),
    }
}

/// `outboxctl service uninstall`.
pub fn uninstall(target: &Target, dry_run: bool, out: &Output) -> u8 {
    if let Some(code) = refuse_user(target, out) {
        return code;
    }
    if dry_run {
        out.result(
            format!("would stop and remove the Windows service {NAME}; the data stays"),
            json!({"dry_run": true, "service": NAME}),
        );
        return exit_code::OK;
    }
    let removed = manager(ServiceManagerAccess::CONNECT).and_then(|manager| {
        let access = ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE;
        let service = manager
            .open_service(NAME, access)
            .map_err(|e| format!("the Windows service {NAME} is not registered ({e})"))?;
        let state = service.query_status().map(|s| s.current_state);
        if !matches!(state, Ok(ServiceState::Stopped)) {
            let _ = service.stop();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !matches!(
                service.query_status().map(|s| s.current_state),
                Ok(ServiceState::Stopped)
            ) {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "the Windows service {NAME} did not stop within 60 s; it stays registered"
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        service
            .delete()
            .map_err(|e| format!("could not remove the Windows service {NAME}: {e}"))
    });
    match removed {
        Ok(()) => {
            out.result(
                format!("stopped and removed the Windows service {NAME}; its home stays"),
                json!({"service": NAME, "removed": true}),
            );
            exit_code::OK
        }
        Err(message) => fail(out, message),
    }
}

/// `outboxctl service status`.
pub fn status(target: &Target, out: &Output) -> u8 {
    if let Some(code) = refuse_user(target, out) {
        return code;
    }
    let found = manager(ServiceManagerAccess::CONNECT).and_then(|manager| {
        let service = manager
            .open_service(NAME, ServiceAccess::QUERY_STATUS)
            .map_err(|e| format!("the Windows service {NAME} is not registered ({e})"))?;
        service
            .query_status()
            .map_err(|e| format!("could not ask the state of the Windows service {NAME}: {e}"))
    });
    match found {
        Ok(status) => {
            let state = format!("{:?}", status.current_state).to_lowercase();
            out.result(
                format!("the Windows service {NAME} is registered; state: {state}"),
                json!({"service": NAME, "registered": true, "state": state}),
            );
            exit_code::OK
        }
        Err(message) => {
            out.result(
                message.clone(),
                json!({"service": NAME, "registered": false, "error": message}),
            );
            exit_code::NOT_RUNNING
        }
    }
}
