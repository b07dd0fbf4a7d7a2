//! The KMS domain: identifiers, key specs, states and rules, wire-independent formats, errors.
//!
//! This crate does no I/O and has no async. Servers convert wire types into these, call the
//! rules here, and convert back.

pub mod access_key;
pub mod authz;
pub mod blob;
pub mod context;
pub mod crypto_rules;
pub mod error;
pub mod event;
pub mod ids;
pub mod import;
pub mod instance;
pub mod key;
pub mod lifecycle;
pub mod listing;
pub mod policy;
pub mod principal;
pub mod spec;
pub mod state;
pub mod time;
pub mod usage;
pub mod validate;

pub use access_key::{AccessKeyId, AccessKeyRecord, AccessKeyStatus};
pub use blob::CiphertextBlob;
pub use context::EncryptionContext;
pub use error::DomainError;
pub use event::{KeyEvent, KeyEventKind};
pub use ids::{AccountId, InstanceId, KeyId, KeyRef, KeyVersionId};
pub use import::{ImportRejection, ImportTokenId, ImportTokenRecord};
pub use instance::{InstanceRecord, NewInstance, QuotaChange};
pub use key::{KeyEntry, KeyRecord, KeyVersionRecord, NewKey, RotationPolicy, Tag};
pub use lifecycle::{KeyBirth, KeyHome, KeyPlan};
pub use listing::{KeyFilter, KeyQuery, Page, PageRequest};
pub use principal::Principal;
pub use spec::{
    Algorithm, DataKeySpec, InstanceType, KeyOrigin, KeySpec, KeyUsage, ProtectionLevel,
    RotationStatus,
};
pub use state::{KeyState, Operation};
pub use time::UnixMillis;
pub use usage::{Association, KeyAssociations, UsageEvent, UsageOp, VersionUse};
