//! The TLS settings of `database_url` that tokio-postgres does not parse:
//! `sslmode=verify-ca` and `sslmode=verify-full`, and `sslrootcert`. They
//! are taken out of the URL (which then says `sslmode=require`, so TLS is
//! required) and returned for the daemon's certificate verifier, with
//! libpq's meanings:
//!
//! - `verify-ca`: the server's certificate must chain to a CA in
//!   `sslrootcert`; `verify-full`: and name the host connected to.
//! - `sslrootcert=<file>`: a PEM file of trusted CAs; `sslrootcert=system`:
//!   the system's trusted CAs (`verify-full` only, as libpq requires).
//! - `sslmode=require` with an `sslrootcert` file behaves as `verify-ca`
//!   (libpq's compatibility rule).
//!
//! Unlike libpq, there is no default `~/.postgresql/root.crt`: a verifying
//! mode needs `sslrootcert`, so that a daemon's trust is in its
//! configuration.

use std::path::PathBuf;

/// How the server's certificate is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Not at all (`disable`, `prefer`, `require`): encryption only.
    Nothing,
    /// The chain to a trusted CA (`verify-ca`).
    Ca,
    /// The chain and the host name (`verify-full`).
    Full,
}

impl Verify {
    pub fn sslmode(self) -> &'static str {
        match self {
            Verify::Nothing => "require",
            Verify::Ca => "verify-ca",
            Verify::Full => "verify-full",
        }
    }
}

/// Where the trusted CAs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    System,
}

/// The TLS settings taken out of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub verify: Verify,
    pub root_cert: Option<RootCert>,
}

/// Splits `url` into a URL tokio-postgres parses and its TLS settings; an
/// error says what is wrong and what to write instead.
pub fn split(url: &str) -> Result<(String, Tls), String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut kept = Vec::new();
    let mut verify = None;
    let mut root_cert = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || -> String {
            url::form_urlencoded::parse(format!("v={value}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        match key {
            "sslmode" if value == "verify-ca" => verify = Some(Verify::Ca),
            "sslmode" if value == "verify-full" => verify = Some(Verify::Full),
            "sslmode" if value == "require" => verify = Some(Verify::Nothing),
            "sslrootcert" => {
                root_cert = Some(match decoded().as_str() {
                    "system" => RootCert::System,
                    "" => return Err("sslrootcert is empty: name a CA file (PEM)".into()),
                    file => RootCert::File(PathBuf::from(file)),
                });
            }
            _ => kept.push(pair),
        }
    }
    let verify = match (verify, &root_cert) {
        (Some(Verify::Nothing), Some(RootCert::File(_))) => Some(Verify::Ca),
        (verify, _) => verify,
    };
    if let Some(verify) = verify {
        kept.push("sslmode=require");
        if verify != Verify::Nothing && root_cert.is_none() {
            return Err(format!(
                "sslmode={} needs sslrootcert: add sslrootcert=<file> (the PEM file of the CA \
                 that signed the server's certificate), or sslrootcert=system for the system's \
                 trusted CAs",
                verify.sslmode()
            ));
        }
    }
    if root_cert == Some(RootCert::System) && verify != Some(Verify::Full) {
        return Err(
            "sslrootcert=system needs sslmode=verify-full (a public CA vouches for any name it \
             signed, so the host name must be checked too)"
                .into(),
        );
    }
    let url = match kept.is_empty() {
        true => base.to_string(),
        false => format!("{base}?{}", kept.join("&")),
    };
    Ok((
        url,
        Tls {
            verify: verify.unwrap_or(Verify::Nothing),
            root_cert: root_cert.filter(|_| verify.is_some_and(|v| v != Verify::Nothing)),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_modes_are_taken_out_and_tls_required() {
        let (url, tls) =
            split("postgresql://u:p@db:5432/x?application_name=a&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem")
                .unwrap();
        assert_eq!(
            url,
            "postgresql://u:p@db:5432/x?application_name=a&sslmode=require"
        );
        assert_eq!(tls.verify, Verify::Full);
        assert_eq!(tls.root_cert, Some(RootCert::File("/etc/ca.pem".into())));
        let (_, tls) = split("postgresql://db/x?sslmode=verify-ca&sslrootcert=/ca.pem").unwrap();
        assert_eq!(tls.verify, Verify::Ca);
        let (_, tls) = split("postgresql://db/x?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            tls.verify,
            Verify::Ca,
            "libpq: require with a root file is verify-ca"
        );
        let (url, tls) = split("postgresql://db/x?sslmode=prefer").unwrap();
        assert_eq!(url, "postgresql://db/x?sslmode=prefer");
        assert_eq!(tls.verify, Verify::Nothing);
        assert_eq!(split("postgresql://db/x").unwrap().0, "postgresql://db/x");
    }

    #[test]
    fn a_verifying_mode_without_roots_is_refused_with_the_fix() {
        let e = split("postgresql://db/x?sslmode=verify-full").unwrap_err();
        assert!(e.contains("sslrootcert=<file>"), "{e}");
        let e = split("postgresql://db/x?sslmode=verify-ca&sslrootcert=system").unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
        assert!(split("postgresql://db/x?sslmode=verify-full&sslrootcert=system").is_ok());
    }
}
