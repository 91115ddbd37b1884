//! Text a user can paste: shell-quoted paths and `outboxctl` command lines
//! that keep the `--home` the user gave.

use std::borrow::Cow;
use std::path::Path;

/// `path` quoted for a POSIX shell when it needs it.
pub fn shell(path: &Path) -> Cow<'_, str> {
    let text = path.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,@%=".contains(&b));
    if plain {
        text
    } else {
        Cow::Owned(format!("'{}'", text.replace('\'', r"'\''")))
    }
}

/// `outboxctl [--home HOME] ARGS`, with `--home` when `home` is not the
/// default one, so the hint works as pasted.
pub fn ctl(home: &Path, args: &str) -> String {
    let default = crate::paths::default_home().ok();
    match default {
        Some(default) if default == home => format!("outboxctl {args}"),
        _ => format!("outboxctl --home {} {args}", shell(home)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(shell(Path::new("/var/lib/outboxd")), "/var/lib/outboxd");
        assert_eq!(shell(Path::new("/tmp/a b")), "'/tmp/a b'");
        assert_eq!(shell(Path::new("/tmp/it's")), r"'/tmp/it'\''s'");
        assert_eq!(
            ctl(Path::new("/srv/ob"), "start"),
            "outboxctl --home /srv/ob start"
        );
    }
}
