//! outboxd as a Windows service. `outboxctl service install --system`
//! registers `outboxd.exe --windows-service --daemonize --home <home>`
//! (`--daemonize` sends its output to the home's log); the service
//! manager starts it, and then:
//!
//! - [`run_service`] hands the main thread to the service dispatcher, which
//!   calls `service_main` on a thread of its own;
//! - `service_main` reports `START_PENDING`, runs the daemon with a notify
//!   pipe of its own, reports `RUNNING` when the daemon says `READY=1`, and
//!   `STOPPED` (with the daemon's exit code) when it returns;
//! - the service manager's Stop and Shutdown set the home's stop event,
//!   which the daemon waits on like any stop request (`crate::signals`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use clap::Parser;
use outboxd::notify::{Event, NotifyListener};
use outboxd::paths::Paths;
use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::{define_windows_service, service_dispatcher};

use super::Daemon;

/// The service's name, as `outboxctl service install` registers it.
pub const SERVICE_NAME: &str = "outboxd";

/// Whether the service manager started this process.
pub fn service_requested() -> bool {
    std::env::args_os().any(|arg| arg == "--windows-service")
}

static DAEMON: OnceLock<Daemon> = OnceLock::new();
static EXIT: AtomicU8 = AtomicU8::new(0);

define_windows_service!(ffi_service_main, service_main);

/// Hands this thread to the service dispatcher until the service stops;
/// the daemon's exit code.
pub fn run_service(daemon: Daemon) -> u8 {
    let _ = DAEMON.set(daemon);
    match service_dispatcher::start(SERVICE_NAME, ffi_service_main) {
        Ok(()) => EXIT.load(Ordering::SeqCst),
        Err(e) => {
            eprintln!(
                "outboxd: could not reach the Windows service manager ({e}); --windows-service \
                 is for the service manager only: run `outboxctl start` instead"
            );
            outboxd::exit_code::FAILURE
        }
    }
}

fn status(state: ServiceState, exit: u8, wait: Duration) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: match state {
            ServiceState::Running => ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
            _ => ServiceControlAccept::empty(),
        },
        exit_code: match exit {
            0 => ServiceExitCode::Win32(0),
            code => ServiceExitCode::ServiceSpecific(u32::from(code)),
        },
        checkpoint: 0,
        wait_hint: wait,
        process_id: None,
    }
}

fn service_main(_arguments: Vec<OsString>) {
    let Some(daemon) = DAEMON.get().copied() else {
        return;
    };
    let home = outboxd::cli::DaemonArgs::try_parse()
        .ok()
        .and_then(|args| args.home);
    let stop_event = Paths::resolve(home.as_deref())
        .map(|paths| outboxd::win32::event_name(&paths.home, "stop"))
        .unwrap_or_default();
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            let _ = outboxd::win32::set_event(&stop_event);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let Ok(handle) = service_control_handler::register(SERVICE_NAME, handler) else {
        return;
    };
    let _ = handle.set_service_status(status(
        ServiceState::StartPending,
        0,
        Duration::from_secs(120),
    ));
    let listener = NotifyListener::bind().ok();
    let notify = listener.as_ref().map(|l| PathBuf::from(l.path()));
    if let Some(listener) = listener {
        std::thread::spawn(move || {
            while let Ok(Some(events)) = listener.recv(Duration::from_secs(3600)) {
                if events.contains(&Event::Ready) {
                    let _ =
                        handle.set_service_status(status(ServiceState::Running, 0, Duration::ZERO));
                }
            }
        });
    }
    let code = daemon(notify);
    EXIT.store(code, Ordering::SeqCst);
    let _ = handle.set_service_status(status(ServiceState::Stopped, code, Duration::ZERO));
}
