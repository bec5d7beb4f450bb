//! A test certificate authority and a server certificate it signs, for TLS
//! servers on loopback, written as PEM files.

use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// PEM files of a CA and of one server certificate signed by it.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA certificate (what clients trust).
    pub ca_file: PathBuf,
    /// The server's certificate.
    pub cert_file: PathBuf,
    /// The server's private key.
    pub key_file: PathBuf,
}

impl TestCa {
    /// A new CA and a server certificate for `names` (IP addresses or DNS
    /// names), written under `dir`.
    pub fn create(dir: &Path, names: &[&str]) -> Result<TestCa> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "opsrun test CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate()?;
        let server_params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        let server_cert = server_params.signed_by(&server_key, &issuer)?;
        std::fs::create_dir_all(dir)?;
        let ca = TestCa {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server-key.pem"),
        };
        std::fs::write(&ca.ca_file, ca_cert.pem())?;
        std::fs::write(&ca.cert_file, server_cert.pem())?;
        std::fs::write(&ca.key_file, server_key.serialize_pem())?;
        Ok(ca)
    }
}
