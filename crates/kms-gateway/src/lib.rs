//! The HTTP gateway: the reference cloud's KMS OpenAPI (2016-01-20) for its official SDKs.
//! Requests are verified (`auth`, `sign`), run as actions against the planes (`actions`,
//! `planes`) and answered in the reference's JSON (`api`, `error`); `config` is the
//! configuration file. The binary is `src/main.rs`.

pub mod actions;
pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod planes;
pub mod sign;
