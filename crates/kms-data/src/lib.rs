//! The data plane: every cryptographic operation. It keeps no durable state: keys come from
//! the control plane's `KeyDirectory` (cached briefly), key material is unsealed through the
//! HSM root key, and software keys are computed in process.

pub mod cache;
pub mod config;
pub mod crypto;
pub mod directory;
pub mod grpc;
pub mod import;
pub mod metrics;
pub mod usage;
pub mod vault;
pub mod watch;

pub use config::{DataConfig, DataParams};

/// The gRPC services the data plane serves, as `grpc.health.v1` and reflection name them.
pub const SERVICES: &[&str] = &[
    "kms.v1.CryptoService",
    "kms.v1.AccessKeyResolver",
    "kms.internal.v1.KeyMaterial",
];
