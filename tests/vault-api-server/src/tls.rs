//! TLS listener configuration (rustls with the aws-lc-rs provider) and the
//! certificate chain check the cert auth method uses.

use std::io;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::TlsSettings;

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Every `CERTIFICATE` block of a PEM string (at least one).
pub(crate) fn parse_certs(pem: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE block in PEM".into()));
    }
    Ok(certs)
}

fn parse_key(pem: &str) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| invalid(format!("bad private key PEM: {e}")))
}

fn roots(certs: &[CertificateDer<'static>]) -> io::Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for c in certs {
        store
            .add(c.clone())
            .map_err(|e| invalid(format!("bad CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// Vault's listener default (`tls.RequestClientCert`): ask for a client
/// certificate, accept any (the cert auth method verifies it), but still
/// check the handshake signature so the client proves it holds the key.
#[derive(Debug)]
struct AnyClientCert {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The rustls server configuration for [`TlsSettings`].
///
/// With `client_ca_pem`, client certificates are requested and verified
/// against that CA during the handshake but not required. Without it they are
/// requested and accepted unverified (Vault's default listener), so the
/// cert auth method decides.
pub(crate) fn server_config(s: &TlsSettings) -> io::Result<Arc<rustls::ServerConfig>> {
    let provider = provider();
    let chain = parse_certs(&s.cert_chain_pem)?;
    let key = parse_key(&s.key_pem)?;
    let verifier: Arc<dyn ClientCertVerifier> = match &s.client_ca_pem {
        Some(ca) => {
            WebPkiClientVerifier::builder_with_provider(roots(&parse_certs(ca)?)?, provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| invalid(format!("client CA: {e}")))?
        }
        None => Arc::new(AnyClientCert {
            algs: provider.signature_verification_algorithms,
        }),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| invalid(format!("server certificate/key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Whether `chain` (leaf first, then intermediates) is a valid client-auth
/// chain to one of `anchors` at the current time: a real signature check by
/// webpki (through rustls' client verifier), including validity dates and
/// the client-auth extended key usage.
pub(crate) fn verify_client_chain(
    anchors: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
) -> bool {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return false;
    };
    let Ok(roots) = roots(anchors) else {
        return false;
    };
    let Ok(verifier) = WebPkiClientVerifier::builder_with_provider(roots, provider()).build()
    else {
        return false;
    };
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .is_ok()
}
