//! Checks that the embedded descriptor set carries every service and RPC of the API contract.

use std::collections::BTreeSet;

use prost::Message as _;
use prost_types::{FileDescriptorSet, ServiceDescriptorProto};

const KEY_MANAGEMENT_RPCS: [&str; 27] = [
    "CreateKey",
    "DescribeKey",
    "ListKeys",
    "EnableKey",
    "DisableKey",
    "UpdateKeyDescription",
    "SetDeletionProtection",
    "ScheduleKeyDeletion",
    "CancelKeyDeletion",
    "UpdateRotationPolicy",
    "CreateKeyVersion",
    "DescribeKeyVersion",
    "ListKeyVersions",
    "CreateAlias",
    "UpdateAlias",
    "DeleteAlias",
    "ListAliases",
    "ListAliasesByKeyId",
    "TagResources",
    "UntagResources",
    "ListResourceTags",
    "SetKeyPolicy",
    "GetKeyPolicy",
    "GetParametersForImport",
    "ImportKeyMaterial",
    "DeleteKeyMaterial",
    "CheckKeyAssociation",
];

const CRYPTO_RPCS: [&str; 14] = [
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateAndExportDataKey",
    "ExportDataKey",
    "AsymmetricEncrypt",
    "AsymmetricDecrypt",
    "AsymmetricSign",
    "AsymmetricVerify",
    "GetPublicKey",
    "GenerateRandom",
    "GetRandomPassword",
];

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(kms_proto::FILE_DESCRIPTOR_SET)
        .unwrap_or_else(|e| panic!("FILE_DESCRIPTOR_SET does not decode: {e}"))
}

/// Finds a service by its fully qualified name (`package.Service`).
fn service(fds: &FileDescriptorSet, full_name: &str) -> ServiceDescriptorProto {
    fds.file
        .iter()
        .flat_map(|file| {
            file.service
                .iter()
                .map(move |svc| (format!("{}.{}", file.package(), svc.name()), svc))
        })
        .find(|(name, _)| name == full_name)
        .map(|(_, svc)| svc.clone())
        .unwrap_or_else(|| panic!("service {full_name} is missing"))
}

fn rpc_names(svc: &ServiceDescriptorProto) -> Vec<&str> {
    svc.method.iter().map(|m| m.name()).collect()
}

#[test]
fn every_service_is_present() {
    let fds = descriptor_set();
    for name in [
        "kms.v1.KeyManagementService",
        "kms.v1.CryptoService",
        "kms.v1.KmsInstanceService",
        "kms.internal.v1.KeyMaterial",
        "kms.internal.v1.KeyDirectory",
    ] {
        service(&fds, name);
    }
}

#[test]
fn key_management_service_has_exactly_the_contract_rpcs_in_order() {
    let fds = descriptor_set();
    let svc = service(&fds, "kms.v1.KeyManagementService");
    assert_eq!(rpc_names(&svc), KEY_MANAGEMENT_RPCS);
}

#[test]
fn crypto_service_has_exactly_the_contract_rpcs_in_order() {
    let fds = descriptor_set();
    let svc = service(&fds, "kms.v1.CryptoService");
    assert_eq!(rpc_names(&svc), CRYPTO_RPCS);
}

#[test]
fn every_rpc_has_its_own_request_and_response() {
    let fds = descriptor_set();
    let mut seen = BTreeSet::new();
    for file in fds.file.iter().filter(|f| f.package().starts_with("kms.")) {
        for svc in &file.service {
            for method in &svc.method {
                for ty in [method.input_type(), method.output_type()] {
                    assert!(
                        !ty.starts_with(".google.protobuf."),
                        "{}.{} uses {ty}",
                        svc.name(),
                        method.name()
                    );
                    assert!(
                        seen.insert(ty.to_owned()),
                        "{ty} is used by more than one RPC"
                    );
                }
            }
        }
    }
}

#[test]
fn well_known_types_are_included_for_reflection() {
    let fds = descriptor_set();
    let names: BTreeSet<&str> = fds.file.iter().map(|f| f.name()).collect();
    assert!(names.contains("google/protobuf/timestamp.proto"));
    assert!(names.contains("google/protobuf/duration.proto"));
}

#[test]
fn generated_code_lives_at_the_documented_paths() {
    // Mostly a compile-time check: it builds only if the module paths are as documented.
    use kms_proto::kms::internal::v1 as internal;
    use kms_proto::kms::v1;
    use tonic::transport::Channel;

    fn name<T>() -> &'static str {
        std::any::type_name::<T>()
    }
    let names = [
        name::<v1::key_management_service_client::KeyManagementServiceClient<Channel>>(),
        name::<v1::key_management_service_server::KeyManagementServiceServer<()>>(),
        name::<v1::crypto_service_client::CryptoServiceClient<Channel>>(),
        name::<v1::crypto_service_server::CryptoServiceServer<()>>(),
        name::<v1::kms_instance_service_client::KmsInstanceServiceClient<Channel>>(),
        name::<v1::kms_instance_service_server::KmsInstanceServiceServer<()>>(),
        name::<internal::key_material_client::KeyMaterialClient<Channel>>(),
        name::<internal::key_material_server::KeyMaterialServer<()>>(),
        name::<internal::key_directory_client::KeyDirectoryClient<Channel>>(),
        name::<internal::key_directory_server::KeyDirectoryServer<()>>(),
        name::<v1::KeyMetadata>(),
        name::<internal::KeyEntry>(),
    ];
    for n in names {
        assert!(n.starts_with("kms_proto::kms::"), "{n}");
    }
}
