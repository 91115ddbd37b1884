//! The control socket under bad input: every case gets its error or is
//! closed, and the daemon keeps answering `status` afterwards.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use crate::common::{Home, Raw};
use outboxd::exit_code;
use outboxd::protocol::{MAX_LINE, PROTOCOL_VERSION};

/// The daemon still serves: `outboxctl status` answers as running.
fn assert_serving(home: &Home) {
    let status = home.ctl(&["status"]);
    assert_eq!(status.code, 0, "the daemon must keep serving: {status:?}");
}

#[test]
fn hello_and_status_speak_protocol_1() {
    let home = Home::with_cluster();
    let pid = home.start();
    let mut raw = Raw::connect(&home.socket());
    let hello = raw.call(r#"{"id":"h","op":"hello","protocol":1,"client":"test"}"#);
    assert_eq!(hello["id"], "h");
    assert_eq!(hello["ok"], true);
    assert_eq!(hello["result"]["protocol"], PROTOCOL_VERSION);
    assert_eq!(hello["result"]["server"], "outboxd");
    // Requests on one connection are answered in turn; ids are echoed as given.
    let status = raw.call(r#"{"id":{"n":[1]},"op":"status"}"#);
    assert_eq!(status["id"], serde_json::json!({"n":[1]}));
    assert_eq!(status["result"]["pid"], pid);
    let component = raw.call(r#"{"op":"stop","component":"warp-drive"}"#);
    assert_eq!(component["error"]["code"], "bad_request");
    assert_serving(&home);
}

#[test]
fn malformed_requests_get_stable_error_codes() {
    let home = Home::with_cluster();
    home.start();
    let mut raw = Raw::connect(&home.socket());
    let cases: &[(&[u8], &str)] = &[
        (b"{this is not json\n", "bad_json"),
        (b"\xff\xfe\xfd{\"op\":\"status\"}\n", "bad_json"),
        (b"[\"status\"]\n", "bad_request"),
        (b"{\"id\":3}\n", "bad_request"),
        (b"{\"op\":42}\n", "bad_request"),
        (b"{\"op\":\"format_disk\"}\n", "unknown_op"),
    ];
    for (line, code) in cases {
        raw.send(line);
        let response = raw
            .read()
            .expect("an error response, not a closed connection");
        assert_eq!(response["ok"], false, "{response}");
        assert_eq!(response["error"]["code"], *code, "{response}");
        assert!(!response["error"]["message"].as_str().unwrap().is_empty());
    }
    // The same connection still works.
    assert_eq!(raw.call(r#"{"op":"status"}"#)["ok"], true);
    assert_serving(&home);
}

#[test]
fn a_16_mib_line_is_refused_and_the_connection_closed() {
    let home = Home::with_cluster();
    home.start();
    let socket = home.socket();
    let mut raw = Raw::connect(&socket);
    let mut writer = raw.reader.get_ref().try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        // The daemon stops reading after 1 MiB and closes: the rest of the
        // write fails with EPIPE, which is the point.
        let _ = writer.write_all(&vec![b'x'; 16 << 20]);
    });
    let response = raw.read().expect("an error response");
    assert_eq!(response["error"]["code"], "frame_too_large", "{response}");
    assert!(
        raw.read().is_none(),
        "the connection is closed after the error"
    );
    sender.join().unwrap();

    // A line of exactly the limit is still read (and rejected as bad JSON).
    let mut raw = Raw::connect(&socket);
    let mut line = vec![b' '; MAX_LINE];
    line.push(b'\n');
    line[0] = b'x';
    raw.send(&line);
    assert_eq!(raw.read().unwrap()["error"]["code"], "bad_json");
    assert_serving(&home);
}

#[test]
fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let home = Home::with_cluster();
    home.write_config("idle_timeout_secs = 0.5\n");
    home.start();
    let mut raw = Raw::connect(&home.socket());
    let response = raw.read().expect("an idle_timeout response");
    assert_eq!(response["error"]["code"], "idle_timeout", "{response}");
    assert!(raw.read().is_none(), "then the connection is closed");
    assert_serving(&home);
}

#[test]
fn five_hundred_idle_connections_do_not_lock_out_status() {
    let home = Home::with_cluster();
    home.start();
    let socket = home.socket();
    let idle: Vec<UnixStream> = (0..500)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    // The cap (128 by default) closes the oldest idle connections to make room.
    assert_serving(&home);
    let mut raw = Raw::connect(&socket);
    assert_eq!(raw.call(r#"{"op":"status"}"#)["ok"], true);
    let closed = idle
        .iter()
        .filter(|stream| {
            stream
                .set_read_timeout(Some(crate::common::react_limit()))
                .unwrap();
            let mut byte = [0u8; 1];
            matches!(
                std::io::Read::read(&mut &**stream, &mut byte),
                Ok(0) | Err(_)
            )
        })
        .take(300)
        .count();
    assert!(
        closed >= 300,
        "the oldest idle connections were closed ({closed})"
    );
}

#[test]
fn a_client_of_another_user_is_forbidden() {
    if !crate::common::is_root() {
        return crate::common::skip("needs root to act as another user");
    }
    let home = Home::with_cluster();
    let pid = home.start();
    let paths = home.paths();
    let (_bin, exe) = crate::common::ctl_for_other_users();
    let args = ["--home".as_ref(), home.path.as_os_str(), "status".as_ref()];

    // First line of defence: nobody cannot even reach the 0700 directory.
    let denied = crate::common::run_as_nobody(&exe, &args);
    assert_eq!(denied.code, i32::from(exit_code::UNKNOWN), "{denied:?}");
    assert!(denied.stdout.contains("Permission denied"), "{denied:?}");

    // Second line: with the files opened up by mistake, the daemon still
    // checks the peer's credentials and refuses.
    for (path, mode) in [
        (&paths.home, 0o755),
        (&paths.run_dir, 0o755),
        (&paths.socket, 0o666),
        (&paths.lock, 0o644),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let forbidden = crate::common::run_as_nobody(&exe, &args);
    assert_eq!(
        forbidden.code,
        i32::from(exit_code::UNKNOWN),
        "{forbidden:?}"
    );
    assert!(forbidden.stdout.contains("forbidden"), "{forbidden:?}");
    assert!(
        forbidden.stdout.contains(&format!("(pid {pid})")),
        "{forbidden:?}"
    );

    // And nobody cannot stop it either.
    let stop_args = [
        "--home".as_ref(),
        home.path.as_os_str(),
        "stop".as_ref(),
        "--timeout".as_ref(),
        "1".as_ref(),
    ];
    let stop = crate::common::run_as_nobody(&exe, &stop_args);
    assert_ne!(stop.code, 0, "{stop:?}");
    assert_eq!(home.holder(), Some(pid), "the daemon survives");
    assert_serving(&home);
    let log = std::fs::read_to_string(&paths.log_file).unwrap();
    assert!(
        log.contains("refused a control connection from another user"),
        "{log}"
    );
}

#[test]
fn sighup_reloads_the_limits_and_a_bad_file_changes_nothing() {
    let home = Home::with_cluster();
    let pid = home.start();
    let log = home.paths().log_file;
    let count = |needle: &str| {
        std::fs::read_to_string(&log)
            .unwrap()
            .matches(needle)
            .count()
    };

    home.write_config("idle_timeout_secs = 0.5\n");
    crate::common::kill(pid, libc::SIGHUP);
    crate::common::eventually(
        "the configuration is reloaded",
        crate::common::settle_limit(),
        || count("reloaded the configuration") == 1,
    );
    let mut raw = Raw::connect(&home.socket());
    assert_eq!(
        raw.read().expect("a response")["error"]["code"],
        "idle_timeout"
    );

    home.write_config("idle_timeout_secs = \"soon\"\n");
    crate::common::kill(pid, libc::SIGHUP);
    crate::common::eventually(
        "the bad file is refused",
        crate::common::settle_limit(),
        || count("kept the running configuration") == 1,
    );
    assert_serving(&home);
    let mut raw = Raw::connect(&home.socket());
    assert_eq!(
        raw.read().expect("a response")["error"]["code"],
        "idle_timeout"
    );
}
