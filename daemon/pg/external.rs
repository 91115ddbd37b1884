//! External mode (`--database-url`): PostgreSQL belongs to someone else.
//! The component never starts or stops it; it checks it now and then, and
//! publishes the connection for the drain. TLS is used when the server
//! offers it (`sslmode=prefer`, the default) and required with
//! `sslmode=require`; as with libpq's `require`, the certificate is not
//! verified (tokio-postgres has no `verify-full`).

use std::sync::Arc;
use std::time::Duration;

use outboxd::protocol::{PgState, PostgresStatus};
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
    let config: tokio_postgres::Config = match url.parse() {
        Ok(config) => config,
        Err(e) => {
            // Config validation parsed it already; keep the component alive.
            inbox.status.send_modify(|s| {
                s.state = PgState::Failed;
                s.last_failure = Some(format!("invalid database URL: {e}"));
            });
            tokio_postgres::Config::new()
        }
    };
    let external = Connection { config, tls: true };
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
                        s.last_failure_at = Some(crate::unix_now());
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

/// A rustls connector that encrypts without verifying the server's
/// certificate: libpq's `sslmode=require`.
pub fn tls_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// Accepts any certificate: encryption without authentication, as libpq's
/// `sslmode=require`. Signatures are still checked, so the handshake is
/// sound; only the certificate's identity is not.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
