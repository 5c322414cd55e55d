//! The simulator's self-signed certificate, made at start-up with rcgen (no committed keys).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct SimCert {
    pub cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl SimCert {
    pub fn generate() -> Result<SimCert, rcgen::Error> {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "sim-camera".to_string(),
        ])?;
        Ok(SimCert {
            cert_der: ck.cert.der().clone(),
            key_der: ck.signing_key.serialize_der(),
            cert_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
        })
    }

    pub fn fingerprint(&self) -> String {
        crate::net::tls::fingerprint_of(self.cert_der.as_ref())
    }

    /// The TLS server side; with `client_ca`, a client certificate issued by it is required
    /// (the vendor's "OpenAPI cert").
    pub fn server_config(
        &self,
        client_ca: Option<&CertificateDer<'static>>,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let provider = crate::net::tls::provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.clone())?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        Ok(Arc::new(
            builder.with_single_cert(vec![self.cert_der.clone()], key)?,
        ))
    }
}
