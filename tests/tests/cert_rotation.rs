//! TLS certificates rotated under traffic: an mTLS stack serves calls on connections made
//! before the rotation and on a new connection every round while its CA bundle, both planes'
//! server certificates and keys and their client certificates are replaced on disk by a set a
//! new CA issued. Not one call fails; new connections see the new certificates; connections
//! made before keep their session; a certificate whose key has not arrived yet is refused and
//! the old one stays in force.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kms_e2e::{
    ACCOUNT, ALICE, CONTROL_PRINCIPAL, DATA_PRINCIPAL, Options, Stack, cert_stem, eventually,
};
use kms_proto::kms::v1::crypto_service_client::CryptoServiceClient;
use kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use kms_proto::kms::v1::{CreateKeyRequest, DescribeKeyRequest, EncryptRequest, KeySpec};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long a reload may take to show: the planes read their files every second.
const RELOAD_WITHIN: Duration = Duration::from_secs(20);

/// A CA of the test's own, as an operator's new CA would be.
struct NewCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM; the certificate as DER too.
struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl NewCa {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, "rotation test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A server certificate for the planes' addresses.
    fn server(&self) -> Leaf {
        self.leaf(
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate naming `principal`.
    fn client(&self, principal: &str) -> Leaf {
        self.leaf(
            vec![SanType::URI(principal.try_into().unwrap())],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// Replaces `path` whole, as an operator or a Secret volume does: written beside (a key
/// readable by its owner only), then renamed over.
fn replace(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let aside = path.with_extension("next");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&aside)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// An endpoint to `addr` trusting `ca_pem` and presenting `cert`/`key`.
fn endpoint(addr: &str, ca_pem: &str, cert: &str, key: &str) -> Endpoint {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(cert, key));
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
}

/// The server certificate a new TLS connection to `addr` is shown (trusting `ca_pem`,
/// presenting `cert`/`key`).
async fn presented(addr: &str, ca_pem: &str, cert: &str, key: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One call to each plane on `control`/`data`.
async fn round(control: Channel, data: Channel, key_id: &str) -> Result<(), tonic::Status> {
    KeyManagementServiceClient::new(control)
        .describe_key(DescribeKeyRequest {
            key_id: key_id.into(),
        })
        .await?;
    CryptoServiceClient::new(data)
        .encrypt(EncryptRequest {
            key_id: key_id.into(),
            plaintext: b"rotate me".to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Calls made by the traffic task, by kind, and what failed.
#[derive(Default)]
struct Traffic {
    established: AtomicUsize,
    fresh: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_traffic_without_a_failed_call() {
    let mut stack = Stack::start_with(Options {
        mtls: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let certs = stack.certs_dir();
    let read = |name: &str| std::fs::read_to_string(certs.join(name)).unwrap();
    let old_ca = read("ca.pem");
    let alice_stem = cert_stem(ALICE);
    let (alice_cert, alice_key) = (
        read(&format!("{alice_stem}.pem")),
        read(&format!("{alice_stem}-key.pem")),
    );
    let old_control_der = CertificateDer::from_pem_slice(read("control.pem").as_bytes())
        .unwrap()
        .to_vec();
    let new_ca = NewCa::new();
    // The test's clients trust both CAs, as every client must before servers change CA.
    let both_cas = format!("{old_ca}{}", new_ca.pem);
    let (control_addr, data_addr) = (
        stack.control_addr().to_string(),
        stack.data_addr().to_string(),
    );
    let control_ep = endpoint(&control_addr, &both_cas, &alice_cert, &alice_key);
    let data_ep = endpoint(&data_addr, &both_cas, &alice_cert, &alice_key);

    let key_id = KeyManagementServiceClient::new(control_ep.connect().await.unwrap())
        .create_key(CreateKeyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;

    // Traffic: connections made now, kept throughout, and a new connection every round.
    let traffic = Arc::new(Traffic::default());
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (traffic, stop, key_id) = (Arc::clone(&traffic), Arc::clone(&stop), key_id.clone());
        let (control_ep, data_ep) = (control_ep.clone(), data_ep.clone());
        let established = (
            control_ep.connect().await.unwrap(),
            data_ep.connect().await.unwrap(),
        );
        tokio::spawn(async move {
            // Bounded: the test stops it long before.
            for _ in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match round(established.0.clone(), established.1.clone(), &key_id).await {
                    Ok(()) => traffic.established.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        traffic
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("established: {e}"));
                        0
                    }
                };
                let fresh = async {
                    let control = control_ep.connect().await.map_err(|e| format!("{e:?}"))?;
                    let data = data_ep.connect().await.map_err(|e| format!("{e:?}"))?;
                    round(control, data, &key_id)
                        .await
                        .map_err(|e| e.to_string())
                };
                match fresh.await {
                    Ok(()) => traffic.fresh.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        traffic
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("new connection: {e}"));
                        0
                    }
                };
            }
            established
        })
    };
    let rounds_past = |n: usize| {
        let traffic = Arc::clone(&traffic);
        let target = (
            traffic.established.load(Ordering::SeqCst) + n,
            traffic.fresh.load(Ordering::SeqCst) + n,
        );
        async move {
            eventually(Duration::from_secs(60), "traffic rounds", || {
                let traffic = Arc::clone(&traffic);
                async move {
                    (traffic.established.load(Ordering::SeqCst) >= target.0
                        && traffic.fresh.load(Ordering::SeqCst) >= target.1)
                        .then_some(())
                }
            })
            .await
            .unwrap();
        }
    };
    rounds_past(5).await;

    // A client certificate of the new CA is refused while the planes trust only the old one.
    let alice_new = new_ca.client(ALICE);
    let new_alice = |addr: &str| endpoint(addr, &both_cas, &alice_new.cert, &alice_new.key);
    let data_for_new_alice = || {
        let ep = new_alice(&data_addr);
        let key_id = key_id.clone();
        async move {
            let channel = ep.connect().await.map_err(|e| format!("{e:?}"))?;
            CryptoServiceClient::new(channel)
                .encrypt(EncryptRequest {
                    key_id,
                    plaintext: b"x".to_vec(),
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    assert!(data_for_new_alice().await.is_err());

    // 1. The CA bundle gains the new CA: client certificates of either CA are taken, and each
    //    plane trusts the other's next server certificate.
    replace(&certs.join("ca.pem"), &both_cas);
    eventually(RELOAD_WITHIN, "the new CA taken", || {
        let call = data_for_new_alice();
        async move { call.await.ok() }
    })
    .await
    .unwrap();

    // 2. The control plane's new certificate arrives before its key: refused, the old one
    //    stays in force.
    let control_new = new_ca.server();
    replace(&certs.join("control.pem"), &control_new.cert);
    eventually(RELOAD_WITHIN, "the mismatched key refused", || {
        let refused = stack
            .log("kms-control")
            .contains("TLS files changed but cannot be used");
        async move { refused.then_some(()) }
    })
    .await
    .unwrap();
    assert_eq!(
        presented(&control_addr, &both_cas, &alice_cert, &alice_key).await,
        old_control_der
    );
    rounds_past(2).await;

    // 3. The key follows, and the data plane's certificate and key, and both planes' client
    //    certificates for calls to each other.
    replace(&certs.join("control-key.pem"), &control_new.key);
    let data_new = new_ca.server();
    replace(&certs.join("data.pem"), &data_new.cert);
    replace(&certs.join("data-key.pem"), &data_new.key);
    for principal in [CONTROL_PRINCIPAL, DATA_PRINCIPAL] {
        let stem = cert_stem(principal);
        let client = new_ca.client(principal);
        replace(&certs.join(format!("{stem}.pem")), &client.cert);
        replace(&certs.join(format!("{stem}-key.pem")), &client.key);
    }
    for (addr, want) in [
        (&control_addr, &control_new.der),
        (&data_addr, &data_new.der),
    ] {
        eventually(RELOAD_WITHIN, "the new server certificate shown", || {
            let (addr, cas, cert, key) = (
                addr.clone(),
                both_cas.clone(),
                alice_cert.clone(),
                alice_key.clone(),
            );
            async move { (presented(&addr, &cas, &cert, &key).await == *want).then_some(()) }
        })
        .await
        .unwrap();
    }
    rounds_past(5).await;

    stop.store(true, Ordering::SeqCst);
    let established = task.await.unwrap();
    let failures = traffic.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "calls failed during the rotation: {failures:?}"
    );
    assert!(traffic.established.load(Ordering::SeqCst) >= 12);
    assert!(traffic.fresh.load(Ordering::SeqCst) >= 12);

    // The planes call each other with their new client certificates: a new key is made
    // (KeyMaterial) and used (KeyDirectory).
    let instance = stack.software_instance(ACCOUNT, None).await.unwrap();
    let control = control_ep.connect().await.unwrap();
    let fresh_key = KeyManagementServiceClient::new(control.clone())
        .create_key(CreateKeyRequest {
            kms_instance_id: instance,
            key_spec: KeySpec::AliyunAes256 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    round(control, data_ep.connect().await.unwrap(), &fresh_key)
        .await
        .unwrap();
    for plane in ["kms-control", "kms-data"] {
        let log = stack.log(plane);
        assert!(
            log.contains("new client certificate in force"),
            "{plane} did not move its calls to the other plane to the new certificate:\n{log}"
        );
    }

    // 4. The old CA leaves the bundle: new connections need the new CA's certificates, while
    //    connections made before the rotation keep their session.
    replace(&certs.join("ca.pem"), &new_ca.pem);
    let old_alice_data = endpoint(&data_addr, &both_cas, &alice_cert, &alice_key);
    eventually(RELOAD_WITHIN, "the old CA dropped", || {
        let ep = old_alice_data.clone();
        let key_id = key_id.clone();
        async move {
            let channel = ep.connect().await.ok()?;
            CryptoServiceClient::new(channel)
                .encrypt(EncryptRequest {
                    key_id,
                    plaintext: b"x".to_vec(),
                    ..Default::default()
                })
                .await
                .err()
                .map(|_| ())
        }
    })
    .await
    .unwrap();
    data_for_new_alice().await.unwrap();
    round(established.0, established.1, &key_id).await.unwrap();

    stack.stop().await.unwrap();
}
