//! TLS for both planes (rustls): the server side with client-certificate verification, the
//! client side for plane-to-plane channels and kmsctl, and the caller's principal read from a
//! client certificate's URI SAN. `crate::reload` keeps both sides in step with their files.
//!
//! A client certificate names its principal in a URI subject alternative name holding an
//! `acs:ram::<uid>:...` ARN. URI SANs that do not start with `acs:` (a mesh's `spiffe://` ids,
//! say) are ignored; exactly one `acs:` SAN must remain and it must parse as a principal.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kms_types::{DomainError, Principal};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use zeroize::Zeroizing;

/// The prefix that marks a URI SAN as a principal ARN.
pub const PRINCIPAL_SAN_PREFIX: &str = "acs:";

/// The ALPN protocol gRPC runs on.
const ALPN_H2: &[u8] = b"h2";

/// `[identity.tls]`: serve TLS and identify callers by their client certificates.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// The server certificate's private key (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
    /// CA certificates (PEM bundle) that client certificates must chain to.
    pub client_ca_file: PathBuf,
    /// Refuse TLS connections without a client certificate. With `false`, such callers can
    /// still be identified by the trusted-sidecar or development header.
    #[serde(default = "yes")]
    pub require_client_cert: bool,
    /// The certificate this plane presents when it calls the other plane; its URI SAN must be
    /// `identity.service_principal`. Default: `cert_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// The private key of `client_cert_file`. Default: `key_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// CA certificates (PEM bundle) the other plane's server certificate must chain to.
    /// Default: `client_ca_file`.
    #[serde(default)]
    pub server_ca_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

impl TlsConfig {
    /// Checks the shape of the settings (the files are read by [`server_config`]).
    pub fn validate(&self) -> Result<(), String> {
        for (name, path) in [
            ("cert_file", Some(&self.cert_file)),
            ("key_file", Some(&self.key_file)),
            ("client_ca_file", Some(&self.client_ca_file)),
            ("client_cert_file", self.client_cert_file.as_ref()),
            ("client_key_file", self.client_key_file.as_ref()),
            ("server_ca_file", self.server_ca_file.as_ref()),
        ] {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(format!("identity.tls.{name} must not be empty"));
            }
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(
                "identity.tls.client_cert_file and identity.tls.client_key_file go together: set both or neither"
                    .into(),
            );
        }
        Ok(())
    }

    /// The client side of plane-to-plane calls: trusts `server_ca_file` (default
    /// `client_ca_file`) and presents `client_cert_file` (default `cert_file`).
    pub fn peer_client_config(&self) -> Result<ClientTlsConfig, TlsError> {
        client_config(
            self.server_ca_file
                .as_deref()
                .unwrap_or(&self.client_ca_file),
            self.client_cert_file.as_deref().unwrap_or(&self.cert_file),
            self.client_key_file.as_deref().unwrap_or(&self.key_file),
        )
    }

    /// The files the server side reads: certificate chain, key, client CA bundle.
    pub fn server_files(&self) -> Vec<PathBuf> {
        vec![
            self.cert_file.clone(),
            self.key_file.clone(),
            self.client_ca_file.clone(),
        ]
    }

    /// The files the client side of plane-to-plane calls reads: CA bundle, certificate, key.
    pub fn peer_files(&self) -> Vec<PathBuf> {
        vec![
            self.server_ca_file
                .clone()
                .unwrap_or_else(|| self.client_ca_file.clone()),
            self.client_cert_file
                .clone()
                .unwrap_or_else(|| self.cert_file.clone()),
            self.client_key_file
                .clone()
                .unwrap_or_else(|| self.key_file.clone()),
        ]
    }
}

/// Why TLS could not be set up. Messages name files, never their contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file holds no usable PEM certificate.
    #[error("{what} {path} holds no PEM certificate")]
    NoCertificate {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: String,
    },
    /// A key file holds no usable PEM private key.
    #[error("private key file {path} holds no PEM private key (PKCS#8, SEC1 or PKCS#1)")]
    NoKey {
        /// The file.
        path: String,
    },
    /// The files parse but cannot be used together: a key that is not the certificate's, a
    /// CA certificate that is not one.
    #[error("cannot use {files}: {reason}")]
    Refused {
        /// The files, named.
        files: String,
        /// What TLS said.
        reason: String,
    },
}

impl TlsError {
    fn refused(files: &[&Path], reason: impl std::fmt::Display) -> Self {
        TlsError::Refused {
            files: files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            reason: reason.to_string(),
        }
    }
}

/// Selects ring as rustls's process-wide crypto provider, once; later calls do nothing. Safe to
/// call from several places; the TLS helpers here call it themselves.
pub fn install_crypto_provider() {
    // An error means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An error and its sources, joined with ": " (tonic's transport errors say little on their
/// own).
pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(what, path)?;
    let mut certs = CertificateDer::pem_slice_iter(&pem);
    let first_ok = matches!(certs.next(), Some(Ok(_)));
    if !first_ok || certs.any(|c| c.is_err()) {
        return Err(TlsError::NoCertificate {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(pem)
}

fn read_key(path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    let pem = Zeroizing::new(read("private key file", path)?);
    if PrivateKeyDer::from_pem_slice(&pem).is_err() {
        return Err(TlsError::NoKey {
            path: path.display().to_string(),
        });
    }
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "private key file is readable by group or others; chmod 600 it"
        );
    }
    Ok(pem)
}

/// The server TLS settings: `cert_file`/`key_file` as the server identity, clients verified
/// against `client_ca_file` (required unless `require_client_cert = false`). Pass the result to
/// `Server::builder().tls_config(..)`.
pub fn server_config(config: &TlsConfig) -> Result<ServerTlsConfig, TlsError> {
    install_crypto_provider();
    let cert = read_certs("certificate file", &config.cert_file)?;
    let key = read_key(&config.key_file)?;
    let ca = read_certs("client CA file", &config.client_ca_file)?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key.as_slice()))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(!config.require_client_cert))
}

/// The rustls server settings: `cert_file`/`key_file` as the server identity (the key must be
/// the certificate's), clients verified against every CA in `client_ca_file` (a client may
/// come without a certificate when `require_client_cert = false`), HTTP/2 by ALPN. Every
/// handshake made with the result uses these files as they were read here.
pub fn server_rustls_config(config: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    install_crypto_provider();
    let cert = read_certs("certificate file", &config.cert_file)?;
    let key = read_key(&config.key_file)?;
    let ca = read_certs("client CA file", &config.client_ca_file)?;
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::NoCertificate {
            what: "certificate file",
            path: config.cert_file.display().to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_slice(key.as_slice()).map_err(|_| TlsError::NoKey {
        path: config.key_file.display().to_string(),
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&ca) {
        let der = der.map_err(|_| TlsError::NoCertificate {
            what: "client CA file",
            path: config.client_ca_file.display().to_string(),
        })?;
        roots
            .add(der)
            .map_err(|e| TlsError::refused(&[&config.client_ca_file], e))?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
    let verifier = if config.require_client_cert {
        verifier
    } else {
        verifier.allow_unauthenticated()
    }
    .build()
    .map_err(|e| TlsError::refused(&[&config.client_ca_file], e))?;
    let mut server = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::refused(&[&config.cert_file, &config.key_file], e))?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(server)
}

/// Client TLS settings: trust the CA bundle in `ca`, present the certificate `cert` with its
/// key `key`. Pass the result to `Endpoint::tls_config(..)` on an `https://` endpoint.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<ClientTlsConfig, TlsError> {
    install_crypto_provider();
    let ca = read_certs("CA file", ca)?;
    let cert = read_certs("certificate file", cert)?;
    let key = read_key(key)?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key.as_slice())))
}

/// The principal a DER client certificate names: `Ok(None)` when it has no `acs:` URI SAN;
/// `NoIdentity` when it cannot be parsed, has several, or the one it has is not a principal.
pub fn principal_from_cert(der: &[u8]) -> Result<Option<Principal>, DomainError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| DomainError::NoIdentity)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| DomainError::NoIdentity)?;
    let Some(san) = san else {
        return Ok(None);
    };
    let mut arns = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri)
                if uri.starts_with(PRINCIPAL_SAN_PREFIX) =>
            {
                Some(*uri)
            }
            _ => None,
        });
    match (arns.next(), arns.next()) {
        (None, _) => Ok(None),
        (Some(arn), None) => Principal::parse(arn).map(Some),
        (Some(_), Some(_)) => Err(DomainError::NoIdentity),
    }
}

/// Certificates for the crate's tests.
#[cfg(test)]
pub(crate) mod testing {
    #![allow(clippy::unwrap_used)]

    /// A CA (rcgen) that issues certificates for `localhost` and 127.0.0.1.
    pub(crate) struct TestCa {
        /// Its certificate, PEM.
        pub(crate) pem: String,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl TestCa {
        pub(crate) fn new(name: &str) -> Self {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let key = rcgen::KeyPair::generate().unwrap();
            let pem = params.self_signed(&key).unwrap().pem();
            Self {
                pem,
                issuer: rcgen::Issuer::new(params, key),
            }
        }

        /// A certificate for `localhost` and 127.0.0.1: PEM, key PEM, DER.
        pub(crate) fn server(&self) -> (String, String, Vec<u8>) {
            let params = rcgen::CertificateParams::new(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ])
            .unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem(), cert.der().to_vec())
        }
    }

    /// Replaces `path` whole with `text` (written beside, renamed over).
    pub(crate) fn replace(path: &std::path::Path, text: &str) {
        let aside = path.with_extension("new");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, path).unwrap();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with(sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn uri_san_extraction() {
        let check = |sans: Vec<SanType>, want: Result<Option<&str>, DomainError>| {
            let got = principal_from_cert(&cert_with(sans.clone()));
            let got = got.map(|p| p.map(|p| p.arn().to_string()));
            assert_eq!(got, want.map(|o| o.map(str::to_string)), "{sans:?}");
        };
        check(vec![], Ok(None));
        check(
            vec![SanType::DnsName("localhost".try_into().unwrap())],
            Ok(None),
        );
        check(
            vec![uri("acs:ram::1234567890123456:root")],
            Ok(Some("acs:ram::1234567890123456:root")),
        );
        check(
            vec![
                uri("spiffe://cluster.local/ns/a/sa/b"),
                SanType::DnsName("app.local".try_into().unwrap()),
                uri("acs:ram::42:user/alice"),
            ],
            Ok(Some("acs:ram::42:user/alice")),
        );
        check(
            vec![uri("acs:ram::42:user/alice"), uri("acs:ram::42:user/bob")],
            Err(DomainError::NoIdentity),
        );
        check(
            vec![uri("acs:ram::42:user/alice"), uri("acs:ram::42:user/alice")],
            Err(DomainError::NoIdentity),
        );
        check(vec![uri("acs:ram::x:root")], Err(DomainError::NoIdentity));
        check(
            vec![uri("acs:kms:local:42:key/k")],
            Err(DomainError::NoIdentity),
        );
        assert_eq!(
            principal_from_cert(b"not a certificate"),
            Err(DomainError::NoIdentity)
        );
    }

    #[test]
    fn config_shape() {
        let good = TlsConfig {
            cert_file: "c.pem".into(),
            key_file: "k.pem".into(),
            client_ca_file: "ca.pem".into(),
            require_client_cert: true,
            client_cert_file: None,
            client_key_file: None,
            server_ca_file: None,
        };
        assert_eq!(good.validate(), Ok(()));
        let mut half = good.clone();
        half.client_cert_file = Some("cc.pem".into());
        assert!(half.validate().unwrap_err().contains("go together"));
        let mut empty = good.clone();
        empty.key_file = PathBuf::new();
        assert!(empty.validate().unwrap_err().contains("key_file"));
    }

    #[test]
    fn file_errors_name_the_file_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let key_pem = key.serialize_pem();
        let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert_pem = params.self_signed(&key).unwrap().pem();
        let cert = dir.path().join("c.pem");
        let key_path = dir.path().join("k.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key_path, &key_pem).unwrap();
        std::fs::write(&junk, "hello").unwrap();
        let cfg = |c: &Path, k: &Path, ca: &Path| TlsConfig {
            cert_file: c.into(),
            key_file: k.into(),
            client_ca_file: ca.into(),
            require_client_cert: true,
            client_cert_file: None,
            client_key_file: None,
            server_ca_file: None,
        };
        assert!(server_config(&cfg(&cert, &key_path, &cert)).is_ok());
        assert!(client_config(&cert, &cert, &key_path).is_ok());
        let err = server_config(&cfg(&cert, &cert, &cert))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.pem") && err.contains("no PEM private key"),
            "{err}"
        );
        assert!(!err.contains("BEGIN"), "{err}");
        let err = server_config(&cfg(&cert, &key_path, &junk))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("client CA file") && err.contains("junk.pem"),
            "{err}"
        );
        let err = server_config(&cfg(&dir.path().join("nope"), &key_path, &cert))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot read certificate file"), "{err}");
        // A key file holding a certificate is refused without echoing anything from it.
        let err = client_config(&cert, &cert, &junk).unwrap_err().to_string();
        assert!(err.contains("junk.pem") && !err.contains("hello"), "{err}");
    }
}
