//! `kms.v1.KmsInstanceService`.

use kms_proto::kms::v1::kms_instance_service_server::KmsInstanceService;
use kms_proto::kms::v1::*;

/// KMS instance management on the control plane.
#[derive(Debug, Default)]
pub struct InstanceService;

#[tonic::async_trait]
impl KmsInstanceService for InstanceService {
    kms_runtime::unimplemented_rpcs! {
        "kms.v1.KmsInstanceService";
        create_kms_instance(CreateKmsInstanceRequest) -> CreateKmsInstanceResponse = "CreateKmsInstance";
        get_kms_instance(GetKmsInstanceRequest) -> GetKmsInstanceResponse = "GetKmsInstance";
        list_kms_instances(ListKmsInstancesRequest) -> ListKmsInstancesResponse = "ListKmsInstances";
        share_kms_instance(ShareKmsInstanceRequest) -> ShareKmsInstanceResponse = "ShareKmsInstance";
        unshare_kms_instance(UnshareKmsInstanceRequest) -> UnshareKmsInstanceResponse = "UnshareKmsInstance";
    }
}
