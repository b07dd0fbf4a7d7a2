//! Caller identity: who is calling, taken from the request and put in its extensions.
//!
//! Only the development header mode exists so far: the principal ARN in `x-kms-principal`,
//! honoured only when `dev_header` is explicitly enabled. A call without an identity fails
//! with `UNAUTHENTICATED` before any handler runs.

use kms_types::{DomainError, Principal};
use serde::Deserialize;
use tonic::{Request, Status};

use crate::status::to_status;

/// The development identity header.
pub const DEV_PRINCIPAL_HEADER: &str = "x-kms-principal";

/// How callers are identified.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Accept the principal ARN from the `x-kms-principal` header. Development only: anyone
    /// who can reach the port can claim any identity.
    #[serde(default)]
    pub dev_header: bool,
    /// This plane's own principal, sent on calls to the other plane.
    pub service_principal: String,
    /// The other plane's principal: the only caller its internal service accepts.
    pub peer_principal: String,
}

impl IdentityConfig {
    /// Checks the principals parse; called once at start.
    pub fn validate(&self) -> Result<(), String> {
        for (name, arn) in [
            ("service_principal", &self.service_principal),
            ("peer_principal", &self.peer_principal),
        ] {
            Principal::parse(arn)
                .map_err(|_| format!("identity.{name} {arn:?} is not a principal ARN"))?;
        }
        if !self.dev_header {
            return Err(
                "identity: no authentication mode is enabled; set identity.dev_header = true for local use".into(),
            );
        }
        Ok(())
    }
}

/// A tonic interceptor that authenticates every call and stores the [`Principal`] in the
/// request's extensions.
#[derive(Debug, Clone)]
pub struct Authenticator {
    dev_header: bool,
}

impl Authenticator {
    /// An authenticator for `config`.
    pub fn new(config: &IdentityConfig) -> Self {
        Self {
            dev_header: config.dev_header,
        }
    }

    fn principal(&self, req: &Request<()>) -> Result<Principal, DomainError> {
        if !self.dev_header {
            return Err(DomainError::NoIdentity);
        }
        let value = req
            .metadata()
            .get(DEV_PRINCIPAL_HEADER)
            .ok_or(DomainError::NoIdentity)?;
        let text = value.to_str().map_err(|_| DomainError::NoIdentity)?;
        Principal::parse(text)
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let principal = self.principal(&req).map_err(to_status)?;
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

/// The authenticated caller of a request that passed through [`Authenticator`].
pub fn caller<T>(req: &Request<T>) -> Result<Principal, DomainError> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or(DomainError::NoIdentity)
}

/// Sets the development identity header on an outgoing request.
pub fn with_principal<T>(mut req: Request<T>, principal: &str) -> Result<Request<T>, DomainError> {
    let value = principal
        .parse()
        .map_err(|_| DomainError::Internal("principal is not a valid header value".into()))?;
    req.metadata_mut().insert(DEV_PRINCIPAL_HEADER, value);
    Ok(req)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tonic::service::Interceptor;

    fn config(dev: bool) -> IdentityConfig {
        IdentityConfig {
            dev_header: dev,
            service_principal: "acs:ram::1:role/a".into(),
            peer_principal: "acs:ram::1:role/b".into(),
        }
    }

    #[test]
    fn dev_header_only_when_enabled() {
        let req = with_principal(Request::new(()), "acs:ram::42:user/alice").unwrap();
        let mut on = Authenticator::new(&config(true));
        let out = on.call(req).unwrap();
        assert_eq!(caller(&out).unwrap().arn(), "acs:ram::42:user/alice");

        let req = with_principal(Request::new(()), "acs:ram::42:user/alice").unwrap();
        let mut off = Authenticator::new(&config(false));
        assert_eq!(
            off.call(req).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn missing_or_bad_identity_is_unauthenticated() {
        let mut auth = Authenticator::new(&config(true));
        assert_eq!(
            auth.call(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let req = with_principal(Request::new(()), "bob").unwrap();
        let err = auth.call(req).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(
            err.message().starts_with("Forbidden.NoIdentity"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn config_validation() {
        assert!(config(true).validate().is_ok());
        assert!(
            config(false)
                .validate()
                .unwrap_err()
                .contains("no authentication mode")
        );
        let mut bad = config(true);
        bad.peer_principal = "x".into();
        assert!(bad.validate().unwrap_err().contains("peer_principal"));
    }
}
