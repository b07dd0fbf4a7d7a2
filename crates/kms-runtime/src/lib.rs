//! What both planes share at the edge: configuration loading, TLS and caller identity, the
//! bounds on connections, the edge layer that authenticates, rate-limits and audits every call,
//! certificates reloaded from their files, the mapping from domain errors to gRPC statuses,
//! logging, health, reflection and shutdown.

pub mod audit;
pub mod audit_wire;
pub mod auth;
pub mod config;
pub mod connections;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod reload;
pub mod replicas;
pub mod serve;
pub mod status;
pub mod telemetry;
pub mod tls;
mod unimplemented;

pub use audit::{AuditConfig, note_key};
pub use auth::AuthLayer;
pub use identity::{Authenticator, IdentityConfig, caller};
pub use limits::LimitsConfig;
pub use status::to_status;
pub use tls::TlsConfig;
