//! Server reflection through the real binaries: both `grpc.reflection.v1` and `v1alpha`
//! answer on both planes, and each plane lists exactly the services it serves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_e2e::Stack;

/// The services listed by the reflection service in module `$pb` (`v1` or `v1alpha`, whose
/// messages are the same) on `$channel`.
macro_rules! list_services {
    ($pb:ident, $channel:expr) => {{
        use tonic_reflection::pb::$pb::ServerReflectionRequest;
        use tonic_reflection::pb::$pb::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$pb::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$pb::server_reflection_response::MessageResponse;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        match answers.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("not a service list: {other:?}"),
        }
    }};
}

/// The services a plane lists through reflection `version` (`v1` or `v1alpha`).
async fn listed(stack: &Stack, addr: &str, version: &str) -> Vec<String> {
    let channel = stack.channel(addr, None).unwrap();
    let mut names = match version {
        "v1" => list_services!(v1, channel),
        _ => list_services!(v1alpha, channel),
    };
    names.sort();
    names
}

#[tokio::test]
async fn each_plane_lists_what_it_serves_in_both_reflection_versions() {
    let stack = Stack::start().await.unwrap();
    let common = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let served = |own: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = own
            .iter()
            .chain(common.iter())
            .map(|s| s.to_string())
            .collect();
        all.sort();
        all
    };
    let control = served(&[
        "kms.v1.KeyManagementService",
        "kms.v1.KmsInstanceService",
        "kms.v1.AuditService",
        "kms.v1.AdminService",
        "kms.v1.AccessKeyService",
        "kms.internal.v1.KeyDirectory",
    ]);
    let data = served(&[
        "kms.v1.CryptoService",
        "kms.v1.AccessKeyResolver",
        "kms.internal.v1.KeyMaterial",
    ]);
    for version in ["v1", "v1alpha"] {
        assert_eq!(
            listed(&stack, stack.control_addr(), version).await,
            control,
            "control plane, {version}"
        );
        assert_eq!(
            listed(&stack, stack.data_addr(), version).await,
            data,
            "data plane, {version}"
        );
    }
}
