//! The control plane's device CA: it issues the QUIC server certificate and
//! one client certificate per enrolled device. The CA key never leaves the
//! server's data directory.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SignatureAlgorithm, PKCS_ED25519,
};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("device CA {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("device CA: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("device public key must be 32 raw ed25519 bytes, got {0}")]
    BadPublicKey(usize),
    #[error("device CA: unexpected Ed25519 PKCS#8 key layout")]
    KeyFormat,
}

pub struct DeviceCa {
    key: KeyPair,
    params: CertificateParams,
    cert_der: Vec<u8>,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Ferry device CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// A raw ed25519 public key sent by a device at enrollment.
struct RawEd25519<'a>(&'a [u8]);

impl PublicKeyData for RawEd25519<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ED25519
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

impl DeviceCa {
    /// Loads the CA from `dir` (`ca.key`, `ca.der`), creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.der");
        let params = ca_params();
        if key_path.exists() {
            let pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let key = KeyPair::from_pem(&pem)?;
            let cert_der = std::fs::read(&cert_path).map_err(io(&cert_path))?;
            return Ok(Self {
                key,
                params,
                cert_der,
            });
        }
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().to_vec();
        std::fs::write(&cert_path, &cert_der).map_err(io(&cert_path))?;
        std::fs::write(dir.join("ca.pem"), cert.pem()).map_err(io(&dir.join("ca.pem")))?;
        write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
        Ok(Self {
            key,
            params,
            cert_der,
        })
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.cert_der)
    }

    /// A client certificate (and its fresh PKCS#8 key) whose common name is
    /// `name`: the MQTT user a broker with `use_identity_as_username` sees
    /// (`ferry-control` for the server's ingest). Device ids start with
    /// `dev_`, so a name without that prefix never collides with a device.
    pub fn issue_client(&self, name: &str) -> Result<(Vec<u8>, Vec<u8>), CaError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.der().to_vec(), pkcs8_v1(&key.serialize_der())?))
    }

    /// A client certificate for a device's own public key. The subject
    /// names the device, but the control plane identifies the device by the
    /// certificate's SHA-256 alone (looked up in its device table).
    pub fn issue_device(
        &self,
        device_id: &str,
        tenant: &str,
        public_key: &[u8],
    ) -> Result<Vec<u8>, CaError> {
        if public_key.len() != 32 {
            return Err(CaError::BadPublicKey(public_key.len()));
        }
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device_id);
        dn.push(DnType::OrganizationName, tenant);
        p.distinguished_name = dn;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issuer = Issuer::from_params(&self.params, &self.key);
        Ok(p.signed_by(&RawEd25519(public_key), &issuer)?
            .der()
            .to_vec())
    }

    /// A fresh server certificate (and its PKCS#8 key) for `names`.
    pub fn issue_server(&self, names: &[String]) -> Result<(Vec<u8>, Vec<u8>), CaError> {
        let mut p = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Ferry control plane");
        p.distinguished_name = dn;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.der().to_vec(), pkcs8_v1(&key.serialize_der())?))
    }
}

/// An Ed25519 PKCS#8 key as version 1 (RFC 5208: the seed only). rcgen
/// (ring) writes version 2 with the public key appended, which OpenSSL 3,
/// and so Mosquitto, refuses to decode ("wrong tag"); rustls reads both.
fn pkcs8_v1(der: &[u8]) -> Result<Vec<u8>, CaError> {
    const SEED: [u8; 4] = [0x04, 0x22, 0x04, 0x20];
    const HEAD: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let at = der
        .windows(SEED.len())
        .position(|w| w == SEED)
        .map(|i| i + SEED.len())
        .filter(|i| der.len() >= i + 32)
        .ok_or(CaError::KeyFormat)?;
    let mut out = HEAD.to_vec();
    out.extend_from_slice(&der[at..at + 32]);
    Ok(out)
}

/// `der` as a PEM block labelled `label` (`CERTIFICATE`, `PRIVATE KEY`),
/// 64 characters a line, `\n` line ends.
pub fn pem(label: &str, der: &[u8]) -> String {
    let config = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
    ::pem::encode_config(&::pem::Pem::new(label, der), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_and_issues_device_and_server_certs() {
        let d = tempfile::tempdir().unwrap();
        let ca = DeviceCa::load_or_create(d.path()).unwrap();
        let again = DeviceCa::load_or_create(d.path()).unwrap();
        assert_eq!(ca.cert_der(), again.cert_der());
        let dev = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let der = ca
            .issue_device("dev_1", "acme", dev.public_key_raw())
            .unwrap();
        assert!(!der.is_empty());
        assert!(matches!(
            ca.issue_device("dev_1", "acme", &[1, 2, 3]),
            Err(CaError::BadPublicKey(3))
        ));
        let (s, k) = again.issue_server(&["localhost".into()]).unwrap();
        assert!(!s.is_empty() && !k.is_empty());
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(!ca.cert_pem().contains('\r'));
        let parsed = ::pem::parse(ca.cert_pem()).unwrap();
        assert_eq!(parsed.tag(), "CERTIFICATE");
        assert_eq!(parsed.contents(), ca.cert_der());
    }

    /// Keys are written as PKCS#8 v1 (OpenSSL 3 and Mosquitto refuse
    /// ring's v2), and they are the same key rustls loads.
    #[test]
    fn keys_are_pkcs8_v1_seeds() {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let d = tempfile::tempdir().unwrap();
        let ca = DeviceCa::load_or_create(d.path()).unwrap();
        let (_, server) = ca.issue_server(&["localhost".into()]).unwrap();
        let (_, client) = ca.issue_client("ferry-control").unwrap();
        for k in [server, client] {
            assert_eq!(k.len(), 48);
            assert_eq!(&k[..5], &[0x30, 0x2e, 0x02, 0x01, 0x00]);
            ed25519_dalek::SigningKey::from_pkcs8_der(&k).unwrap();
            KeyPair::try_from(k.as_slice()).unwrap();
        }
        assert!(pkcs8_v1(&[1, 2, 3]).is_err());
    }
}
