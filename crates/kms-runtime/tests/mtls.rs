//! The edge layer behind real TLS on loopback: a tonic server with `tls::server_config` and
//! `AuthLayer`, a trivial service named `kms.v1.CryptoService`, and clients presenting good,
//! expired, foreign, principal-less and no certificates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use kms_runtime::audit::{AuditChain, AuditConfig, AuditKey, AuditLog, Plane, note_key, verify};
use kms_runtime::auth::AuthLayer;
use kms_runtime::identity::{Identifier, IdentityConfig};
use kms_runtime::limits::{LimitsConfig, ManualClock, RateConfig, RateLimiter};
use kms_runtime::status::reason_of;
use kms_runtime::tls::{TlsConfig, client_config, server_config};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::body::Body;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_prost::ProstCodec;

const ALICE: &str = "acs:ram::1234567890123456:user/alice";
const PRINCIPAL_HEADER: &str = "x-test-principal";

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// A one-method gRPC service under the data plane's name: answers with the caller's principal
/// in a response header and notes the requested key for the audit line.
#[derive(Clone, Default)]
struct Echo {
    calls: Arc<Mutex<Vec<String>>>,
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "kms.v1.CryptoService";
}

impl tower::Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let calls = Arc::clone(&self.calls);
        Box::pin(async move {
            let handler = tower::service_fn(move |req: Request<HealthCheckRequest>| {
                let calls = Arc::clone(&calls);
                async move {
                    let principal = kms_runtime::caller(&req).map_err(kms_runtime::to_status)?;
                    note_key(&req, &req.get_ref().service, "v-1");
                    calls.lock().unwrap().push(principal.arn().to_string());
                    let mut resp = Response::new(HealthCheckResponse { status: 1 });
                    resp.metadata_mut()
                        .insert(PRINCIPAL_HEADER, principal.arn().parse().unwrap());
                    Ok::<_, Status>(resp)
                }
            });
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<
                HealthCheckResponse,
                HealthCheckRequest,
            >::default());
            Ok(grpc.unary(handler, req).await)
        })
    }
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

struct Leaf {
    cert: PathBuf,
    key: PathBuf,
}

fn leaf(dir: &Path, name: &str, ca: &Ca, sans: Vec<SanType>, server: bool, expired: bool) -> Leaf {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let out = Leaf {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&out.cert, cert.pem()).unwrap();
    std::fs::write(&out.key, key.serialize_pem()).unwrap();
    out
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

struct Stack {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ca: Ca,
    ca_file: PathBuf,
    port: u16,
    audit: PathBuf,
    echo: Echo,
    clock: Arc<ManualClock>,
}

async fn start(burst: u32) -> Stack {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ca = ca("test ca");
    let ca_file = dir.join("ca.pem");
    // The trusted bundle holds another CA as well, first.
    let bundle = format!("{}{}", self::ca("unrelated ca").pem, ca.pem);
    std::fs::write(&ca_file, bundle).unwrap();
    let server = leaf(
        &dir,
        "server",
        &ca,
        vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ],
        true,
        false,
    );
    let tls = TlsConfig {
        cert_file: server.cert,
        key_file: server.key,
        client_ca_file: ca_file.clone(),
        require_client_cert: true,
        client_cert_file: None,
        client_key_file: None,
        server_ca_file: None,
    };
    let identity = IdentityConfig {
        dev_header: false,
        service_principal: "acs:ram::1000000000000000:role/kms-data-plane".into(),
        peer_principal: "acs:ram::1000000000000000:role/kms-control-plane".into(),
        tls: Some(tls.clone()),
        trusted_sidecar: None,
    };
    let limits = LimitsConfig {
        symmetric: RateConfig {
            per_second: 1,
            burst: Some(burst),
        },
        ..LimitsConfig::default()
    };
    let audit = dir.join("audit.log");
    let clock = Arc::new(ManualClock::new());
    let layer = AuthLayer::new(
        Identifier::new(&identity).unwrap(),
        AuditLog::open(
            &AuditConfig::new(&audit),
            AuditChain {
                plane: Plane::Data,
                key: AuditKey::from_bytes(&[5u8; 32]).unwrap(),
            },
        )
        .unwrap(),
        RateLimiter::with_clock(&limits, clock.clone()),
        limits.default_deadline(),
    );
    let echo = Echo::default();
    let (_reporter, health) = kms_runtime::serve::health(&[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = Server::builder()
        .tls_config(server_config(&tls).unwrap())
        .unwrap()
        .layer(layer)
        .add_service(health)
        .add_service(echo.clone());
    tokio::spawn(
        router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Stack {
        _dir: tmp,
        dir,
        ca,
        ca_file,
        port,
        audit,
        echo,
        clock,
    }
}

impl Stack {
    fn client(&self, leaf: &Leaf) -> ClientTlsConfig {
        client_config(&self.ca_file, &leaf.cert, &leaf.key).unwrap()
    }

    /// Calls `Encrypt` over a fresh connection; the principal the handler saw, or the status.
    async fn encrypt(&self, tls: ClientTlsConfig, key_id: &str) -> Result<String, Status> {
        let channel = self.connect(tls).await?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let resp = grpc
            .unary(
                Request::new(HealthCheckRequest {
                    service: key_id.into(),
                }),
                PathAndQuery::from_static("/kms.v1.CryptoService/Encrypt"),
                ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default(),
            )
            .await?;
        Ok(resp
            .metadata()
            .get(PRINCIPAL_HEADER)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string())
    }

    async fn connect(&self, tls: ClientTlsConfig) -> Result<Channel, Status> {
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.port))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("{e:?}")))
    }

    fn calls(&self) -> usize {
        self.echo.calls.lock().unwrap().len()
    }

    fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn mtls_identity_audit_and_limits() {
    let stack = start(3).await;
    let ca = ca("test ca");
    let trusted = &stack.ca;
    let dir = &stack.dir;
    let alice = leaf(dir, "alice", trusted, vec![uri(ALICE)], false, false);
    let expired = leaf(dir, "expired", trusted, vec![uri(ALICE)], false, true);
    let foreign = leaf(dir, "foreign", &ca, vec![uri(ALICE)], false, false);
    let anonymous = leaf(
        dir,
        "anonymous",
        trusted,
        vec![SanType::DnsName("client.local".try_into().unwrap())],
        false,
        false,
    );

    // A certificate with a principal SAN: accepted, and the principal reaches the handler.
    assert_eq!(
        stack.encrypt(stack.client(&alice), "key-a").await.unwrap(),
        ALICE
    );
    assert_eq!(stack.calls(), 1);

    // Refused at the handshake: expired, signed by another CA, or no certificate at all.
    let no_cert = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
        std::fs::read(&stack.ca_file).unwrap(),
    ));
    // (The foreign CA has the trusted one's name, so rustls finds a would-be issuer and fails
    // on its signature.)
    for (name, tls, alerts) in [
        (
            "expired",
            stack.client(&expired),
            &["CertificateExpired"][..],
        ),
        (
            "foreign",
            stack.client(&foreign),
            &["DecryptError", "UnknownCA", "BadCertificate"][..],
        ),
        ("no certificate", no_cert, &["CertificateRequired"][..]),
    ] {
        let err = stack.encrypt(tls, "key-x").await.unwrap_err();
        let detail = format!("{err:?}");
        assert!(
            alerts.iter().any(|a| detail.contains(a)),
            "{name}: {detail}"
        );
        assert_eq!(stack.calls(), 1, "{name} reached the handler");
    }

    // A trusted certificate naming no principal: the layer answers UNAUTHENTICATED.
    let err = stack
        .encrypt(stack.client(&anonymous), "key-x")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(reason_of(&err).as_deref(), Some("Forbidden.NoIdentity"));
    // ... but health checks need no principal and are not audited.
    let channel = stack.connect(stack.client(&anonymous)).await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1);

    // Burst of 3 symmetric calls per principal: two more pass, the next is throttled.
    for _ in 0..2 {
        stack.encrypt(stack.client(&alice), "key-b").await.unwrap();
    }
    let err = stack
        .encrypt(stack.client(&alice), "key-c")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(reason_of(&err).as_deref(), Some("Rejected.Throttling"));
    assert_eq!(stack.calls(), 3);
    stack.clock.advance(Duration::from_secs(1));
    stack.encrypt(stack.client(&alice), "key-d").await.unwrap();

    // One audit line per call that reached the layer, with its outcome.
    let lines = stack.audit_lines();
    let got: Vec<(&str, &str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["principal"].as_str().unwrap(),
                l["outcome"].as_str().unwrap(),
                l["status_code"].as_str().unwrap(),
                l["key_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (ALICE, "allowed", "OK", "key-a"),
            ("", "denied", "UNAUTHENTICATED", ""),
            (ALICE, "allowed", "OK", "key-b"),
            (ALICE, "allowed", "OK", "key-b"),
            (ALICE, "denied", "RESOURCE_EXHAUSTED", ""),
            (ALICE, "allowed", "OK", "key-d"),
        ]
    );
    for l in &lines {
        assert_eq!(l["action"], "kms.v1.CryptoService/Encrypt");
    }
    assert_eq!(verify(&stack.audit), Ok(6));
}

#[tokio::test]
async fn plane_to_plane_client_config() {
    // `TlsConfig::peer_client_config` presents the plane's own client certificate.
    let stack = start(100).await;
    let me = leaf(
        &stack.dir,
        "control-client",
        &stack.ca,
        vec![uri("acs:ram::1000000000000000:role/kms-control-plane")],
        false,
        false,
    );
    let cfg = TlsConfig {
        cert_file: stack.dir.join("server.pem"),
        key_file: stack.dir.join("server-key.pem"),
        client_ca_file: stack.ca_file.clone(),
        require_client_cert: true,
        client_cert_file: Some(me.cert),
        client_key_file: Some(me.key),
        server_ca_file: None,
    };
    let principal = stack
        .encrypt(cfg.peer_client_config().unwrap(), "k")
        .await
        .unwrap();
    assert_eq!(
        principal,
        "acs:ram::1000000000000000:role/kms-control-plane"
    );
}
