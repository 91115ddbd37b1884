//! Filling in the templates: placeholders, and the escaping systemd and
//! XML need (a value that cannot be escaped is refused).

use super::*;

/// `template` with each `{{NAME}}` replaced by its value, in one pass (a
/// value is never searched for placeholders).
pub(super) fn fill(template: &str, values: &[(&str, String)]) -> String {
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
pub(super) fn systemd_word(text: &str) -> Result<String, Failure> {
    let (escaped, quote) = systemd_escape(text)?;
    Ok(match quote {
        true => format!("\"{escaped}\""),
        false => escaped,
    })
}

/// `text` escaped for a unit file, and whether it needs double quotes.
pub(super) fn systemd_escape(text: &str) -> Result<(String, bool), Failure> {
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
pub(super) fn utf8(path: &Path) -> Result<&str, Failure> {
    path.to_str().ok_or_else(|| {
        Failure::new(format!(
            "{} is not UTF-8, which a service file cannot hold",
            path.display()
        ))
    })
}

/// `text` for an XML string element.
pub(super) fn xml_escape(text: &str) -> Result<String, Failure> {
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
