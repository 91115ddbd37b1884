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
