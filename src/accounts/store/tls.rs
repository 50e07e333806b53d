//! TLS for the Postgres store: libpq's `sslmode` ladder on rustls (aws-lc-rs provider, set
//! explicitly rather than relying on a process-wide default).
//!
//! | sslmode | TLS | certificate chain | host name |
//! | --- | --- | --- | --- |
//! | `disable` | never | - | - |
//! | `allow`, `prefer` (default) | if the server offers it | not checked | not checked |
//! | `require` | always | not checked, unless `sslrootcert` is given (then as `verify-ca`) | not checked |
//! | `verify-ca` | always | `sslrootcert`, else the platform roots | not checked |
//! | `verify-full` | always | `sslrootcert`, else the platform roots | checked |
//!
//! `sslrootcert=system` (libpq 16) means the platform roots and implies `verify-full`.
//! SNI is sent for DNS host names (tokio-postgres-rustls passes the host; rustls sends it)
//! unless `sslsni=0`. Without verification the handshake signatures are still checked, so
//! the session is encrypted to whoever holds the presented certificate's key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};

/// libpq's `sslmode`, all six values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => {
                return Err(
                    "invalid sslmode (expected disable, allow, prefer, require, verify-ca or verify-full)"
                        .to_owned(),
                );
            }
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether TLS is attempted and whether it is mandatory.
    /// (`allow` tries plaintext first in libpq; tokio-postgres cannot, so it behaves as
    /// `prefer`, which still connects to every server `allow` connects to.)
    pub(crate) fn transport(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            Self::Disable => Pg::Disable,
            Self::Allow | Self::Prefer => Pg::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => Pg::Require,
        }
    }
}

/// Where the trust anchors come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootCert {
    /// The platform's CA bundle.
    System,
    /// A PEM file (`sslrootcert=/path`).
    File(String),
}

/// How the server certificate is checked, after resolving libpq's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verification {
    None,
    Chain,
    ChainAndName,
}

/// Resolves libpq's rules for `sslmode` and `sslrootcert` into the effective mode (the default
/// depends on `sslrootcert=system`) and rejects the combinations libpq rejects.
pub(crate) fn effective_mode(
    sslmode: Option<SslMode>,
    root: Option<&RootCert>,
) -> Result<SslMode, String> {
    match (sslmode, root) {
        (None, Some(RootCert::System)) => Ok(SslMode::VerifyFull),
        (Some(mode), Some(RootCert::System)) if mode != SslMode::VerifyFull => Err(format!(
            "sslrootcert=system requires sslmode=verify-full (got {})",
            mode.as_str()
        )),
        (mode, _) => Ok(mode.unwrap_or(SslMode::Prefer)),
    }
}

/// The rustls client configuration for a (resolved) mode. Reads `sslrootcert` and the
/// platform roots now, so a missing or unreadable file is a configuration error.
pub(crate) fn client_config(
    mode: SslMode,
    root: Option<&RootCert>,
    sni: bool,
) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let verification = match mode {
        SslMode::Disable | SslMode::Allow | SslMode::Prefer => Verification::None,
        SslMode::Require if root.is_none() => Verification::None,
        SslMode::Require | SslMode::VerifyCa => Verification::Chain,
        SslMode::VerifyFull => Verification::ChainAndName,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::None => Arc::new(LibpqVerifier {
            roots: None,
            algorithms,
        }),
        Verification::Chain => Arc::new(LibpqVerifier {
            roots: Some(Arc::new(load_roots(root.unwrap_or(&RootCert::System))?)),
            algorithms,
        }),
        Verification::ChainAndName => {
            let roots = Arc::new(load_roots(root.unwrap_or(&RootCert::System))?);
            WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.enable_sni = sni;
    Ok(config)
}

fn load_roots(root: &RootCert) -> Result<RootCertStore, String> {
    let certs = match root {
        RootCert::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("sslrootcert {path}: no certificate in the file"));
            }
            certs
        }
        RootCert::System => crate::tls::platform_roots()?,
    };
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err("sslrootcert: no usable certificate".to_owned());
    }
    Ok(roots)
}

/// The two verifiers of libpq's ladder that rustls does not have. Without `roots` (`prefer`,
/// `require` without a root): encrypt, check the handshake signature against the presented
/// certificate, but do not judge the certificate itself (libpq does the same). With `roots`
/// (`verify-ca`, and `require` with a root): the chain must lead to a trusted root and be valid
/// now; the host name is not compared. `verify-full` is rustls' own `WebPkiServerVerifier`.
#[derive(Debug)]
struct LibpqVerifier {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_rules_for_sslrootcert_system() {
        assert_eq!(effective_mode(None, None), Ok(SslMode::Prefer));
        assert_eq!(
            effective_mode(None, Some(&RootCert::System)),
            Ok(SslMode::VerifyFull)
        );
        assert!(effective_mode(Some(SslMode::Require), Some(&RootCert::System)).is_err());
        assert_eq!(
            effective_mode(Some(SslMode::Require), Some(&RootCert::File("x".into()))),
            Ok(SslMode::Require)
        );
    }

    #[test]
    fn every_mode_builds_a_config() {
        for mode in ["disable", "allow", "prefer", "require"] {
            client_config(SslMode::parse(mode).unwrap(), None, true).unwrap();
        }
        assert!(SslMode::parse("verify_full").is_err());
        assert!(
            client_config(
                SslMode::VerifyCa,
                Some(&RootCert::File("/nonexistent".into())),
                true
            )
            .is_err()
        );
    }
}
