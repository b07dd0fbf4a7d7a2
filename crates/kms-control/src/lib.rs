//! The control plane: the source of truth for instances, keys, versions, aliases, tags and
//! policies, kept in a [`kms_store::Store`]. It never touches the HSM or plaintext key material:
//! new material comes wrapped from the data plane's `KeyMaterial` service.

pub mod clock;
pub mod config;
pub mod grpc;
pub mod index;
pub mod material;
pub mod metrics;
pub mod registry;
pub mod scheduler;
pub mod schema;

pub use config::{ControlConfig, ControlParams};

/// The gRPC services the control plane serves, as `grpc.health.v1` and reflection name them.
pub const SERVICES: &[&str] = &[
    "kms.v1.KeyManagementService",
    "kms.v1.KmsInstanceService",
    "kms.v1.AuditService",
    "kms.v1.AdminService",
    "kms.v1.AccessKeyService",
    "kms.internal.v1.KeyDirectory",
];
pub use registry::Registry;
