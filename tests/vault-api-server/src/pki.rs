//! Throw-away certificates for TLS tests, generated with rcgen (ECDSA P-256).

use std::io;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

/// A test PKI: a CA, a server certificate and a client certificate it
/// signed, plus an unrelated second CA with its own client certificate (for
/// "wrong CA" tests). Every field is PEM.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA that signed the server and client certificates.
    pub ca_cert_pem: String,
    /// Server certificate: SANs = the given names plus IP `127.0.0.1`,
    /// server-auth EKU, signed by the CA.
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// Client certificate: CN `docker-host`, client-auth EKU, signed by the CA.
    pub client_cert_pem: String,
    pub client_key_pem: String,
    /// A second, unrelated CA.
    pub other_ca_cert_pem: String,
    /// Client certificate (CN `docker-host`) signed by the other CA.
    pub other_client_cert_pem: String,
    pub other_client_key_pem: String,
}

fn serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn make_ca(cn: &str) -> Result<(String, Issuer<'static, KeyPair>), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.remove(DnType::CommonName);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(serial());
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

fn leaf(
    cn: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.remove(DnType::CommonName);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial());
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl TestPki {
    /// Generate a fresh PKI. Panics if generation fails (test convenience).
    pub fn generate(server_names: &[&str]) -> TestPki {
        match TestPki::try_generate(server_names) {
            Ok(p) => p,
            Err(e) => panic!("vault-api-server: TestPki::generate({server_names:?}): {e}"),
        }
    }

    /// [`TestPki::generate`] returning errors (e.g. an invalid DNS name).
    pub fn try_generate(server_names: &[&str]) -> Result<TestPki, rcgen::Error> {
        let (ca_cert_pem, ca) = make_ca("vault-api-server test CA")?;
        let mut sans = server_names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*n).try_into()?)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        let localhost = SanType::IpAddress([127, 0, 0, 1].into());
        if !sans.contains(&localhost) {
            sans.push(localhost);
        }
        let cn = server_names.first().copied().unwrap_or("127.0.0.1");
        let (server_cert_pem, server_key_pem) =
            leaf(cn, sans, ExtendedKeyUsagePurpose::ServerAuth, &ca)?;
        let (client_cert_pem, client_key_pem) = leaf(
            "docker-host",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca,
        )?;
        let (other_ca_cert_pem, other) = make_ca("vault-api-server other test CA")?;
        let (other_client_cert_pem, other_client_key_pem) = leaf(
            "docker-host",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            &other,
        )?;
        Ok(TestPki {
            ca_cert_pem,
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
            other_ca_cert_pem,
            other_client_cert_pem,
            other_client_key_pem,
        })
    }

    /// Write `ca.pem`, `server.pem`, `server-key.pem`, `client.pem`,
    /// `client-key.pem`, `other-ca.pem`, `other-client.pem` and
    /// `other-client-key.pem` into `dir` (keys mode 0600).
    pub fn write_to(&self, dir: &Path) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let files = [
            ("ca.pem", &self.ca_cert_pem, false),
            ("server.pem", &self.server_cert_pem, false),
            ("server-key.pem", &self.server_key_pem, true),
            ("client.pem", &self.client_cert_pem, false),
            ("client-key.pem", &self.client_key_pem, true),
            ("other-ca.pem", &self.other_ca_cert_pem, false),
            ("other-client.pem", &self.other_client_cert_pem, false),
            ("other-client-key.pem", &self.other_client_key_pem, true),
        ];
        for (name, text, secret) in files {
            let path = dir.join(name);
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            opts.mode(if secret { 0o600 } else { 0o644 });
            let mut f = opts.open(&path)?;
            if secret {
                // An existing file keeps its mode on open; enforce 0600.
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            std::io::Write::write_all(&mut f, text.as_bytes())?;
        }
        Ok(())
    }
}
