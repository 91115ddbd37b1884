//! outboxd as a service (issue 11): what `outboxctl service install
//! --dry-run` renders for systemd and launchd, checked by the tools that read
//! those files (`systemd-analyze verify` and `security`, Python's
//! `plistlib`); a real install and uninstall of the per-user unit into a
//! private home; and the system unit run by a real systemd booted in
//! namespaces (`shared/tools/systemd-ns`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{OUTBOXCTL, OUTBOXD, Run, is_root, run, run_with_stdin, skip};

/// The highest `systemd-analyze security` exposure the system unit may have.
const MAX_EXPOSURE: f64 = 2.5;

/// `outboxctl ARGS` with `HOME` set to `home` and the XDG variables unset, so
/// that per-user paths are predictable.
fn ctl_in(home: &Path, args: &[&str]) -> Run {
    run(Command::new(OUTBOXCTL)
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("OUTBOXD_HOME"))
}

/// The `--dry-run --json` document of `service install ARGS`.
fn dry_run(home: &Path, args: &[&str]) -> Value {
    let mut all = vec!["service", "install", "--dry-run", "--json"];
    all.extend_from_slice(args);
    let run = ctl_in(home, &all);
    assert_eq!(run.code, 0, "{run:?}");
    run.json()
}

/// The files a dry run would write: (path, kind, content).
fn files(plan: &Value) -> Vec<(PathBuf, String, String)> {
    plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|step| step.get("write").is_some())
        .map(|step| {
            (
                PathBuf::from(step["write"].as_str().unwrap()),
                step["kind"].as_str().unwrap().to_string(),
                step["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The unit or plist of a dry run, and where it would go.
fn service_file(plan: &Value) -> (PathBuf, String) {
    files(plan)
        .into_iter()
        .find(|(_, kind, _)| kind == "systemd unit" || kind == "launchd plist")
        .map(|(path, _, content)| (path, content))
        .expect("a dry run writes the service file")
}

fn no_placeholders(text: &str) {
    assert!(!text.contains("{{"), "a placeholder is left:\n{text}");
}

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn install_dry_run_renders_the_linux_units_with_real_paths() {
    let user = tempfile::tempdir().unwrap();
    let system = dry_run(user.path(), &["--platform", "linux", "--system"]);
    let (path, unit) = service_file(&system);
    assert_eq!(path, Path::new("/etc/systemd/system/outboxd.service"));
    no_placeholders(&unit);
    assert!(
        unit.contains(&format!("\nExecStart={OUTBOXD} --home /var/lib/outboxd\n")),
        "{unit}"
    );
    for line in [
        "Type=notify",
        "User=outboxd",
        "StateDirectory=outboxd",
        "KillMode=mixed",
        "RestartPreventExitStatus=3",
        "Documentation=man:outboxd(8) man:outboxctl(1)",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }
    assert_eq!(
        system["next"],
        "systemctl daemon-reload && systemctl enable --now outboxd"
    );
    let pages: Vec<PathBuf> = files(&system)
        .into_iter()
        .filter(|(_, kind, _)| kind == "manual page")
        .map(|(path, _, _)| path)
        .collect();
    assert_eq!(
        pages,
        [
            PathBuf::from("/usr/local/share/man/man8/outboxd.8"),
            PathBuf::from("/usr/local/share/man/man1/outboxctl.1")
        ]
    );

    let per_user = dry_run(user.path(), &["--platform", "linux", "--user"]);
    let (path, unit) = service_file(&per_user);
    assert_eq!(
        path,
        user.path().join(".config/systemd/user/outboxd.service")
    );
    no_placeholders(&unit);
    assert!(
        unit.contains(&format!(
            "\nExecStart={OUTBOXD} --home %h/.local/state/outboxd\n"
        )),
        "{unit}"
    );
    assert!(!unit.contains("\nUser="), "{unit}");
    assert_eq!(
        per_user["next"],
        "systemctl --user daemon-reload && systemctl --user enable --now outboxd"
    );
    // A home elsewhere is written as it is, quoted when it needs it.
    let elsewhere = dry_run(
        user.path(),
        &["--platform", "linux", "--user", "--home", "/srv/my outbox"],
    );
    let (_, unit) = service_file(&elsewhere);
    assert!(unit.contains("--home \"/srv/my outbox\"\n"), "{unit}");

    // The text form shows the unit and the next command; nothing is written.
    let text = ctl_in(user.path(), &["service", "install", "--dry-run", "--user"]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(text.stdout.contains("would write"), "{text:?}");
    assert!(
        text.stdout.contains(&format!("ExecStart={OUTBOXD}")),
        "{text:?}"
    );
    assert!(
        text.stdout.contains("next: systemctl --user daemon-reload"),
        "{text:?}"
    );
    assert_eq!(std::fs::read_dir(user.path()).unwrap().count(), 0);

    // The system service's home is fixed by StateDirectory=.
    let other = ctl_in(
        user.path(),
        &[
            "service",
            "install",
            "--dry-run",
            "--system",
            "--home",
            "/srv/x",
        ],
    );
    assert_eq!(other.code, 1, "{other:?}");
    assert!(other.stderr.contains("/var/lib/outboxd"), "{other:?}");
}

/// A plist as Python's `plistlib` reads it, as JSON.
fn plistlib(path: &Path) -> Value {
    let script = "import json, plistlib, sys\n\
                  print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))";
    let run = run(Command::new("python3").args(["-c", script]).arg(path));
    assert_eq!(
        run.code,
        0,
        "plistlib could not read {}: {run:?}",
        path.display()
    );
    run.json()
}

fn check_plist(plist: &Value, label: &str, home: &str) {
    assert_eq!(plist["Label"], label, "{plist}");
    assert_eq!(
        plist["ProgramArguments"],
        serde_json::json!([OUTBOXD, "--home", home])
    );
    assert_eq!(plist["RunAtLoad"], true, "{plist}");
    assert_eq!(
        plist["KeepAlive"],
        serde_json::json!({"SuccessfulExit": false})
    );
    // Longer than the daemon's own stop budget (about 25 s).
    assert!(plist["ExitTimeOut"].as_u64().unwrap() > 25, "{plist}");
    assert!(plist["ProcessType"].is_string(), "{plist}");
    assert!(
        plist["StandardErrorPath"]
            .as_str()
            .is_some_and(|p| p.starts_with('/') && p.ends_with(".log")),
        "{plist}"
    );
    assert_eq!(plist["Umask"], 0o077, "{plist}");
}

#[test]
fn install_dry_run_renders_the_macos_plists_and_plistlib_reads_them() {
    let user = tempfile::tempdir().unwrap();
    let system = dry_run(user.path(), &["--platform", "macos", "--system"]);
    let (daemon_path, daemon) = service_file(&system);
    assert_eq!(
        daemon_path,
        Path::new("/Library/LaunchDaemons/com.outboxd.daemon.plist")
    );
    no_placeholders(&daemon);
    assert_eq!(
        system["next"],
        "launchctl bootstrap system /Library/LaunchDaemons/com.outboxd.daemon.plist"
    );
    let agent_plan = dry_run(user.path(), &["--platform", "macos", "--user"]);
    let (agent_path, agent) = service_file(&agent_plan);
    assert_eq!(
        agent_path,
        user.path()
            .join("Library/LaunchAgents/com.outboxd.agent.plist")
    );
    no_placeholders(&agent);
    let uid = outboxd::process::euid();
    assert_eq!(
        agent_plan["next"],
        format!("launchctl bootstrap gui/{uid} {}", agent_path.display())
    );
    let home = user.path().join("Library/Application Support/outboxd");
    assert!(
        agent.contains(&format!("<string>{}</string>", home.display())),
        "{agent}"
    );

    if !tool("python3") {
        return skip("python3 is not installed: the plists are not parsed");
    }
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let daemon = plistlib(&write("daemon.plist", &daemon));
    check_plist(&daemon, "com.outboxd.daemon", "/var/lib/outboxd");
    assert_eq!(daemon["UserName"], "outboxd", "{daemon}");
    assert_eq!(daemon["GroupName"], "outboxd", "{daemon}");
    let agent = plistlib(&write("agent.plist", &agent));
    check_plist(&agent, "com.outboxd.agent", home.to_str().unwrap());
    assert!(agent.get("UserName").is_none(), "{agent}");
    assert_eq!(
        agent["StandardErrorPath"],
        user.path()
            .join("Library/Logs/outboxd/outboxd.log")
            .to_str()
            .unwrap()
    );
    // The checked-in templates parse as they are, too.
    for template in ["com.outboxd.agent.plist", "com.outboxd.daemon.plist"] {
        plistlib(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("launchd")
                .join(template),
        );
    }
}

/// A line for every run's output: straight to standard error, past the
/// test harness's capture.
fn report(line: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
}

/// The exposure score `systemd-analyze security` prints for a unit file.
fn exposure(output: &str) -> Option<f64> {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    line.split(':')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn rendered_units_pass_systemd_analyze_verify_and_security() {
    if !tool("systemd-analyze") {
        return skip("systemd-analyze is not installed");
    }
    let user = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    for (scope, name) in [("--system", "system"), ("--user", "user")] {
        let plan = dry_run(user.path(), &["--platform", "linux", scope]);
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        // The manual pages install writes, where `man` finds them: verify
        // checks that Documentation= names pages that exist.
        let man = work.path().join("man");
        for (path, kind, content) in files(&plan) {
            let target = match kind.as_str() {
                "systemd unit" => dir.join("outboxd.service"),
                "manual page" => {
                    let section = path.parent().unwrap().file_name().unwrap();
                    man.join(section).join(path.file_name().unwrap())
                }
                other => panic!("unexpected file kind {other}"),
            };
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, content).unwrap();
        }
        let runtime = work.path().join("runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut verify = Command::new("systemd-analyze");
        if name == "user" {
            verify.arg("--user");
        }
        verify
            .arg("verify")
            .arg(dir.join("outboxd.service"))
            .env("MANPATH", &man)
            .env("XDG_RUNTIME_DIR", &runtime);
        let verified = run(&mut verify);
        assert_eq!(
            verified.code, 0,
            "systemd-analyze verify, {name} unit: {verified:?}"
        );
        assert!(
            verified.stderr.trim().is_empty() && verified.stdout.trim().is_empty(),
            "systemd-analyze verify complained about the {name} unit: {verified:?}"
        );
    }
    let security = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(work.path().join("system/outboxd.service")));
    let Some(score) = exposure(&security.stdout) else {
        return skip(&format!(
            "this systemd-analyze cannot rate a unit file offline: {}",
            security.stderr.trim()
        ));
    };
    report(&format!(
        "systemd-analyze security: the system unit's exposure is {score} (at most {MAX_EXPOSURE})"
    ));
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} is above {MAX_EXPOSURE}:\n{}",
        security.stdout
    );
}

#[test]
fn a_user_install_writes_its_files_and_uninstall_removes_them_but_not_the_data() {
    let user = tempfile::tempdir().unwrap();
    let unit = user.path().join(".config/systemd/user/outboxd.service");
    let page = user.path().join(".local/share/man/man8/outboxd.8");
    let home = user.path().join(".local/state/outboxd");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("outbox.db"), "data").unwrap();

    let status = ctl_in(user.path(), &["service", "status", "--user"]);
    assert_eq!(status.code, 3, "{status:?}");
    assert!(status.stdout.contains("not installed"), "{status:?}");

    let install = ctl_in(
        user.path(),
        &["service", "install", "--user", "--platform", "linux"],
    );
    assert_eq!(install.code, 0, "{install:?}");
    assert!(
        install
            .stdout
            .contains(&format!("wrote {}", unit.display())),
        "{install:?}"
    );
    assert!(
        install.stdout.contains(
            "next: systemctl --user daemon-reload && systemctl --user enable --now outboxd"
        ),
        "{install:?}"
    );
    let written = std::fs::read_to_string(&unit).unwrap();
    let planned = service_file(&dry_run(user.path(), &["--user"])).1;
    assert_eq!(written, planned, "install wrote what the dry run showed");
    assert_eq!(
        std::fs::metadata(&unit).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let page_text = std::fs::read_to_string(&page).unwrap();
    assert!(page_text.contains("\n.TH outboxd 8 "), "{page_text}");

    let status = ctl_in(user.path(), &["service", "status", "--user", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let report = &status.json()["services"][0];
    assert_eq!(report["installed"], true, "{report}");
    assert_eq!(report["state"], "installed, up to date", "{report}");

    // Installing again changes nothing, and says how to apply an update.
    let again = ctl_in(user.path(), &["service", "install", "--user"]);
    assert_eq!(again.code, 0, "{again:?}");

    let uninstall = ctl_in(
        user.path(),
        &["service", "uninstall", "--user", "--dry-run"],
    );
    assert_eq!(uninstall.code, 0, "{uninstall:?}");
    assert!(unit.exists(), "a dry run removes nothing");
    let uninstall = ctl_in(user.path(), &["service", "uninstall", "--user"]);
    assert_eq!(uninstall.code, 0, "{uninstall:?}");
    assert!(
        uninstall
            .stdout
            .contains(&format!("removed {}", unit.display())),
        "{uninstall:?}"
    );
    assert!(
        uninstall.stdout.contains("the data stays in"),
        "{uninstall:?}"
    );
    assert!(!unit.exists() && !page.exists());
    assert_eq!(
        std::fs::read_to_string(home.join("outbox.db")).unwrap(),
        "data"
    );
    let status = ctl_in(user.path(), &["service", "status", "--user"]);
    assert_eq!(status.code, 3, "{status:?}");
}

// ---------------------------------------------------------------------------
// The system unit under a real systemd

/// A systemd booted in namespaces; stopped (with everything in it) when
/// dropped, and the state it left in /var/lib removed.
struct Namespace {
    tool: PathBuf,
    pid: String,
    _binaries: tempfile::TempDir,
}

impl Namespace {
    fn exec(&self, args: &[&str]) -> Run {
        run(Command::new(&self.tool)
            .arg("exec")
            .arg(&self.pid)
            .args(args))
    }

    /// Runs `args` inside, which must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let run = self.exec(args);
        assert_eq!(run.code, 0, "{args:?} in the namespace: {run:?}");
        run.stdout
    }

    fn write(&self, path: &str, content: &str) {
        let run = run_with_stdin(
            Command::new(&self.tool).arg("exec").arg(&self.pid).args([
                "sh",
                "-c",
                &format!("cat > {path}"),
            ]),
            content.as_bytes(),
        );
        assert_eq!(run.code, 0, "writing {path} in the namespace: {run:?}");
    }

    /// `systemctl show -p PROPERTY --value outboxd`.
    fn property(&self, name: &str) -> String {
        self.ok(&["systemctl", "show", "-p", name, "--value", "outboxd"])
            .trim()
            .to_string()
    }

    /// Where the unit's journal ends now; empty when it has no entries yet
    /// (a new machine), so that [`Namespace::journal`] then reads it all.
    fn journal_cursor(&self) -> String {
        let args = ["journalctl", "-u", "outboxd", "-n", "0", "--show-cursor"];
        let run = self.exec(&args);
        // journalctl exits 1 with "-- No entries --" on an empty journal.
        if run.code == 1 && run.stdout.trim() == "-- No entries --" {
            return String::new();
        }
        assert_eq!(run.code, 0, "{args:?} in the namespace: {run:?}");
        run.stdout
            .lines()
            .find_map(|l| l.strip_prefix("-- cursor: "))
            .map(str::to_string)
            .unwrap_or_default()
    }

    /// The unit's journal (message text only), after `cursor` if not empty.
    fn journal(&self, cursor: &str) -> String {
        let after = format!("--after-cursor={cursor}");
        let mut args = vec!["journalctl", "-u", "outboxd", "-o", "cat", "--no-pager"];
        if !cursor.is_empty() {
            args.push(&after);
        }
        self.exec(&args).stdout
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new(&self.tool).arg("stop").arg(&self.pid).status();
        // Killing its init ends everything in the pid namespace; the state
        // directory is on the real /var/lib.
        let deadline = Instant::now() + crate::common::react_limit();
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all("/var/lib/outboxd");
    }
}

/// Whether every directory above `path` lets others through (the service's
/// account must reach the binaries).
fn world_reachable(path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

#[test]
fn the_system_unit_runs_under_real_systemd() {
    if !is_root() {
        return skip("needs root (systemd-ns boots systemd in namespaces)");
    }
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/systemd-ns");
    if !tool.exists() {
        return skip(&format!("{} is not there", tool.display()));
    }
    // Only /run and /tmp are private in the namespace: a real install's
    // files would shadow the test's unit, and its data is not ours to remove.
    for taken in ["/var/lib/outboxd", "/etc/systemd/system/outboxd.service"] {
        if Path::new(taken).exists() {
            return skip(&format!(
                "{taken} exists (a real install?); the test would use or remove it"
            ));
        }
    }
    // Binaries the account outboxd can run, where the service sees them:
    // not in /tmp or /var/tmp (private in the namespace and in the service),
    // nor under /home or /root (ProtectHome=), and the build directory may be
    // in /root.
    let binaries = tempfile::Builder::new()
        .prefix("outboxd-service-test-")
        .tempdir_in("/var/lib")
        .unwrap();
    std::fs::set_permissions(binaries.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    if !world_reachable(binaries.path()) {
        return skip("/var/lib is not reachable by other accounts");
    }
    let ctl = binaries.path().join("outboxctl");
    for (from, name) in [(OUTBOXD, "outboxd"), (OUTBOXCTL, "outboxctl")] {
        let to = binaries.path().join(name);
        // A link where it can be (the same file system), else a copy.
        std::fs::hard_link(from, &to)
            .or_else(|_| std::fs::copy(from, &to).map(drop))
            .unwrap();
    }
    let plan = {
        let run =
            run(Command::new(&ctl).args(["service", "install", "--system", "--dry-run", "--json"]));
        assert_eq!(run.code, 0, "{run:?}");
        run.json()
    };
    assert!(plan.get("problems").is_none(), "{plan}");
    // The account, as install would create it.
    for step in plan["steps"].as_array().unwrap() {
        if let Some(argv) = step["run"].as_array() {
            let argv: Vec<&str> = argv.iter().map(|a| a.as_str().unwrap()).collect();
            assert_eq!(argv[0], "useradd", "{step}");
            let made = run(Command::new(argv[0]).args(&argv[1..]));
            assert_eq!(made.code, 0, "{made:?}");
        }
    }
    let (_, unit) = service_file(&plan);
    assert!(unit.contains(&format!(
        "ExecStart={} ",
        binaries.path().join("outboxd").display()
    )));

    let started = run(Command::new(&tool).arg("start"));
    if started.code != 0 {
        return skip(&format!(
            "systemd-ns could not boot systemd: {}",
            started.stderr.trim()
        ));
    }
    let ns = Namespace {
        tool: tool.clone(),
        pid: started.stdout.trim().to_string(),
        _binaries: binaries,
    };
    // systemd-ns boots systemd logging to its console: its own lines about
    // the unit (watchdog, kills) go to the journal instead, with the unit's.
    ns.ok(&["systemctl", "log-target", "journal"]);
    ns.write("/run/systemd/system/outboxd.service", &unit);
    // A short watchdog, to see keep-alives arrive (and be missed) quickly.
    // RemoveIPC off: systemd-ns has no IPC namespace, so at the unit's stop
    // systemd would remove the shared memory of every process of the
    // account `outboxd` on the machine, which is what the other tests'
    // clusters run as when root made their homes (they then failed with
    // "could not open shared memory segment").
    let watchdog = Duration::from_secs(3);
    ns.ok(&["mkdir", "-p", "/run/systemd/system/outboxd.service.d"]);
    ns.write(
        "/run/systemd/system/outboxd.service.d/test.conf",
        &format!(
            "[Service]\nWatchdogSec={}s\nRemoveIPC=false\n",
            watchdog.as_secs()
        ),
    );
    ns.ok(&["systemctl", "daemon-reload"]);
    let cursor = ns.journal_cursor();

    // Start: systemctl returns once the daemon sent READY=1.
    let begun = Instant::now();
    let start = ns.exec(&["systemctl", "start", "outboxd"]);
    assert_eq!(
        start.code,
        0,
        "start: {start:?}\njournal:\n{}",
        ns.journal(&cursor)
    );
    report(&format!("systemd: outboxd ready in {:?}", begun.elapsed()));
    assert_eq!(ns.property("ActiveState"), "active");
    assert_eq!(ns.property("SubState"), "running");
    let main_pid = ns.property("MainPID");
    let ctl = ctl.to_str().unwrap();
    let status = ns.exec(&[ctl, "--home", "/var/lib/outboxd", "status"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(status.stdout.contains("account   outboxd"), "{status:?}");
    // journald timestamps the lines; the daemon does not add its own.
    let said = ns.journal(&cursor);
    assert!(said.contains("ready"), "{said}");
    let timestamped = said.lines().find(|l| {
        l.trim_start().len() > 20
            && l.trim_start().as_bytes()[..4]
                .iter()
                .all(u8::is_ascii_digit)
    });
    assert_eq!(timestamped, None, "a line with its own timestamp:\n{said}");

    // Reload: SIGHUP, the same process.
    ns.ok(&["systemctl", "reload", "outboxd"]);
    let reloaded = crate::common::wait_until(crate::common::react_limit(), || {
        ns.journal(&cursor).contains("reloaded the configuration")
    });
    assert!(
        reloaded,
        "no reload in the journal:\n{}",
        ns.journal(&cursor)
    );
    assert_eq!(ns.property("MainPID"), main_pid);

    // The watchdog: keep-alives keep it up well past the interval.
    let first = ns.property("WatchdogTimestampMonotonic");
    let until = Instant::now() + watchdog * 3;
    while Instant::now() < until {
        assert_eq!(ns.property("ActiveState"), "active");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        ns.property("MainPID"),
        main_pid,
        "restarted:\n{}",
        ns.journal(&cursor)
    );
    assert_eq!(ns.property("NRestarts"), "0");
    let last = ns.property("WatchdogTimestampMonotonic");
    assert!(
        last.parse::<u64>().unwrap() > first.parse::<u64>().unwrap(),
        "no keep-alive arrived ({first} then {last})"
    );

    // A daemon that sends none (frozen) is killed and started again.
    ns.ok(&["kill", "-STOP", &main_pid]);
    let restarted = crate::common::wait_until(crate::common::settle_limit(), || {
        ns.property("NRestarts") == "1"
            && ns.property("ActiveState") == "active"
            && ns.property("SubState") == "running"
    });
    let said = ns.journal(&cursor);
    println!("systemd: the journal up to the watchdog's restart:\n{said}");
    assert!(restarted, "no restart after a missed watchdog:\n{said}");
    assert!(said.contains("Watchdog timeout"), "{said}");
    assert_ne!(ns.property("MainPID"), main_pid);

    // `service status` and `uninstall` ask the running systemd (the unit is
    // in /run here, not where install puts it).
    let status = ns.exec(&[ctl, "service", "status", "--system", "--json"]);
    assert_eq!(status.code, 3, "{status:?}");
    let manager = &status.json()["services"][0]["manager"];
    assert_eq!(manager["ActiveState"], "active", "{manager}");
    assert_eq!(manager["LoadState"], "loaded", "{manager}");
    let uninstall = ns.exec(&[
        ctl,
        "service",
        "uninstall",
        "--system",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(uninstall.code, 0, "{uninstall:?}");
    let steps = &uninstall.json()["steps"];
    assert_eq!(
        steps[0]["run"],
        serde_json::json!(["systemctl", "disable", "--now", "outboxd"]),
        "{steps}"
    );

    // Stop: the daemon exits 0 by itself, nothing is left to kill.
    let cursor = ns.journal_cursor();
    ns.ok(&["systemctl", "stop", "outboxd"]);
    assert_eq!(ns.property("ActiveState"), "inactive");
    assert_eq!(ns.property("Result"), "success");
    assert_eq!(ns.property("ExecMainStatus"), "0");
    let said = ns.journal(&cursor);
    println!("systemd: the journal of the stop:\n{said}");
    assert!(said.contains("stopped PostgreSQL"), "{said}");
    assert!(!said.contains("SIGKILL"), "{said}");
    assert!(!said.contains("remains running"), "{said}");
}
