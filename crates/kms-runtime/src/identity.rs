//! Caller identity: who is calling, taken from the request and put in its extensions.
//!
//! Three modes, chosen in `[identity]`, each off unless configured:
//!
//! 1. **mTLS** (`[identity.tls]`): the principal is the client certificate's `acs:` URI SAN
//!    (see [`crate::tls`]).
//! 2. **Trusted sidecar** (`[identity.trusted_sidecar]`): the principal ARN in a configured
//!    header, believed only on connections from the configured peer addresses.
//! 3. **Development header** (`dev_header = true`): the principal ARN in `x-kms-principal`,
//!    from anyone. Local use and tests only.
//!
//! When several are on, the first that yields an identity wins, in that order: a client
//! certificate's principal, then the sidecar header from a trusted peer, then the development
//! header. A source that is present but wrong (a certificate with two principal SANs, a
//! sidecar header that is not an ARN, an unparsable development header) fails the call with
//! `UNAUTHENTICATED` rather than falling through, saying what is wrong with a header and the
//! form expected; a certificate with no `acs:` SAN and a sidecar header from an untrusted peer
//! count as absent. A call with no identity fails with `UNAUTHENTICATED` before any handler
//! runs, saying where this configuration takes the principal from, with the form expected.
//!
//! The internal services (`kms.internal.*`) answer only the other plane, and outside
//! development only on its client certificate ([`Identifier::accepts_internal`]): a sidecar
//! forwards whatever principal its caller chose, so a sidecar header never reaches them. A
//! trusted sidecar therefore needs `[identity.tls]` beside it, for plane-to-plane calls.
//!
//! [`crate::auth::AuthLayer`] applies [`Identifier`] to every call; [`Authenticator`] is the
//! older per-service interceptor for the development header alone.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;
use kms_types::principal::{PRINCIPAL_EXAMPLE, PRINCIPAL_FORM};
use kms_types::{DomainError, Principal};
use serde::Deserialize;
use tonic::{Request, Status};

use crate::status::to_status;
use crate::tls::{TlsConfig, principal_from_cert};

/// The development identity header.
pub const DEV_PRINCIPAL_HEADER: &str = "x-kms-principal";

/// The default header a trusted sidecar puts the caller's principal in.
pub const DEFAULT_SIDECAR_HEADER: &str = "x-forwarded-principal";

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
    /// Serve TLS and identify callers by client certificate.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Believe a principal header from a sidecar at a trusted address.
    #[serde(default)]
    pub trusted_sidecar: Option<SidecarConfig>,
}

/// `[identity.trusted_sidecar]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    /// The header carrying the caller's principal ARN.
    #[serde(default = "default_sidecar_header")]
    pub header: String,
    /// Peer addresses whose header is believed: IPs (`127.0.0.1`, `::1`) or CIDRs
    /// (`10.0.0.0/8`). At least one; `0.0.0.0/0` and `::/0` are refused.
    pub trusted_peers: Vec<String>,
}

fn default_sidecar_header() -> String {
    DEFAULT_SIDECAR_HEADER.into()
}

impl IdentityConfig {
    /// Checks the principals parse, at least one mode is on and each mode's settings; called
    /// once at start.
    pub fn validate(&self) -> Result<(), String> {
        for (name, arn) in [
            ("service_principal", &self.service_principal),
            ("peer_principal", &self.peer_principal),
        ] {
            Principal::parse(arn)
                .map_err(|_| format!("identity.{name} {arn:?} is not a principal ARN"))?;
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        if let Some(sidecar) = &self.trusted_sidecar {
            Sidecar::new(sidecar)?;
        }
        if !self.dev_header && self.tls.is_none() && self.trusted_sidecar.is_none() {
            return Err(
                "identity: no authentication mode is enabled; configure [identity.tls] (mTLS) or \
                 [identity.trusted_sidecar], or set identity.dev_header = true for local use"
                    .into(),
            );
        }
        if !self.dev_header && self.tls.is_none() {
            return Err(
                "identity.trusted_sidecar needs [identity.tls] as well: the internal services \
                 accept only client-certificate identities outside development, so the planes \
                 could not call each other"
                    .into(),
            );
        }
        Ok(())
    }
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is in the network; IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IP address or CIDR like 10.0.0.0/8");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = IpAddr::from_str(addr).map_err(|_| bad())?.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A validated trusted-sidecar setting.
#[derive(Debug, Clone)]
struct Sidecar {
    header: http::HeaderName,
    trusted: Vec<IpNet>,
}

impl Sidecar {
    fn new(config: &SidecarConfig) -> Result<Self, String> {
        let header = http::HeaderName::from_str(&config.header)
            .ok()
            .filter(|h| h.as_str() == config.header)
            .ok_or_else(|| {
                format!(
                    "identity.trusted_sidecar.header {:?} is not a lowercase header name",
                    config.header
                )
            })?;
        if header.as_str().starts_with("grpc-") || header.as_str() == DEV_PRINCIPAL_HEADER {
            return Err(format!(
                "identity.trusted_sidecar.header {:?} is reserved; use e.g. {DEFAULT_SIDECAR_HEADER}",
                config.header
            ));
        }
        if config.trusted_peers.is_empty() {
            return Err(
                "identity.trusted_sidecar.trusted_peers is empty: list the sidecars' addresses"
                    .into(),
            );
        }
        let trusted = config
            .trusted_peers
            .iter()
            .map(|p| {
                let net: IpNet = p
                    .parse()
                    .map_err(|e| format!("identity.trusted_sidecar.trusted_peers: {e}"))?;
                if net.prefix == 0 {
                    return Err(format!(
                        "identity.trusted_sidecar.trusted_peers: {p:?} trusts every address; list the sidecars' addresses"
                    ));
                }
                Ok(net)
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self { header, trusted })
    }

    fn trusts(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| self.trusted.iter().any(|net| net.contains(ip)))
    }
}

/// Where a call's identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// The client certificate's URI SAN.
    Certificate,
    /// The trusted sidecar's header.
    Sidecar,
    /// The development header.
    DevHeader,
}

/// What a connection and a call offer as identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The peer's certificate chain (DER, leaf first), when it presented one over TLS.
    pub peer_certs: Option<&'a [rustls::pki_types::CertificateDer<'static>]>,
    /// The peer's IP address.
    pub peer_ip: Option<IpAddr>,
    /// The call's headers.
    pub headers: Option<&'a HeaderMap>,
}

/// Applies the configured modes, in precedence order, to a call.
#[derive(Debug, Clone)]
pub struct Identifier {
    tls: bool,
    sidecar: Option<Sidecar>,
    dev_header: bool,
}

impl Identifier {
    /// The identifier for `config`; fails as [`IdentityConfig::validate`] does.
    pub fn new(config: &IdentityConfig) -> Result<Self, String> {
        config.validate()?;
        Ok(Self {
            tls: config.tls.is_some(),
            sidecar: config
                .trusted_sidecar
                .as_ref()
                .map(Sidecar::new)
                .transpose()?,
            dev_header: config.dev_header,
        })
    }

    /// Whether a call to an internal service may be identified by `source`: only by a client
    /// certificate, unless the development header is on.
    pub fn accepts_internal(&self, source: IdentitySource) -> bool {
        self.dev_header || source == IdentitySource::Certificate
    }

    /// The caller's principal and where it came from, or `NoIdentity`.
    pub fn identify(
        &self,
        creds: &Credentials<'_>,
    ) -> Result<(Principal, IdentitySource), DomainError> {
        if self.tls
            && let Some(leaf) = creds.peer_certs.and_then(|c| c.first())
            && let Some(principal) = principal_from_cert(leaf)?
        {
            return Ok((principal, IdentitySource::Certificate));
        }
        let header = |name: &str| -> Option<Result<Principal, DomainError>> {
            let value = creds.headers?.get(name)?;
            Some(header_principal(name, value))
        };
        if let Some(sidecar) = &self.sidecar {
            if sidecar.trusts(creds.peer_ip) {
                if let Some(found) = header(sidecar.header.as_str()) {
                    return found.map(|p| (p, IdentitySource::Sidecar));
                }
            } else if creds
                .headers
                .is_some_and(|h| h.contains_key(&sidecar.header))
            {
                tracing::debug!(
                    peer = ?creds.peer_ip,
                    header = %sidecar.header,
                    "ignoring the sidecar principal header from an untrusted peer"
                );
            }
        }
        if self.dev_header
            && let Some(found) = header(DEV_PRINCIPAL_HEADER)
        {
            return found.map(|p| (p, IdentitySource::DevHeader));
        }
        Err(self.no_identity())
    }

    /// The answer to a call that offers no identity: what it may send, in this configuration.
    fn no_identity(&self) -> DomainError {
        let mut ways = Vec::new();
        if self.tls {
            ways.push("a client certificate's URI SAN".to_string());
        }
        if self.sidecar.is_some() {
            ways.push("a trusted sidecar's header".to_string());
        }
        if self.dev_header {
            ways.push(format!("the {DEV_PRINCIPAL_HEADER} header (development)"));
        }
        if ways.is_empty() {
            return DomainError::NoIdentity;
        }
        DomainError::Unidentified(format!(
            "the request carries no identity; name the caller with a principal ARN, \
             {PRINCIPAL_FORM} (e.g. {PRINCIPAL_EXAMPLE}), in {}",
            ways.join(" or ")
        ))
    }
}

/// Longest part of a refused header value repeated in the answer.
const SHOWN_VALUE_CHARS: usize = 80;

/// The principal in header `name`, or `UNAUTHENTICATED` saying what is wrong with it and what
/// is expected.
fn header_principal(name: &str, value: &http::HeaderValue) -> Result<Principal, DomainError> {
    let malformed = |why: String| {
        DomainError::Unidentified(format!(
            "the {name} header is not a principal ARN: {why}; expected {PRINCIPAL_FORM}, \
             e.g. {PRINCIPAL_EXAMPLE}"
        ))
    };
    let text = value
        .to_str()
        .map_err(|_| malformed("it is not printable ASCII".into()))?;
    Principal::parse_explained(text).map_err(|why| {
        let shown: String = text.chars().take(SHOWN_VALUE_CHARS).collect();
        let more = if shown.len() < text.len() { "..." } else { "" };
        malformed(format!("{shown:?}{more}: {why}"))
    })
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
        let value = http::HeaderValue::from_bytes(value.as_encoded_bytes())
            .map_err(|_| DomainError::NoIdentity)?;
        header_principal(DEV_PRINCIPAL_HEADER, &value)
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        // Behind `AuthLayer` the caller is already identified, by whichever mode applies.
        if req.extensions().get::<Principal>().is_some() {
            return Ok(req);
        }
        let principal = self.principal(&req).map_err(to_status)?;
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

/// The authenticated caller of a request that passed through [`crate::auth::AuthLayer`] or
/// [`Authenticator`].
pub fn caller<T>(req: &Request<T>) -> Result<Principal, DomainError> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or(DomainError::NoIdentity)
}

/// Sets the development identity header on an outgoing request.
///
/// The current span's trace context goes along (`traceparent`), so the call continues the
/// caller's trace on the other plane.
pub fn with_principal<T>(mut req: Request<T>, principal: &str) -> Result<Request<T>, DomainError> {
    let value = principal
        .parse()
        .map_err(|_| DomainError::Internal("principal is not a valid header value".into()))?;
    req.metadata_mut().insert(DEV_PRINCIPAL_HEADER, value);
    crate::telemetry::inject(req.metadata_mut());
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
            tls: None,
            trusted_sidecar: None,
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
        assert!(err.message().contains("\"bob\""), "{}", err.message());
    }

    /// The message of a `Forbidden.NoIdentity` refusal; panics on anything else.
    fn refusal(r: Result<(String, IdentitySource), DomainError>) -> String {
        match r {
            Err(e) if e.reason_code() == "Forbidden.NoIdentity" => e.to_string(),
            other => panic!("expected Forbidden.NoIdentity, got {other:?}"),
        }
    }

    fn is_absent(r: Result<(String, IdentitySource), DomainError>) -> bool {
        refusal(r).starts_with("the request carries no identity")
    }

    /// A malformed principal in the development or a sidecar header is answered like a missing
    /// one, with the expected form and an example, and with what was wrong with it.
    #[test]
    fn malformed_principals_say_what_is_wrong_and_what_is_expected() {
        let mut cfg = config(true);
        cfg.trusted_sidecar = Some(sidecar(&["127.0.0.1"]));
        let id = Identifier::new(&cfg).unwrap();
        let form = "expected acs:ram::<16-digit account>:root|user/<name>|role/<name>, \
                    e.g. acs:ram::1234567890123456:root";
        for header in [DEV_PRINCIPAL_HEADER, DEFAULT_SIDECAR_HEADER] {
            for (bad, why) in [
                ("1234567890123456", "an account id alone"),
                ("root", "does not start with `acs:ram::`"),
                ("acs:ram:123:root", "two colons"),
            ] {
                let msg = refusal(identify(&id, "127.0.0.1", &[(header, bad)]));
                assert!(
                    msg.starts_with(&format!(
                        "the {header} header is not a principal ARN: {bad:?}"
                    )),
                    "{msg}"
                );
                assert!(msg.contains(why) && msg.ends_with(form), "{msg}");
            }
        }
        let long = format!("x{}", "y".repeat(500));
        let msg = refusal(identify(&id, "127.0.0.1", &[(DEV_PRINCIPAL_HEADER, &long)]));
        assert!(msg.len() < 400 && msg.contains("...:"), "{msg}");
        let absent = refusal(identify(&id, "127.0.0.1", &[]));
        assert!(
            absent.contains("a trusted sidecar's header or the x-kms-principal header")
                && absent.contains("(e.g. acs:ram::1234567890123456:root)"),
            "{absent}"
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

    fn sidecar(peers: &[&str]) -> SidecarConfig {
        SidecarConfig {
            header: DEFAULT_SIDECAR_HEADER.into(),
            trusted_peers: peers.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// TLS settings of the right shape (validation does not read the files).
    fn some_tls() -> TlsConfig {
        TlsConfig {
            cert_file: "c".into(),
            key_file: "k".into(),
            client_ca_file: "ca".into(),
            require_client_cert: false,
            client_cert_file: None,
            client_key_file: None,
            server_ca_file: None,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn identify(
        id: &Identifier,
        peer: &str,
        pairs: &[(&'static str, &str)],
    ) -> Result<(String, IdentitySource), DomainError> {
        let h = headers(pairs);
        let creds = Credentials {
            peer_certs: None,
            peer_ip: Some(peer.parse().unwrap()),
            headers: Some(&h),
        };
        id.identify(&creds).map(|(p, s)| (p.arn().to_string(), s))
    }

    #[test]
    fn sidecar_header_only_from_trusted_peers() {
        let mut cfg = config(false);
        cfg.tls = Some(some_tls());
        cfg.trusted_sidecar = Some(sidecar(&["10.1.0.0/16", "::1"]));
        let id = Identifier::new(&cfg).unwrap();
        let alice = [(DEFAULT_SIDECAR_HEADER, "acs:ram::42:user/alice")];
        let trusted = ["10.1.2.3", "::1", "::ffff:10.1.200.1"];
        for peer in trusted {
            assert_eq!(
                identify(&id, peer, &alice),
                Ok(("acs:ram::42:user/alice".into(), IdentitySource::Sidecar)),
                "{peer}"
            );
        }
        for peer in ["10.2.0.1", "127.0.0.1", "::2", "192.168.1.1"] {
            assert!(is_absent(identify(&id, peer, &alice)), "{peer}");
        }
        // From a trusted peer: a bad ARN is refused, no header is no identity.
        assert!(
            refusal(identify(
                &id,
                "10.1.0.1",
                &[(DEFAULT_SIDECAR_HEADER, "alice")]
            ))
            .contains("is not a principal ARN")
        );
        assert!(is_absent(identify(&id, "10.1.0.1", &[])));
        // The development header means nothing while dev_header is off.
        assert!(is_absent(identify(
            &id,
            "10.1.0.1",
            &[(DEV_PRINCIPAL_HEADER, "acs:ram::42:root")]
        )));
        // No peer address (not a TCP connection): never trusted.
        let h = headers(&alice);
        let creds = Credentials {
            peer_certs: None,
            peer_ip: None,
            headers: Some(&h),
        };
        assert!(is_absent(
            id.identify(&creds).map(|(p, s)| (p.arn().to_string(), s))
        ));
    }

    #[test]
    fn sidecar_before_dev_header() {
        let mut cfg = config(true);
        cfg.trusted_sidecar = Some(sidecar(&["127.0.0.1"]));
        let id = Identifier::new(&cfg).unwrap();
        let both = [
            (DEFAULT_SIDECAR_HEADER, "acs:ram::1:user/from-sidecar"),
            (DEV_PRINCIPAL_HEADER, "acs:ram::1:user/from-dev"),
        ];
        assert_eq!(
            identify(&id, "127.0.0.1", &both),
            Ok((
                "acs:ram::1:user/from-sidecar".into(),
                IdentitySource::Sidecar
            ))
        );
        // An untrusted peer's sidecar header is ignored; the dev header still applies.
        assert_eq!(
            identify(&id, "127.0.0.2", &both),
            Ok(("acs:ram::1:user/from-dev".into(), IdentitySource::DevHeader))
        );
        assert!(
            refusal(identify(
                &id,
                "127.0.0.1",
                &[(DEV_PRINCIPAL_HEADER, "nope")]
            ))
            .contains("is not a principal ARN")
        );
    }

    #[test]
    fn internal_services_take_certificates_outside_development() {
        use IdentitySource::*;
        // (dev_header, source, accepted)
        let cases = [
            (false, Certificate, true),
            (false, Sidecar, false),
            (true, Certificate, true),
            (true, Sidecar, true),
            (true, DevHeader, true),
        ];
        for (dev, source, want) in cases {
            let mut cfg = config(dev);
            cfg.tls = Some(some_tls());
            cfg.trusted_sidecar = Some(sidecar(&["10.0.0.1"]));
            let id = Identifier::new(&cfg).unwrap();
            assert_eq!(id.accepts_internal(source), want, "dev {dev} {source:?}");
        }
    }

    #[test]
    fn networks() {
        let cases = [
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("127.0.0.1/32", "::ffff:127.0.0.1", true),
            ("::ffff:127.0.0.1", "127.0.0.1", true),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "fe80::1", false),
            ("10.0.0.0/8", "::1", false),
            ("192.168.0.1/0", "8.8.8.8", true),
        ];
        for (net, ip, want) in cases {
            let n: IpNet = net.parse().unwrap();
            assert_eq!(n.contains(ip.parse().unwrap()), want, "{net} {ip}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "host",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mode_settings_are_validated() {
        let check = |edit: &dyn Fn(&mut IdentityConfig), want: Option<&str>| {
            let mut c = config(false);
            edit(&mut c);
            match (c.validate(), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{e} (wanted {w})"),
                (got, want) => panic!("got {got:?}, wanted {want:?}"),
            }
        };
        check(&|_| {}, Some("no authentication mode"));
        // A sidecar alone: the planes could not call each other's internal services.
        check(
            &|c| c.trusted_sidecar = Some(sidecar(&["10.0.0.1"])),
            Some("needs [identity.tls]"),
        );
        check(
            &|c| {
                c.tls = Some(some_tls());
                c.trusted_sidecar = Some(sidecar(&["10.0.0.1"]));
            },
            None,
        );
        check(
            &|c| {
                c.dev_header = true;
                c.trusted_sidecar = Some(sidecar(&["10.0.0.1"]));
            },
            None,
        );
        check(
            &|c| c.trusted_sidecar = Some(sidecar(&[])),
            Some("trusted_peers is empty"),
        );
        check(
            &|c| c.trusted_sidecar = Some(sidecar(&["0.0.0.0/0"])),
            Some("trusts every address"),
        );
        check(
            &|c| c.trusted_sidecar = Some(sidecar(&["10.0.0.300"])),
            Some("not an IP address"),
        );
        check(
            &|c| {
                let mut s = sidecar(&["10.0.0.1"]);
                s.header = "X-Principal".into();
                c.trusted_sidecar = Some(s);
            },
            Some("lowercase header name"),
        );
        check(
            &|c| {
                let mut s = sidecar(&["10.0.0.1"]);
                s.header = DEV_PRINCIPAL_HEADER.into();
                c.trusted_sidecar = Some(s);
            },
            Some("reserved"),
        );
        let tls = TlsConfig {
            cert_file: "c".into(),
            key_file: "k".into(),
            client_ca_file: "ca".into(),
            require_client_cert: true,
            client_cert_file: None,
            client_key_file: Some("x".into()),
            server_ca_file: None,
        };
        let t = tls.clone();
        check(&move |c| c.tls = Some(t.clone()), Some("go together"));
        let mut ok = tls;
        ok.client_key_file = None;
        check(&move |c| c.tls = Some(ok.clone()), None);
    }

    #[test]
    fn identity_section_parses() {
        let text = r#"
            service_principal = "acs:ram::1:role/a"
            peer_principal = "acs:ram::1:role/b"
            [tls]
            cert_file = "/etc/kms/tls/control.pem"
            key_file = "/etc/kms/tls/control-key.pem"
            client_ca_file = "/etc/kms/tls/ca.pem"
            [trusted_sidecar]
            trusted_peers = ["127.0.0.1"]
        "#;
        let c: IdentityConfig = toml::from_str(text).unwrap();
        assert!(c.validate().is_ok());
        let tls = c.tls.unwrap();
        assert!(tls.require_client_cert);
        assert_eq!(c.trusted_sidecar.unwrap().header, DEFAULT_SIDECAR_HEADER);
        let typo = text.replace("trusted_peers", "trusted_peer");
        assert!(toml::from_str::<IdentityConfig>(&typo).is_err());
    }

    #[test]
    fn interceptor_keeps_a_principal_the_layer_set() {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(Principal::parse("acs:ram::42:user/alice").unwrap());
        let mut off = Authenticator::new(&config(false));
        let out = off.call(req).unwrap();
        assert_eq!(caller(&out).unwrap().arn(), "acs:ram::42:user/alice");
    }
}
