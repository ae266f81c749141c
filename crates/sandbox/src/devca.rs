//! The sandbox's development PKI: a CA it creates at start, the HTTPS certificate of its
//! `secapi` port, and the merchant's API certificate (`apiclient_cert.pem` +
//! `apiclient_key.pem`, CN = mch_id like the ones WeChat issues) that the secapi port demands
//! from clients. Nothing here is secret outside a dev machine; the files are written to
//! `SANDBOX_CERT_DIR` for services in other processes.

use std::{io, path::Path, sync::Arc};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::WebPkiClientVerifier,
};

/// File names in `SANDBOX_CERT_DIR`.
pub const CA_FILE: &str = "ca.pem";
pub const CLIENT_CERT_FILE: &str = "apiclient_cert.pem";
pub const CLIENT_KEY_FILE: &str = "apiclient_key.pem";

/// The dev CA, the secapi server's certificate and the merchant's client certificate (PEM).
#[derive(Clone)]
pub struct DevPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    server_key_der: Vec<u8>,
    /// The merchant's API certificate (what pay-service's WXMP_PAY_CERT_PATH points at).
    pub client_cert_pem: String,
    /// Its private key (WXMP_PAY_CERT_KEY_PATH), PKCS#8.
    pub client_key_pem: String,
}

impl std::fmt::Debug for DevPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPki").finish_non_exhaustive()
    }
}

fn pki_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("sandbox dev PKI: {e}"))
}

impl DevPki {
    /// A fresh CA and the two certificates it signs: the server's for `localhost` /
    /// 127.0.0.1 / `hosts`, the client's for merchant `mch_id`.
    pub fn generate(mch_id: &str, hosts: &[String]) -> io::Result<Self> {
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(pki_error)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "wxmp sandbox dev CA (not WeChat)");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(pki_error)?;
        let ca_cert = ca.self_signed(&ca_key).map_err(pki_error)?;
        let issuer = Issuer::new(ca, ca_key);

        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        names.extend(hosts.iter().filter(|h| !h.is_empty()).cloned());
        names.dedup();
        let mut server = CertificateParams::new(names).map_err(pki_error)?;
        server
            .distinguished_name
            .push(DnType::CommonName, "wxmp sandbox secapi");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().map_err(pki_error)?;
        let server_cert = server.signed_by(&server_key, &issuer).map_err(pki_error)?;

        // WeChat's API certificates name the merchant: CN = mch_id, O = 微信商户系统.
        let mut client = CertificateParams::new(Vec::<String>::new()).map_err(pki_error)?;
        client.distinguished_name.push(DnType::CommonName, mch_id);
        client
            .distinguished_name
            .push(DnType::OrganizationName, "wxmp sandbox merchant");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().map_err(pki_error)?;
        let client_cert = client.signed_by(&client_key, &issuer).map_err(pki_error)?;

        Ok(Self {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_der: server_key.serialize_der(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, `apiclient_cert.pem` and `apiclient_key.pem` (0600) into `dir`.
    pub fn write_to(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(CA_FILE), &self.ca_pem)?;
        std::fs::write(dir.join(CLIENT_CERT_FILE), &self.client_cert_pem)?;
        let key = dir.join(CLIENT_KEY_FILE);
        std::fs::write(&key, &self.client_key_pem)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    /// The TLS config of the secapi port: our server certificate, and a client certificate
    /// signed by the dev CA is *required* (no certificate, no handshake).
    pub fn server_config(&self) -> io::Result<ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let ca_der = pem_der(&self.ca_pem)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca_der).map_err(pki_error)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(pki_error)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone()));
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(pki_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![pem_der(&self.server_cert_pem)?], key)
            .map_err(pki_error)
    }
}

/// The DER of the single certificate in `pem`.
fn pem_der(pem: &str) -> io::Result<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(pki_error)
}
