//! External mode (`--database-url`): PostgreSQL belongs to someone else.
//! The component never starts or stops it; it checks it now and then, and
//! publishes the connection for the drain.
//!
//! TLS, as libpq's `sslmode` (see `outboxd::pgurl`): used when the server
//! offers it (`prefer`, the default), required with `require` (encryption
//! without verifying the certificate, as libpq's `require`), and verified
//! with `verify-ca` (the chain to a CA of `sslrootcert`) and `verify-full`
//! (the chain and the host name). A verification failure says what failed
//! and what to change.

use std::sync::Arc;
use std::time::Duration;

use outboxd::pgurl::{RootCert, Tls, Verify};
use outboxd::protocol::{PgState, PostgresStatus};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::sync::watch;
use tracing::{info, warn};

use super::Connection;
use super::instance::query_version;
use crate::component::{Command, Inbox};
use crate::watchdog::Heartbeat;

/// How often an external server is checked.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The external server's component: checks it until `Shutdown`.
pub async fn run_external(
    url: String,
    mut inbox: Inbox<PostgresStatus>,
    connection: watch::Sender<Option<Connection>>,
    heartbeat: Heartbeat,
) {
    let parsed = outboxd::pgurl::split(&url).and_then(|(url, tls)| {
        let config = url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| format!("invalid database URL: {e}"))?;
        Ok((config, tls_config(&tls)?))
    });
    let (config, tls) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            // Config validation checked the URL already; what is left is
            // sslrootcert (a file that cannot be read or holds no CA). The
            // component stays alive and says why it cannot connect.
            warn!(error = %e, "the external PostgreSQL cannot be used");
            inbox.status.send_modify(|s| {
                s.state = PgState::Failed;
                s.last_failure = Some(e);
                s.last_failure_at = Some(outboxd::utc::unix_now());
            });
            return inbox
                .refuse_until_shutdown(
                    heartbeat,
                    "postgres is external (--database-url): outboxd does not start or stop it",
                )
                .await;
        }
    };
    let external = Connection {
        config,
        tls: Some(tls),
    };
    connection.send_replace(Some(external.clone()));
    let mut check = tokio::time::interval(CHECK_EVERY);
    let mut alive = tokio::time::interval(Duration::from_secs(1));
    loop {
        heartbeat.beat();
        tokio::select! {
            _ = alive.tick() => {}
            _ = check.tick() => {
                let outcome = tokio::time::timeout(Duration::from_secs(10), query_version(&external)).await;
                let outcome = outcome.unwrap_or_else(|_| Err(super::error::PgError::Client("no answer within 10 s".into())));
                let before = inbox.status.borrow().state;
                inbox.status.send_modify(|s| match outcome {
                    // It answered: up, but every connection slot is taken
                    // (by the drains of many hosts, say). Noted, not down.
                    Err(super::error::PgError::Busy(why)) => {
                        s.state = PgState::Running;
                        s.last_failure = Some(why);
                        s.last_failure_at = Some(outboxd::utc::unix_now());
                    }
                    Ok(version) => {
                        if before != PgState::Running {
                            info!(version = %version, "the external PostgreSQL answers");
                        }
                        s.state = PgState::Running;
                        s.version = Some(version);
                    }
                    Err(why) => {
                        if before != PgState::Unreachable {
                            warn!(error = %why, "the external PostgreSQL cannot be reached");
                        }
                        s.state = PgState::Unreachable;
                        s.last_failure = Some(why.to_string());
                        s.last_failure_at = Some(outboxd::utc::unix_now());
                    }
                });
            }
            command = inbox.commands.recv() => match command {
                Some(Command::Start(reply) | Command::Stop(reply)) => {
                    let _ = reply.send(Err(
                        "postgres is external (--database-url): outboxd does not start or stop it".into(),
                    ));
                }
                Some(Command::Shutdown) | None => break,
            },
        }
    }
    connection.send_replace(None);
}

/// The largest `sslrootcert` file read.
const MAX_ROOT_CERT: u64 = 4 << 20;

/// The rustls configuration for `tls`: no verification (libpq's
/// `require`), or a verifier against `sslrootcert`'s CAs or the system's.
pub fn tls_config(tls: &Tls) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let verifier: Arc<dyn ServerCertVerifier> = match (tls.verify, &tls.root_cert) {
        (Verify::Nothing, _) | (_, None) => Arc::new(NoVerification(provider)),
        (verify, Some(root_cert)) => {
            let (roots, described) = trusted_roots(root_cert)?;
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("could not use the CAs of {described}: {e}"))?;
            Arc::new(Verifier {
                inner,
                verify,
                roots: described,
            })
        }
    };
    Ok(Arc::new(
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

/// The trusted CAs of `root_cert`, and how to name them in messages.
fn trusted_roots(root_cert: &RootCert) -> Result<(rustls::RootCertStore, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        RootCert::File(path) => {
            let described = format!("sslrootcert {}", path.display());
            let mut pem = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(
                    std::fs::File::open(path)
                        .map_err(|e| format!("could not read {described}: {e}"))?,
                    MAX_ROOT_CERT,
                ),
                &mut pem,
            )
            .map_err(|e| format!("could not read {described}: {e}"))?;
            use rustls::pki_types::pem::PemObject;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{described} is not a PEM certificate file: {e}"))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "{described} holds no usable CA certificate: set sslrootcert to the PEM file \
                     of the CA that signed the server's certificate"
                ));
            }
            Ok((roots, described))
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert=system found no trusted CA on this system ({} errors): install \
                     the CA certificates (ca-certificates) or name a CA file in sslrootcert",
                    found.errors.len()
                ));
            }
            Ok((
                roots,
                "the system's trusted CAs (sslrootcert=system)".into(),
            ))
        }
    }
}

/// libpq's `verify-ca` and `verify-full` on top of webpki's verifier,
/// which always checks the name: `verify-ca` forgives only a name that
/// does not match. Failures say what failed and what to do.
#[derive(Debug)]
struct Verifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    verify: Verify,
    roots: String,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let outcome = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let mode = self.verify.sslmode();
        let failure = match outcome {
            Ok(verified) => return Ok(verified),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.verify == Verify::Ca => return Ok(ServerCertVerified::assertion()),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => format!(
                "the server's certificate does not name the host {} (sslmode={mode}): connect by \
                 a name the certificate lists (hostaddr= can give the address), or use \
                 sslmode=verify-ca to check only the CA",
                server_name.to_str()
            ),
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => format!(
                "the server's certificate is not signed by a CA of {} (sslmode={mode}): set \
                 sslrootcert to the PEM file of the CA that signed it",
                self.roots
            ),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => format!(
                "the server's certificate has expired (sslmode={mode}): renew it on the server"
            ),
            Err(e) => format!(
                "the server's certificate was refused (sslmode={mode}, CAs of {}): {e}",
                self.roots
            ),
        };
        Err(rustls::Error::General(failure))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any certificate: encryption without authentication, as libpq's
/// `sslmode=require`. Signatures are still checked, so the handshake is
/// sound; only the certificate's identity is not.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
