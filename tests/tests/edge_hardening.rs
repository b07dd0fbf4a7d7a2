//! The edge before and around authentication, through the real binaries: a flood of idle
//! connections is capped and timed out while service continues; a TLS connection that never
//! says hello is dropped after the handshake timeout; a sidecar header naming the other plane
//! does not reach the internal services; a caller's huge `grpc-timeout` is cut to the server's
//! longest deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use kms_e2e::{ALICE, CONTROL_PRINCIPAL, DATA_PRINCIPAL, Options, Stack, reason};
use kms_proto::kms::internal::v1::key_directory_client::KeyDirectoryClient;
use kms_proto::kms::internal::v1::key_material_client::KeyMaterialClient;
use kms_proto::kms::internal::v1::{GenerateKeyMaterialRequest, GetKeyRequest};
use kms_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use kms_proto::kms::v1::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::Code;
use tonic::metadata::MetadataValue;

/// Idle connections opened in the flood.
const FLOOD: usize = 5000;
/// The control plane's connection cap in the flood test, below the flood.
const MAX_CONNECTIONS: usize = 1000;
/// The idle timeout in the flood test: long enough that opening the whole flood takes well
/// under it on a loaded two-core machine, so a connection closed before it was evicted.
const IDLE_TIMEOUT: Duration = Duration::from_millis(8000);

/// Lets this process hold the flood: raises the soft open-file limit towards the hard one.
fn raise_open_file_limit(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).unwrap();
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        soft >= want,
        "the open-file limit ({soft}) cannot hold {want} files; raise the hard limit"
    );
}

/// Reads `stream` until the server closes it (end of stream or reset); how long that took
/// from `opened`, or `None` if it stayed open past `limit`.
async fn closed_after(mut stream: TcpStream, opened: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 256];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_to_end).await.ok()
}

async fn describe(stack: &Stack, key_id: &str) -> Result<(), tonic::Status> {
    stack
        .keys(Some(ALICE))
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .describe_key(DescribeKeyRequest {
            key_id: key_id.into(),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_flood_is_capped_and_timed_out() {
    raise_open_file_limit(FLOOD as u64 + 1024);
    let mut stack = Stack::start_with(Options {
        limits: format!(
            "max_connections = {MAX_CONNECTIONS}\nidle_timeout_ms = {}\n",
            IDLE_TIMEOUT.as_millis()
        ),
        ..Options::default()
    })
    .await
    .unwrap();
    let key = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;

    // Open the flood: connections that never send a byte.
    let mut readers = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let stream = TcpStream::connect(stack.control_addr()).await.unwrap();
        let opened = Instant::now();
        readers.push(tokio::spawn(closed_after(
            stream,
            opened,
            IDLE_TIMEOUT + Duration::from_secs(15),
        )));
    }

    // Service continues: new connections get in (evicting idle ones), calls succeed.
    describe(&stack, &key).await.unwrap();
    stack
        .keys(Some(ALICE))
        .unwrap()
        .list_keys(ListKeysRequest::default())
        .await
        .unwrap();
    let sealed = stack
        .crypto(Some(ALICE))
        .unwrap()
        .encrypt(EncryptRequest {
            key_id: key.clone(),
            plaintext: b"still serving".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!sealed.ciphertext_blob.is_empty());

    // Every flood connection is closed by the server: most evicted by the cap as the flood
    // went on, the last ones when their idle time ran out.
    let mut evicted = 0;
    let mut timed_out = 0;
    for reader in readers {
        let took = reader
            .await
            .unwrap()
            .expect("an idle connection stayed open past its idle timeout");
        if took < IDLE_TIMEOUT {
            evicted += 1;
        } else {
            timed_out += 1;
        }
    }
    assert!(
        evicted >= FLOOD - MAX_CONNECTIONS,
        "only {evicted} connections closed before the idle timeout; the cap is {MAX_CONNECTIONS}"
    );
    assert!(timed_out >= 1, "no connection was closed for idleness");

    // And after the flood, the plane still serves.
    describe(&stack, &key).await.unwrap();
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_clients_forged_internal_calls_and_endless_deadlines() {
    let mut stack = Stack::start_with(Options {
        mtls: true,
        // The test's own address: its sidecar header is believed.
        sidecar_peers: vec!["127.0.0.1".into()],
        limits:
            "tls_handshake_timeout_ms = 1000\ndefault_deadline_ms = 1500\nmax_deadline_ms = 1500\n"
                .into(),
        ..Options::default()
    })
    .await
    .unwrap();

    // A TLS client that never sends its ClientHello is dropped after the handshake timeout,
    // on both planes.
    for addr in [stack.control_addr(), stack.data_addr()] {
        let stream = TcpStream::connect(addr).await.unwrap();
        let opened = Instant::now();
        let took = closed_after(stream, opened, Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("{addr}: a silent TLS client is still connected"));
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(10),
            "{addr}: closed after {took:?}"
        );
    }

    // The planes still reach each other on their certificates: a key is made (KeyMaterial)
    // and used (KeyDirectory).
    let key = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    stack
        .crypto(Some(ALICE))
        .unwrap()
        .encrypt(EncryptRequest {
            key_id: key.clone(),
            plaintext: b"hello".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();

    // A trusted sidecar's header is believed on public services...
    let sidecar_as = |principal: &'static str| {
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert(
                "x-forwarded-principal",
                MetadataValue::from_static(principal),
            );
            Ok(req)
        }
    };
    let control = stack.channel(stack.control_addr(), None).unwrap();
    let data = stack.channel(stack.data_addr(), None).unwrap();
    KeyManagementServiceClient::with_interceptor(control.clone(), sidecar_as(ALICE))
        .describe_key(DescribeKeyRequest {
            key_id: key.clone(),
        })
        .await
        .unwrap();
    // A malformed one is refused saying what is wrong and what is expected.
    let err = KeyManagementServiceClient::with_interceptor(control.clone(), sidecar_as("root"))
        .describe_key(DescribeKeyRequest {
            key_id: key.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "Forbidden.NoIdentity")
    );
    assert!(
        err.message().contains(
            "the x-forwarded-principal header is not a principal ARN: \"root\": it does not \
             start with `acs:ram::`; expected acs:ram::<16-digit account>:root|user/<name>|\
             role/<name>, e.g. acs:ram::1234567890123456:root"
        ),
        "{}",
        err.message()
    );
    // ... but naming the other plane, it does not reach the internal services.
    let err = KeyDirectoryClient::with_interceptor(control, sidecar_as(DATA_PRINCIPAL))
        .get_key(GetKeyRequest {
            key_id: key.clone(),
            principal: ALICE.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "Forbidden.NoPermission"),
        "KeyDirectory: {err:?}"
    );
    let err = KeyMaterialClient::with_interceptor(data, sidecar_as(CONTROL_PRINCIPAL))
        .generate(GenerateKeyMaterialRequest {
            key_id: key.clone(),
            key_version_id: "forged-version".into(),
            key_spec: KeySpec::AliyunAes256 as i32,
            protection_level: ProtectionLevel::Software as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "Forbidden.NoPermission"),
        "KeyMaterial: {err:?}"
    );

    // A caller's deadline of three years, on a call whose request never arrives whole, ends
    // at the server's longest deadline.
    let channel = stack.channel(stack.data_addr(), Some(ALICE)).unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::pending::<EncryptRequest>());
    request
        .metadata_mut()
        .insert("grpc-timeout", MetadataValue::from_static("99999999S"));
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(15),
        grpc.client_streaming(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static("/kms.v1.CryptoService/Encrypt"),
            tonic_prost::ProstCodec::<EncryptRequest, EncryptResponse>::default(),
        ),
    )
    .await
    .expect("the call outlived the server's longest deadline");
    let took = started.elapsed();
    let err = answer.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::DeadlineExceeded, "Rejected.DeadlineExceeded"),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(10),
        "{took:?}"
    );
    stack.stop().await.unwrap();
}

/// A request message over `limits.max_request_bytes` (64 KiB here) is refused on either plane
/// with `RESOURCE_EXHAUSTED` `Rejected.RequestTooLarge`, naming the limit and the way to
/// encrypt large data, not tonic's bare `OUT_OF_RANGE`. One that fits but carries more than
/// Encrypt's 6 KiB of plaintext is `InvalidParameter.Plaintext`, as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_name_the_limit_and_the_way_out() {
    let stack = Stack::start().await.unwrap();
    let key_id = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    let encrypt = |len: usize| {
        let (stack, key_id) = (&stack, &key_id);
        async move {
            stack
                .crypto(Some(ALICE))
                .unwrap()
                .encrypt(EncryptRequest {
                    key_id: key_id.clone(),
                    plaintext: vec![b'x'; len],
                    ..Default::default()
                })
                .await
                .unwrap_err()
        }
    };
    let too_large = encrypt(1024 * 1024).await;
    assert_eq!(
        (too_large.code(), reason(&too_large).as_str()),
        (Code::ResourceExhausted, "Rejected.RequestTooLarge"),
        "{too_large:?}"
    );
    for want in [
        "65536 bytes",
        "max_request_bytes",
        "GenerateDataKey",
        "envelope",
    ] {
        assert!(
            too_large.message().contains(want),
            "{want:?} missing in {}",
            too_large.message()
        );
    }
    // The control plane answers the same.
    let description = stack
        .keys(Some(ALICE))
        .unwrap()
        .update_key_description(UpdateKeyDescriptionRequest {
            key_id: key_id.clone(),
            description: "d".repeat(100_000),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (description.code(), reason(&description).as_str()),
        (Code::ResourceExhausted, "Rejected.RequestTooLarge"),
        "{description:?}"
    );
    // Within the message limit, Encrypt's own limit answers.
    for len in [6 * 1024 + 1, 60 * 1024] {
        let err = encrypt(len).await;
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::InvalidArgument, "InvalidParameter.Plaintext"),
            "{len}: {err:?}"
        );
        assert!(
            err.message().contains("6144") && err.message().contains("GenerateDataKey"),
            "{}",
            err.message()
        );
    }
    // And the service goes on.
    describe(&stack, &key_id).await.unwrap();
}
