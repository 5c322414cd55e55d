//! Trust in a camera's TLS certificate (DECISIONS §3): cameras use self-signed certificates, so
//! each camera is trusted by a pinned SHA-256 fingerprint of its certificate, or by a CA bundle;
//! `insecure_skip_verify` exists for the lab only. rustls on `ring`, no OpenSSL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `tls = { ... }` of a camera. Exactly one of `fingerprint_sha256`, `ca_file`,
/// `insecure_skip_verify = true` must be given (checked by config validation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// SHA-256 of the camera certificate (DER), hex, colons optional: `"AB:CD:..."`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint_sha256: Option<String>,
    /// PEM bundle of CAs that issued the camera's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Name checked against the certificate with `ca_file` (default: the address's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Accept any certificate. Lab only: a warning is logged at every connect.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    /// Client certificate (PEM) and key (PEM, PKCS#8/PKCS#1/SEC1) presented to the camera.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

impl TlsConfig {
    fn trust_choice(&self) -> Result<(), TlsError> {
        let choices = self.fingerprint_sha256.is_some() as u8
            + self.ca_file.is_some() as u8
            + self.insecure_skip_verify as u8;
        if choices == 1 {
            Ok(())
        } else {
            Err(TlsError::TrustChoice)
        }
    }

    /// Every problem that would stop [`client_config`], each as a field suffix and message
    /// (`": give exactly one of ..."`, `".ca_file: ..."`), so config validation can report all of them.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = self.trust_choice() {
            p.push(format!(": {}", bare(&e)));
        }
        if let Some(fp) = &self.fingerprint_sha256 {
            if let Err(e) = parse_fingerprint(fp) {
                p.push(format!(": {}", bare(&e)));
            }
        }
        if let Some(ca) = &self.ca_file {
            if let Err(e) = load_certs(ca) {
                p.push(format!(".ca_file: {}", bare(&e)));
            }
        }
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                if let Err(e) = load_certs(cert) {
                    p.push(format!(".client_cert: {}", bare(&e)));
                }
                if let Err(e) = load_key(key) {
                    p.push(format!(".client_key: {}", bare(&e)));
                }
            }
            (None, None) => {}
            _ => p.push(format!(": {}", bare(&TlsError::ClientPair))),
        }
        p
    }
}

/// The message without its `tls: ` prefix, for callers that already name the field.
fn bare(e: &TlsError) -> String {
    let s = e.to_string();
    s.strip_prefix("tls: ").map(str::to_owned).unwrap_or(s)
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: give exactly one of fingerprint_sha256, ca_file, insecure_skip_verify = true")]
    TrustChoice,
    #[error("tls.fingerprint_sha256 must be 32 bytes of hex (colons allowed), got {0:?}")]
    BadFingerprint(String),
    #[error("tls: cannot read {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("tls: {path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("tls: client_cert and client_key go together")]
    ClientPair,
    #[error("tls: invalid server name {0:?}")]
    ServerName(String),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls: CA verifier: {0}")]
    Verifier(String),
}

/// The process's crypto provider: ring (cross-builds everywhere, no C toolchain surprises).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses `"AB:CD:.."` / `"abcd.."` into 32 bytes.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    let hex_only: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    let bytes = hex::decode(&hex_only).map_err(|_| TlsError::BadFingerprint(text.to_owned()))?;
    bytes
        .try_into()
        .map_err(|_| TlsError::BadFingerprint(text.to_owned()))
}

/// `AB:CD:...` form of a certificate's SHA-256, as printed by `openssl x509 -fingerprint -sha256`.
pub fn fingerprint_of(cert_der: &[u8]) -> String {
    let digest = Sha256::digest(cert_der);
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Accepts exactly the certificate whose SHA-256 is pinned; signatures are still verified, so
/// the peer must hold the pinned certificate's key.
#[derive(Debug)]
struct PinnedVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

/// Accepts any certificate (lab only); signatures are still checked against it.
#[derive(Debug)]
struct AnyCertVerifier {
    provider: Arc<CryptoProvider>,
}

macro_rules! signature_checks {
    () => {
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
                &self.provider.signature_verification_algorithms,
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
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if subtle::ConstantTimeEq::ct_eq(&got[..], &self.fingerprint[..]).into() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate fingerprint {} does not match the pinned one",
                fingerprint_of(end_entity.as_ref())
            )))
        }
    }

    signature_checks!();
}

impl ServerCertVerifier for AnyCertVerifier {
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

    signature_checks!();
}

/// A ready client configuration plus the name to present in SNI / check with a CA.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    pub insecure: bool,
}

/// Builds the TLS client side for one camera at `host`.
pub fn client_config(cfg: &TlsConfig, host: &str) -> Result<ClientTls, TlsError> {
    let provider = provider();
    cfg.trust_choice()?;
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if let Some(fp) = &cfg.fingerprint_sha256 {
        let fingerprint = parse_fingerprint(fp)?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                fingerprint,
                provider,
            }))
    } else if let Some(ca) = &cfg.ca_file {
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(ca)? {
            roots.add(c)?;
        }
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        builder.with_webpki_verifier(verifier)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertVerifier { provider }))
    };
    let config = match (&cfg.client_cert, &cfg.client_key) {
        (Some(c), Some(k)) => builder.with_client_auth_cert(load_certs(c)?, load_key(k)?)?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::ClientPair),
    };
    let name = cfg.server_name.clone().unwrap_or_else(|| host.to_owned());
    let server_name = ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name))?;
    Ok(ClientTls {
        config: Arc::new(config),
        server_name,
        insecure: cfg.insecure_skip_verify,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_both_spellings() {
        let colon = (0..32)
            .map(|i| format!("{i:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let plain = colon.replace(':', "").to_lowercase();
        assert_eq!(
            parse_fingerprint(&colon).unwrap(),
            parse_fingerprint(&plain).unwrap()
        );
        assert!(parse_fingerprint("AB:CD").is_err());
        assert!(parse_fingerprint("zz").is_err());
    }

    #[test]
    fn fingerprint_format_matches_openssl_style() {
        let fp = fingerprint_of(b"abc");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.starts_with("BA:78:16:BF"));
    }

    #[test]
    fn exactly_one_trust_choice() {
        assert!(matches!(
            client_config(&TlsConfig::default(), "127.0.0.1"),
            Err(TlsError::TrustChoice)
        ));
        let both = TlsConfig {
            fingerprint_sha256: Some("00".repeat(32)),
            insecure_skip_verify: true,
            ..Default::default()
        };
        assert!(matches!(
            client_config(&both, "127.0.0.1"),
            Err(TlsError::TrustChoice)
        ));
        let ok = TlsConfig {
            fingerprint_sha256: Some("00".repeat(32)),
            ..Default::default()
        };
        assert!(client_config(&ok, "127.0.0.1").is_ok());
    }
}
