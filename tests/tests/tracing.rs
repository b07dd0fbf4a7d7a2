//! Traces cross both planes: a caller's W3C trace context continues into the data plane's
//! span for the call, from there into the control plane's span for the data plane's GetKey,
//! and the HSM call shows as a child span; the audit line carries the trace id. The spans are
//! received by an OTLP collector in the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kms_e2e::{ALICE, Options, Stack, eventually};
use kms_proto::kms::v1::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// A span as received, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attributes: Vec<(String, String)>,
}

#[derive(Debug, Default, Clone)]
struct Collector(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent: span.parent_span_id,
                    attributes: span
                        .attributes
                        .into_iter()
                        .map(|kv| {
                            let value = match kv.value.and_then(|v| v.value) {
                                Some(Value::StringValue(s)) => s,
                                Some(other) => format!("{other:?}"),
                                None => String::new(),
                            };
                            (kv.key, value)
                        })
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom(&mut buf);
    hex::encode(buf)
}

fn getrandom(buf: &mut [u8]) {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new().fill(buf).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_runs_through_both_planes_and_the_hsm() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let telemetry = format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\ninstance = \"test-0\"\n");
    let stack = Stack::start_with(Options {
        control_tables: telemetry.clone(),
        data_tables: telemetry,
        ..Default::default()
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
    // The caller's own span: a trace id and span id of its choosing, sampled.
    let trace_id = random_hex(16);
    let caller_span = random_hex(8);
    let mut request = tonic::Request::new(EncryptRequest {
        key_id: key,
        plaintext: b"traced".to_vec(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    stack
        .crypto(Some(ALICE))
        .unwrap()
        .encrypt(request)
        .await
        .unwrap();

    let want_trace = hex::decode(&trace_id).unwrap();
    let want_parent = hex::decode(&caller_span).unwrap();
    let spans = eventually(Duration::from_secs(30), "the trace's spans", || {
        let spans: Vec<Received> = collector
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == want_trace)
            .cloned()
            .collect();
        let complete = spans.iter().any(|s| s.service == "kms-control")
            && spans.iter().any(|s| s.name == "hsm");
        async move { complete.then_some(spans) }
    })
    .await
    .unwrap();

    let encrypt = spans
        .iter()
        .find(|s| s.service == "kms-data" && s.name == "kms.v1.CryptoService/Encrypt")
        .unwrap_or_else(|| panic!("no Encrypt span in {spans:#?}"));
    assert_eq!(
        encrypt.parent, want_parent,
        "the data plane's span continues the caller's"
    );
    let ids_of = |service: &str| -> Vec<Vec<u8>> {
        spans
            .iter()
            .filter(|s| s.service == service)
            .map(|s| s.span_id.clone())
            .collect()
    };
    let data_ids = ids_of("kms-data");
    let get_key = spans
        .iter()
        .find(|s| s.service == "kms-control" && s.name == "kms.internal.v1.KeyDirectory/GetKey")
        .unwrap_or_else(|| panic!("no GetKey span in {spans:#?}"));
    assert!(
        data_ids.contains(&get_key.parent),
        "the control plane's GetKey is a child of a data-plane span: {spans:#?}"
    );
    let hsm = spans.iter().find(|s| s.name == "hsm").unwrap();
    assert_eq!(hsm.service, "kms-data");
    assert!(data_ids.contains(&hsm.parent), "{spans:#?}");
    let attr = |name: &str| {
        hsm.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert!(
        attr("operation").is_some_and(|op| !op.is_empty()),
        "{hsm:?}"
    );
    // Mechanism and timing only: no attribute carries bytes.
    assert!(hsm.attributes.iter().all(|(_, v)| v.len() < 64), "{hsm:?}");

    // The data plane's audit line for the call names the trace.
    let audit = std::fs::read_to_string(stack.dir().join("logs/data-audit.log")).unwrap();
    let line = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["action"] == "kms.v1.CryptoService/Encrypt")
        .expect("an Encrypt line");
    assert_eq!(line["trace_id"], trace_id.as_str());
    server.abort();
}
