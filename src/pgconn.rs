//! Connecting to PostgreSQL as libpq would, for every part that connects
//! (the daemon's drain and checks, consumers, `outboxctl tail`): TLS as the
//! URL's `sslmode` says (see [`crate::pgurl`]), with libpq's meanings.
//!
//! - `disable`: plain; `prefer` (the default): TLS when the server offers
//!   it, without verifying its certificate; `require`: TLS, not verified.
//! - `verify-ca`: the chain to a CA of `sslrootcert`; `verify-full`: the
//!   chain and the host name.
//!
//! A verification failure says what failed and what to change. The
//! embedded server is reached over its Unix socket (or loopback on
//! Windows) and needs no TLS: [`Target::plain`].

use std::sync::Arc;

use futures_util::StreamExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client};

use crate::pgurl::{RootCert, Tls, Verify};

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Target {
    pub config: tokio_postgres::Config,
    /// The TLS client configuration, which verifies the server as
    /// `sslmode` says; `None`: never TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    /// A database URL (`postgresql://…?sslmode=verify-full&sslrootcert=…`);
    /// the error says what is wrong with it.
    pub fn from_url(url: &str) -> Result<Target, String> {
        let (url, tls) = crate::pgurl::split(url)?;
        let config = url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| format!("invalid database URL: {e}"))?;
        Ok(Target {
            config,
            tls: Some(tls_config(&tls)?),
        })
    }

    /// Without TLS (the embedded server's socket, or a trusted network).
    pub fn plain(config: tokio_postgres::Config) -> Target {
        Target { config, tls: None }
    }

    /// Connects. The connection's I/O runs in a task of its own until the
    /// client is dropped; its notifications and notices go to `messages`
    /// when given. A full channel drops them (its capacity is its bound):
    /// use them as wake-ups, and read what is new from the tables.
    pub async fn connect(
        &self,
        messages: Option<mpsc::Sender<AsyncMessage>>,
    ) -> Result<Client, tokio_postgres::Error> {
        match &self.tls {
            Some(tls) => {
                let connector = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                let (client, connection) = self.config.connect(connector).await?;
                spawn(connection, messages);
                Ok(client)
            }
            None => {
                let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
                spawn(connection, messages);
                Ok(client)
            }
        }
    }
}

/// A client error with everything PostgreSQL said: the server's message,
/// detail and hint, or the cause of a failed connection (tokio-postgres's
/// own text is often only "db error" or "error connecting to server").
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; detail: {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Runs `connection` until it ends, passing its messages on.
fn spawn<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    messages: Option<mpsc::Sender<AsyncMessage>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(messages) = messages else {
        tokio::spawn(async move {
            let _ = connection.await;
        });
        return;
    };
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = stream.next().await {
            // Full, or a receiver that went away: the message is dropped
            // and the connection goes on.
            let _ = messages.try_send(message);
        }
    });
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
