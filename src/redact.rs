//! Connection URLs without their secrets, for `status`, `url` and logs.
//!
//! A URL is parsed with a real URL parser and rebuilt without its password
//! and without a `password` query parameter. A URL the parser rejects, or
//! one whose password PostgreSQL's client would read differently from the
//! parser (an unencoded `/`, `?` or `@` in it), is not shown at all: only its
//! scheme. Redaction never guesses.

/// `url` without its password.
pub fn url(url: &str) -> String {
    match redacted(url) {
        Some(safe) => safe,
        None => {
            let scheme = url.split_once("://").map_or("postgresql", |(s, _)| s);
            format!("{scheme}://(unparseable URL hidden: it may hold a password)")
        }
    }
}

fn redacted(text: &str) -> Option<String> {
    // Credentials with an empty host (`postgresql://u:pw@/db?host=/socket`,
    // what `outboxctl url --with-password` prints for a socket) are fine to
    // libpq and tokio-postgres but not to the URL parser: parse them with a
    // placeholder host, taken out again afterwards.
    const PLACEHOLDER: &str = "outboxd-empty-host.invalid";
    if let Some((scheme, rest)) = text.split_once("://") {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        if rest[..end].ends_with('@') && !text.contains(PLACEHOLDER) {
            let with_host = format!("{scheme}://{}{PLACEHOLDER}{}", &rest[..end], &rest[end..]);
            return redacted_as(&with_host, text).map(|safe| safe.replacen(PLACEHOLDER, "", 1));
        }
    }
    redacted_as(text, text)
}

/// `parse` redacted, as long as the client reads `client` (the URL as
/// given) the same way.
fn redacted_as(parse: &str, client: &str) -> Option<String> {
    let mut parsed = url::Url::parse(parse).ok()?;
    // What tokio-postgres (the client that connects) takes for the password
    // must be what the parser saw, or the parser split the URL elsewhere.
    let client = client.parse::<tokio_postgres::Config>().ok();
    let client_password = client.as_ref().and_then(|c| c.get_password());
    let parser_password = parsed.password().map(percent_decode).unwrap_or_default();
    if let Some(password) = client_password
        && password != parser_password.as_slice()
        && !query_has_password(&parsed)
    {
        return None;
    }
    if parsed.password().is_some() {
        parsed.set_password(None).ok()?;
    }
    if query_has_password(&parsed) {
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| k != "password")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    Some(parsed.to_string())
}

fn query_has_password(url: &url::Url) -> bool {
    url.query_pairs().any(|(k, _)| k == "password")
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let cases = [
            "postgres://u:secret@db:5432/x?sslmode=require",
            "postgresql://u:secret@db/x",
            "postgresql://u@db/x?password=secret",
            "postgresql://u@db/x?password=secret&sslmode=require",
            "postgresql://u:sec%2Fret@db/x",
            "postgresql://u:sec/ret@db/x",
            "postgresql://u:sec?ret@db/x",
            "postgresql://u:s@c@db/x",
            "postgresql://u:secret@[::1]:5/x",
            "postgresql://u:secret@/x?host=/tmp",
            "postgresql://u:sec/ret@/x",
            "not a url secret",
        ];
        for case in cases {
            let shown = url(case);
            assert!(!shown.contains("secret"), "{case} -> {shown}");
            assert!(!shown.contains("sec"), "{case} -> {shown}");
        }
    }

    #[test]
    fn everything_else_stays() {
        assert_eq!(
            url("postgres://u:secret@db:5432/x?sslmode=require"),
            "postgres://u@db:5432/x?sslmode=require"
        );
        assert_eq!(url("postgresql://u@db/x"), "postgresql://u@db/x");
        assert_eq!(
            url("postgresql:///x?host=/tmp"),
            "postgresql:///x?host=/tmp"
        );
        assert_eq!(
            url("postgresql://u@db/x?password=p&sslmode=require"),
            "postgresql://u@db/x?sslmode=require"
        );
        // What `outboxctl url --with-password` prints for a socket.
        assert_eq!(
            url("postgresql://postgres:secret@/postgres?host=%2Ftmp%2Fh%2Fpg%2Fsocket&port=5432"),
            "postgresql://postgres@/postgres?host=%2Ftmp%2Fh%2Fpg%2Fsocket&port=5432"
        );
    }
}
