//! What both planes share at the edge: configuration loading, caller identity, the mapping from
//! domain errors to gRPC statuses, logging, health, reflection and shutdown.

pub mod config;
pub mod identity;
pub mod serve;
pub mod status;
pub mod telemetry;
mod unimplemented;

pub use identity::{Authenticator, IdentityConfig, caller};
pub use status::to_status;
