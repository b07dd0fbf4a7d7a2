//! `kmsctl dev certs`: a private CA and the certificates a local mTLS stack needs: one server
//! certificate per plane (SANs `localhost`, `127.0.0.1` and any `--san`) and one client
//! certificate per principal, naming it in a URI SAN as the servers expect. PEM files; private
//! keys mode 0600.
//!
//! Every run makes a fresh CA and replaces the files, so restart servers and clients on the
//! new set. Development only: the CA key sits next to the certificates.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use kms_types::Principal;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::dev::{
    ACCOUNT_PRINCIPAL, CONTROL_SERVICE_PRINCIPAL, DATA_SERVICE_PRINCIPAL, OPERATOR_PRINCIPAL,
};

/// Principals that get a client certificate when none is named.
pub(crate) const DEFAULT_PRINCIPALS: [&str; 4] = [
    ACCOUNT_PRINCIPAL,
    OPERATOR_PRINCIPAL,
    CONTROL_SERVICE_PRINCIPAL,
    DATA_SERVICE_PRINCIPAL,
];

/// How long the certificates are valid.
const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far back validity starts, for clocks slightly behind.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Options of `kmsctl dev certs`.
#[derive(Debug, Args)]
pub(crate) struct CertsArgs {
    /// Directory for the PEM files; created (mode 0700) if needed; files in it are replaced
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Principal ARN to issue a client certificate for; repeatable [default: the dev account
    /// root, the operator and both planes' service principals]
    #[arg(long = "principal", id = "principal", value_name = "ARN")]
    principals: Vec<String>,
    /// Another DNS name or IP address on both planes' server certificates, for planes that
    /// reach each other by a service name (containers, Kubernetes); repeatable
    #[arg(long = "san", value_name = "NAME")]
    sans: Vec<String>,
}

/// A certificate and its private key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertFiles {
    /// The certificate (PEM).
    pub(crate) cert: PathBuf,
    /// Its private key (PEM, PKCS#8, mode 0600).
    pub(crate) key: PathBuf,
}

/// A client certificate for one principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientCert {
    /// The principal ARN in the URI SAN.
    pub(crate) principal: String,
    /// The files.
    pub(crate) files: CertFiles,
}

/// What [`generate_dev_certs`] wrote.
#[derive(Debug, Clone)]
pub(crate) struct DevCerts {
    /// The directory.
    pub(crate) dir: PathBuf,
    /// The CA: its certificate is the trust bundle of servers and clients.
    pub(crate) ca: CertFiles,
    /// The control plane's server certificate.
    pub(crate) control: CertFiles,
    /// The data plane's server certificate.
    pub(crate) data: CertFiles,
    /// One client certificate per principal.
    pub(crate) clients: Vec<ClientCert>,
}

impl DevCerts {
    /// The client certificate of `principal`, if one was made.
    pub(crate) fn client(&self, principal: &str) -> Option<&CertFiles> {
        self.clients
            .iter()
            .find(|c| c.principal == principal)
            .map(|c| &c.files)
    }

    /// What was written and how to use it.
    pub(crate) fn summary(&self) -> String {
        let mut s = String::new();
        let p = |f: &Path| f.display().to_string();
        let _ = writeln!(s, "wrote certificates to {}\n", self.dir.display());
        let _ = writeln!(s, "  CA (trust bundle)      {}", p(&self.ca.cert));
        let _ = writeln!(
            s,
            "  kms-control server     {}  key {}",
            p(&self.control.cert),
            p(&self.control.key)
        );
        let _ = writeln!(
            s,
            "  kms-data server        {}  key {}",
            p(&self.data.cert),
            p(&self.data.key)
        );
        for c in &self.clients {
            let _ = writeln!(s, "  client {}", c.principal);
            let _ = writeln!(
                s,
                "                         {}  key {}",
                p(&c.files.cert),
                p(&c.files.key)
            );
        }
        let _ = writeln!(
            s,
            "\nServers (SANs localhost, 127.0.0.1) — [identity.tls] in control.toml / data.toml:"
        );
        for (name, server, principal) in [
            ("control.toml", &self.control, CONTROL_SERVICE_PRINCIPAL),
            ("data.toml", &self.data, DATA_SERVICE_PRINCIPAL),
        ] {
            let _ = writeln!(s, "  # {name}");
            let _ = writeln!(s, "  cert_file = {:?}", p(&server.cert));
            let _ = writeln!(s, "  key_file = {:?}", p(&server.key));
            let _ = writeln!(s, "  client_ca_file = {:?}", p(&self.ca.cert));
            if let Some(client) = self.client(principal) {
                let _ = writeln!(s, "  client_cert_file = {:?}", p(&client.cert));
                let _ = writeln!(s, "  client_key_file = {:?}", p(&client.key));
            }
        }
        if let Some(c) = self.clients.first() {
            let _ = writeln!(s, "\nkmsctl over mTLS, as {}:", c.principal);
            let _ = writeln!(s, "  export KMS_CA={}", p(&self.ca.cert));
            let _ = writeln!(s, "  export KMS_CERT={}", p(&c.files.cert));
            let _ = writeln!(s, "  export KMS_KEY={}", p(&c.files.key));
        }
        let _ = writeln!(
            s,
            "\nDevelopment only: {} holds the CA's private key.",
            p(&self.ca.key)
        );
        s
    }
}

/// The file-name stem for a principal's client certificate:
/// `acs:ram::1000000000000000:user/operator` → `client-1000000000000000-user-operator`.
fn client_stem(principal: &Principal) -> String {
    let tail = principal
        .arn()
        .strip_prefix("acs:ram::")
        .unwrap_or(principal.arn());
    let safe: String = tail
        .chars()
        .map(|c| match c {
            ':' | '/' => '-',
            c if c.is_ascii_alphanumeric() || "._-@".contains(c) => c,
            _ => '_',
        })
        .collect();
    format!("client-{safe}")
}

fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    // Write beside, then rename: a replaced key is never readable with the wrong mode.
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// The principals `principals` names, parsed and without repeats; an empty list means
/// [`DEFAULT_PRINCIPALS`].
fn wanted_principals(principals: &[String]) -> anyhow::Result<Vec<Principal>> {
    let mut wanted: Vec<Principal> = Vec::new();
    let names: Vec<String> = if principals.is_empty() {
        DEFAULT_PRINCIPALS.iter().map(|s| s.to_string()).collect()
    } else {
        principals.to_vec()
    };
    for arn in &names {
        let p = Principal::parse(arn.trim()).map_err(|_| {
            anyhow::anyhow!(
                "--principal {arn:?} is not a principal ARN like acs:ram::<uid>:root, \
                 acs:ram::<uid>:user/<name> or acs:ram::<uid>:role/<name>"
            )
        })?;
        if !wanted.contains(&p) {
            wanted.push(p);
        }
    }
    Ok(wanted)
}

/// Where the files for `principals` go in the absolute directory `dir`.
fn dev_cert_paths(dir: &Path, principals: &[Principal]) -> DevCerts {
    let files = |stem: &str| CertFiles {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}-key.pem")),
    };
    DevCerts {
        dir: dir.to_path_buf(),
        ca: files("ca"),
        control: files("control"),
        data: files("data"),
        clients: principals
            .iter()
            .map(|p| ClientCert {
                principal: p.arn().to_string(),
                files: files(&client_stem(p)),
            })
            .collect(),
    }
}

/// The certificates an earlier [`generate_dev_certs`] left in `dir` for `principals` (empty:
/// [`DEFAULT_PRINCIPALS`]), or `None` when a new set is needed: a file is missing, a run was
/// cut short (a certificate older than the CA), or the set is about to expire.
pub(crate) fn existing_dev_certs(
    dir: &Path,
    principals: &[String],
) -> anyhow::Result<Option<DevCerts>> {
    let wanted = wanted_principals(principals)?;
    if !dir.is_dir() {
        return Ok(None);
    }
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let certs = dev_cert_paths(&dir, &wanted);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(ca_written) = modified(&certs.ca.cert) else {
        return Ok(None);
    };
    let complete = [&certs.ca, &certs.control, &certs.data]
        .into_iter()
        .chain(certs.clients.iter().map(|c| &c.files))
        .all(|f| f.key.is_file() && modified(&f.cert).is_some_and(|written| written >= ca_written));
    if !complete {
        return Ok(None);
    }
    // All certificates are valid for VALIDITY from when they were written; renew a day early.
    let age = ca_written.elapsed().unwrap_or_default();
    if age + Duration::from_secs(24 * 3600) >= VALIDITY {
        return Ok(None);
    }
    Ok(Some(certs))
}

/// Makes a CA, both planes' server certificates and a client certificate per principal in
/// `dir`; an empty `principals` means [`DEFAULT_PRINCIPALS`].
pub(crate) fn generate_dev_certs(dir: &Path, principals: &[String]) -> anyhow::Result<DevCerts> {
    generate_dev_certs_with(dir, principals, &[])
}

/// [`generate_dev_certs`], with `extra_sans` (DNS names or IP addresses) on the server
/// certificates beside `localhost` and 127.0.0.1.
pub(crate) fn generate_dev_certs_with(
    dir: &Path,
    principals: &[String],
    extra_sans: &[String],
) -> anyhow::Result<DevCerts> {
    let wanted = wanted_principals(principals)?;
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let made = dev_cert_paths(&dir, &wanted);
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    let (not_before, not_after) = (now - BACKDATE, now + VALIDITY);
    let save = |files: &CertFiles, cert_pem: &str, key: &KeyPair| -> anyhow::Result<()> {
        write_file(&files.key, &key.serialize_pem(), 0o600)?;
        write_file(&files.cert, cert_pem, 0o644)
    };

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kmsctl dev CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("cannot sign the CA certificate")?;
    save(&made.ca, &ca_cert.pem(), &ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |cn: &str, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose, out: &CertFiles| {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().context("cannot generate a key")?;
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("cannot sign the certificate for {cn}"))?;
        save(out, &cert.pem(), &key)
    };

    let server_sans = || -> anyhow::Result<Vec<SanType>> {
        let mut sans = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        ];
        for name in extra_sans {
            let refused =
                || anyhow::anyhow!("--san {name:?} is neither a DNS name nor an IP address");
            sans.push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) if is_dns_name(name) => {
                    SanType::DnsName(name.as_str().try_into().map_err(|_| refused())?)
                }
                Err(_) => return Err(refused()),
            });
        }
        Ok(sans)
    };
    leaf(
        "kms-control",
        server_sans()?,
        ExtendedKeyUsagePurpose::ServerAuth,
        &made.control,
    )?;
    leaf(
        "kms-data",
        server_sans()?,
        ExtendedKeyUsagePurpose::ServerAuth,
        &made.data,
    )?;
    for c in &made.clients {
        let uri = SanType::URI(
            c.principal
                .as_str()
                .try_into()
                .with_context(|| format!("{} cannot be a URI SAN", c.principal))?,
        );
        leaf(
            &c.principal,
            vec![uri],
            ExtendedKeyUsagePurpose::ClientAuth,
            &c.files,
        )?;
    }
    Ok(made)
}

/// Whether `name` is a host name: dot-separated labels of letters, digits and inner hyphens.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `kmsctl dev certs`. `principals_given` says whether `--principal` came from the command line
/// (the global `--principal`/`KMS_PRINCIPAL` shares its name and must not stand in for it).
pub(crate) fn certs(args: CertsArgs, principals_given: bool) -> anyhow::Result<ExitCode> {
    let principals = if principals_given {
        args.principals
    } else {
        Vec::new()
    };
    let made = generate_dev_certs_with(&args.dir, &principals, &args.sans)?;
    print!("{}", made.summary());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn default_set_with_private_keys_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let made = generate_dev_certs(&dir, &[]).unwrap();
        assert_eq!(mode(&made.dir), 0o700);
        let principals: Vec<&str> = made.clients.iter().map(|c| c.principal.as_str()).collect();
        assert_eq!(principals, DEFAULT_PRINCIPALS);
        let all = [&made.ca, &made.control, &made.data]
            .into_iter()
            .chain(made.clients.iter().map(|c| &c.files));
        for f in all {
            assert_eq!(mode(&f.key), 0o600, "{}", f.key.display());
            assert_eq!(mode(&f.cert) & 0o600, 0o600, "{}", f.cert.display());
            let key = std::fs::read_to_string(&f.key).unwrap();
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        }
        assert_eq!(
            made.client(OPERATOR_PRINCIPAL).unwrap().cert,
            made.dir.join("client-1000000000000000-user-operator.pem")
        );
        // Each client certificate names exactly its principal, as the servers read it.
        for c in &made.clients {
            let pem = std::fs::read(&c.files.cert).unwrap();
            let der = rustls_pem_der(&pem);
            let got = kms_runtime::tls::principal_from_cert(&der)
                .unwrap()
                .unwrap();
            assert_eq!(got.arn(), c.principal);
        }
        // Server certificates name no principal.
        let der = rustls_pem_der(&std::fs::read(&made.data.cert).unwrap());
        assert_eq!(kms_runtime::tls::principal_from_cert(&der), Ok(None));
        assert!(!contains(&der, b"kms-data.kms"));
        let summary = made.summary();
        assert!(summary.contains("export KMS_CERT="), "{summary}");
        assert!(summary.contains("client_ca_file"), "{summary}");
        assert!(!summary.contains("BEGIN"), "{summary}");

        // A second run replaces the files with a new CA, keeping modes.
        let first_ca = std::fs::read(&made.ca.cert).unwrap();
        let again = generate_dev_certs(&dir, &["acs:ram::42:user/alice".to_string()]).unwrap();
        assert_eq!(again.clients.len(), 1);
        assert_eq!(mode(&again.clients[0].files.key), 0o600);
        assert_eq!(mode(&again.ca.key), 0o600);
        assert_ne!(std::fs::read(&again.ca.cert).unwrap(), first_ca);
    }

    #[test]
    fn existing_sets_are_reused_only_when_whole_and_fresh() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        assert!(existing_dev_certs(&dir, &[]).unwrap().is_none());
        let made = generate_dev_certs(&dir, &[]).unwrap();
        let found = existing_dev_certs(&dir, &[]).unwrap().unwrap();
        assert_eq!(found.ca, made.ca);
        assert_eq!(found.clients, made.clients);
        // A principal without a certificate needs a new set.
        assert!(
            existing_dev_certs(&dir, &["acs:ram::42:user/alice".to_string()])
                .unwrap()
                .is_none()
        );
        let set_modified = |p: &Path, t: SystemTime| {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        };
        // A certificate older than the CA: a run was cut short after the new CA.
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        set_modified(&made.data.cert, hour_ago);
        assert!(existing_dev_certs(&dir, &[]).unwrap().is_none());
        // A set about to expire.
        let old = SystemTime::now() - (VALIDITY - Duration::from_secs(3600));
        for f in [&made.ca, &made.control, &made.data]
            .into_iter()
            .chain(made.clients.iter().map(|c| &c.files))
        {
            set_modified(&f.cert, old);
        }
        assert!(existing_dev_certs(&dir, &[]).unwrap().is_none());
        set_modified(&made.ca.cert, hour_ago);
        set_modified(&made.data.cert, hour_ago);
        set_modified(&made.control.cert, hour_ago);
        for c in &made.clients {
            set_modified(&c.files.cert, hour_ago);
        }
        assert!(existing_dev_certs(&dir, &[]).unwrap().is_some());
        std::fs::remove_file(&made.ca.key).unwrap();
        assert!(existing_dev_certs(&dir, &[]).unwrap().is_none());
    }

    #[test]
    fn bad_principals_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = generate_dev_certs(tmp.path(), &["alice".to_string()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"alice\"") && err.contains("acs:ram::"),
            "{err}"
        );
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
    }

    #[test]
    fn stems() {
        for (arn, stem) in [
            (
                "acs:ram::1234567890123456:root",
                "client-1234567890123456-root",
            ),
            (
                "acs:ram::1000000000000000:role/kms-data-plane",
                "client-1000000000000000-role-kms-data-plane",
            ),
            ("acs:ram::1:user/a/b@c", "client-1-user-a-b@c"),
        ] {
            assert_eq!(client_stem(&Principal::parse(arn).unwrap()), stem);
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn extra_names_on_the_server_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let sans = ["kms-data.kms".to_string(), "10.1.2.3".to_string()];
        let made = generate_dev_certs_with(tmp.path(), &[], &sans).unwrap();
        for server in [&made.control, &made.data] {
            let der = rustls_pem_der(&std::fs::read(&server.cert).unwrap());
            assert!(contains(&der, b"kms-data.kms"));
            assert!(contains(&der, &[10, 1, 2, 3]));
            assert!(contains(&der, b"localhost"));
        }
        let err = generate_dev_certs_with(tmp.path(), &[], &["not a name".to_string()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--san \"not a name\""), "{err}");
    }

    fn rustls_pem_der(pem: &[u8]) -> Vec<u8> {
        let text = std::str::from_utf8(pem).unwrap();
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }
}
