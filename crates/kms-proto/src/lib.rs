//! Wire types of the KMS: prost messages and tonic clients and servers generated from `proto/`.
//!
//! - [`kms::v1`]: the public API (`KeyManagementService`, `CryptoService`,
//!   `KmsInstanceService`, `AuditService`, `AdminService`).
//! - [`kms::internal::v1`]: plane-to-plane services (`KeyMaterial` on the data plane,
//!   `KeyDirectory` on the control plane).
//!
//! Well-known types (`Timestamp`, `Duration`) are [`prost_types`]. Enum fields are `i32` on the
//! wire structs; use the generated enums' `TryFrom<i32>` to read them.

/// Protobuf package `kms`.
pub mod kms {
    /// Protobuf package `kms.v1`: the public API.
    #[allow(
        missing_docs,
        missing_debug_implementations,
        unreachable_pub,
        clippy::all,
        clippy::pedantic,
        clippy::nursery,
        clippy::unwrap_used,
        clippy::expect_used
    )]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/kms.v1.rs"));
    }

    /// Protobuf package `kms.internal`.
    pub mod internal {
        /// Protobuf package `kms.internal.v1`: services between the control and data planes.
        #[allow(
            missing_docs,
            missing_debug_implementations,
            unreachable_pub,
            clippy::all,
            clippy::pedantic,
            clippy::nursery,
            clippy::unwrap_used,
            clippy::expect_used
        )]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/kms.internal.v1.rs"));
        }
    }
}

/// Encoded `google.protobuf.FileDescriptorSet` of every file in `proto/` and its imports, for
/// gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kms_descriptor.bin"));
pub mod convert;
