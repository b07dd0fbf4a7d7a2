//! Who sent a request: its signature checked under the secret of the AccessKey pair it names,
//! its timestamp within the allowed skew, its nonce not seen before. The pair's principal is
//! the caller every plane call acts as.
//!
//! Pairs are resolved on the data plane (`AccessKeyResolver.ResolveAccessKey`, which opens the
//! sealed secret under the HSM root key) and kept here for at most `secret_cache_ms` (≤ 1 s),
//! so a pair disabled or deleted by an operator stops working within a second. A nonce is
//! remembered only once its request's signature checked out, so nobody can spend another
//! caller's nonces.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, StatusCode};
use zeroize::Zeroizing;

use crate::error::ApiError;
use crate::planes::Planes;
use crate::sign;

/// A request as received, before it is believed.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// `GET`, `POST`...
    pub method: &'a str,
    /// The path, `/`.
    pub path: &'a str,
    /// The raw query string (without `?`).
    pub query: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

/// A request whose signature checked out.
#[derive(Debug)]
pub struct Verified {
    /// The principal ARN of the pair that signed it.
    pub principal: String,
    /// The action.
    pub action: String,
    /// The API version.
    pub version: String,
    /// Every parameter, from the query and a form body, decoded.
    pub params: BTreeMap<String, String>,
    /// Which scheme signed it.
    pub scheme: Scheme,
}

/// The signature schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `SignatureMethod=HMAC-SHA1` in the query.
    RpcHmacSha1,
    /// `Authorization: ACS3-HMAC-SHA256 ...`.
    Acs3HmacSha256,
    /// `Authorization: ACS4-HMAC-SHA256 ...`.
    Acs4HmacSha256,
}

/// A resolved pair.
#[derive(Clone)]
struct Resolved {
    principal: String,
    secret: Arc<Zeroizing<String>>,
}

/// Checks signatures.
pub struct Verifier {
    planes: Planes,
    max_skew: Duration,
    nonce_ttl: Duration,
    max_nonces: usize,
    secret_ttl: Duration,
    secrets: Mutex<HashMap<String, (Instant, Resolved)>>,
    nonces: Mutex<Nonces>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("max_skew", &self.max_skew)
            .field("secret_ttl", &self.secret_ttl)
            .finish_non_exhaustive()
    }
}

/// Nonces seen, with when they may be forgotten, oldest first.
#[derive(Default)]
struct Nonces {
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl Nonces {
    /// Records `nonce`: whether it is new, or `None` when the memory is full.
    fn record(&mut self, nonce: String, now: Instant, ttl: Duration, max: usize) -> Option<bool> {
        while let Some((until, _)) = self.order.front() {
            if *until > now {
                break;
            }
            if let Some((_, old)) = self.order.pop_front()
                && self.seen.get(&old).is_some_and(|u| *u <= now)
            {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(&nonce) {
            return Some(false);
        }
        if self.seen.len() >= max {
            return None;
        }
        let until = now + ttl;
        self.seen.insert(nonce.clone(), until);
        self.order.push_back((until, nonce));
        Some(true)
    }
}

impl Verifier {
    /// A verifier resolving pairs through `planes`.
    pub fn new(
        planes: Planes,
        max_skew: Duration,
        nonce_ttl: Duration,
        max_nonces: usize,
        secret_ttl: Duration,
    ) -> Self {
        Self {
            planes,
            max_skew,
            nonce_ttl,
            max_nonces,
            secret_ttl,
            secrets: Mutex::new(HashMap::new()),
            nonces: Mutex::new(Nonces::default()),
        }
    }

    /// Checks `request`; the caller and the parameters when it is genuine.
    pub async fn verify(&self, request: &Incoming<'_>) -> Result<Verified, ApiError> {
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        let query_pairs = sign::decode_form(request.query);
        let form = is_form(request.headers);
        let body_pairs = if form {
            sign::decode_form(&String::from_utf8_lossy(request.body))
        } else {
            Vec::new()
        };
        for (k, v) in query_pairs.iter().chain(body_pairs.iter()) {
            params.insert(k.clone(), v.clone());
        }
        let authorization = header(request.headers, "authorization");
        if let Some(auth) = authorization.filter(|a| a.starts_with("ACS")) {
            self.verify_acs(request, auth, &query_pairs, params).await
        } else {
            self.verify_rpc(request, params).await
        }
    }

    async fn verify_rpc(
        &self,
        request: &Incoming<'_>,
        params: BTreeMap<String, String>,
    ) -> Result<Verified, ApiError> {
        let get = |name: &str| {
            params
                .get(name)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| ApiError::missing(name))
        };
        let access_key_id = get("AccessKeyId")?;
        let signature = get("Signature")?;
        let method = get("SignatureMethod")?;
        if method != "HMAC-SHA1" {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidSignatureMethod.Malformed",
                format!("Specified signature method {method:?} is not valid; use HMAC-SHA1."),
            ));
        }
        let version = get("SignatureVersion")?;
        if version != "1.0" {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidSignatureVersion.Malformed",
                format!("Specified signature version {version:?} is not valid; use 1.0."),
            ));
        }
        let nonce = get("SignatureNonce")?;
        self.check_time(&get("Timestamp")?)?;
        let action = get("Action")?;
        let api_version = get("Version")?;
        let resolved = self.resolve(&access_key_id).await?;
        let string_to_sign = sign::rpc_string_to_sign(
            request.method,
            params
                .iter()
                .filter(|(k, _)| k.as_str() != "Signature")
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let computed = sign::rpc_signature(&resolved.secret, &string_to_sign);
        if !sign::signatures_match(&computed, &signature) {
            return Err(ApiError::signature_mismatch(&string_to_sign));
        }
        self.check_nonce(&access_key_id, &nonce)?;
        Ok(Verified {
            principal: resolved.principal,
            action,
            version: api_version,
            params,
            scheme: Scheme::RpcHmacSha1,
        })
    }

    async fn verify_acs(
        &self,
        request: &Incoming<'_>,
        authorization: &str,
        query_pairs: &[(String, String)],
        params: BTreeMap<String, String>,
    ) -> Result<Verified, ApiError> {
        let auth = sign::parse_authorization(authorization)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "IncompleteSignature", e))?;
        let need = |name: &str| {
            header(request.headers, name)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or_else(|| ApiError::missing(name))
        };
        let action = need("x-acs-action")?;
        let version = need("x-acs-version")?;
        let nonce = need("x-acs-signature-nonce")?;
        self.check_time(&need("x-acs-date")?)?;
        let payload_hash = need("x-acs-content-sha256")?;
        for required in [
            "x-acs-action",
            "x-acs-date",
            "x-acs-signature-nonce",
            "host",
        ] {
            if !auth.signed_headers.split(';').any(|h| h == required) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "IncompleteSignature",
                    format!("SignedHeaders must name {required}."),
                ));
            }
        }
        let resolved = self.resolve(&auth.access_key_id).await?;
        let mut headers = BTreeMap::new();
        for (name, value) in request.headers {
            let value = String::from_utf8_lossy(value.as_bytes()).trim().to_string();
            headers
                .entry(name.as_str().to_string())
                .and_modify(|v: &mut String| {
                    v.push(',');
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        let canonical = sign::canonical_request(
            request.method,
            request.path,
            &sign::canonical_query(query_pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            &headers,
            &auth.signed_headers,
            &payload_hash,
        );
        let string_to_sign = sign::acs_string_to_sign(&auth.algorithm, &canonical);
        let (computed, scheme) = match &auth.scope {
            None => (
                sign::acs3_signature(&resolved.secret, &string_to_sign),
                Scheme::Acs3HmacSha256,
            ),
            Some(scope) => (
                sign::acs4_signature(&resolved.secret, scope, &string_to_sign),
                Scheme::Acs4HmacSha256,
            ),
        };
        let body_ok = sign::signatures_match(&sign::sha256_hex(request.body), &payload_hash);
        if !body_ok || !sign::signatures_match(&computed, &auth.signature) {
            return Err(ApiError::signature_mismatch(&string_to_sign));
        }
        self.check_nonce(&auth.access_key_id, &nonce)?;
        Ok(Verified {
            principal: resolved.principal,
            action,
            version,
            params,
            scheme,
        })
    }

    fn check_time(&self, stamp: &str) -> Result<(), ApiError> {
        let at = humantime::parse_rfc3339(stamp).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidTimeStamp.Format",
                format!(
                    "Specified time stamp {stamp:?} is not in the format yyyy-MM-ddTHH:mm:ssZ."
                ),
            )
        })?;
        let now = SystemTime::now();
        let off = now
            .duration_since(at)
            .or_else(|_| at.duration_since(now))
            .unwrap_or(Duration::MAX);
        if off > self.max_skew {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidTimeStamp.Expired",
                format!(
                    "Specified time stamp or date value is expired: {stamp} is more than {} \
                     minutes off the server's clock.",
                    self.max_skew.as_secs() / 60
                ),
            ));
        }
        Ok(())
    }

    fn check_nonce(&self, access_key_id: &str, nonce: &str) -> Result<(), ApiError> {
        let fresh = self
            .nonces
            .lock()
            .map_err(|_| ApiError::internal("the nonce memory is poisoned"))?
            .record(
                format!("{access_key_id}/{nonce}"),
                Instant::now(),
                self.nonce_ttl,
                self.max_nonces,
            );
        match fresh {
            Some(true) => Ok(()),
            Some(false) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "SignatureNonceUsed",
                "Specified signature nonce was used already.",
            )),
            None => {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Rejected.Throttling",
                    "Too many requests: the gateway remembers as many nonces as it may.",
                );
                e.retry_after = Some(1);
                Err(e)
            }
        }
    }

    async fn resolve(&self, access_key_id: &str) -> Result<Resolved, ApiError> {
        let now = Instant::now();
        if let Ok(cache) = self.secrets.lock()
            && let Some((at, resolved)) = cache.get(access_key_id)
            && now.duration_since(*at) < self.secret_ttl
        {
            return Ok(resolved.clone());
        }
        let answer = self.planes.resolve_access_key(access_key_id).await;
        let (principal, secret) = match answer {
            Ok(pair) => pair,
            Err(status) => {
                let reason = crate::error::reason(&status);
                return Err(match reason.as_str() {
                    "Forbidden.AccessKeyNotFound" | "InvalidParameter.AccessKeyId" => {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            "InvalidAccessKeyId.NotFound",
                            "Specified access key is not found.",
                        )
                    }
                    "Forbidden.AccessKeyDisabled" => ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "InvalidAccessKeyId.Inactive",
                        "Specified access key is disabled.",
                    ),
                    "Forbidden.NoPermission" => ApiError::internal(
                        "the data plane refuses this gateway's principal: list it in the data \
                         plane's gateway_principals",
                    ),
                    _ => ApiError::from_status(&status),
                });
            }
        };
        let resolved = Resolved {
            principal,
            secret: Arc::new(secret),
        };
        if let Ok(mut cache) = self.secrets.lock() {
            cache.retain(|_, (at, _)| now.duration_since(*at) < self.secret_ttl);
            cache.insert(access_key_id.to_string(), (now, resolved.clone()));
        }
        Ok(resolved)
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_form(headers: &HeaderMap) -> bool {
    header(headers, "content-type")
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_refused_again_until_they_expire() {
        let mut n = Nonces::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(900);
        assert_eq!(n.record("a".into(), t0, ttl, 10), Some(true));
        assert_eq!(
            n.record("a".into(), t0 + Duration::from_secs(899), ttl, 10),
            Some(false)
        );
        assert_eq!(
            n.record("b".into(), t0 + Duration::from_secs(1), ttl, 10),
            Some(true)
        );
        assert_eq!(n.record("a".into(), t0 + ttl, ttl, 10), Some(true));
        assert_eq!(n.record("c".into(), t0 + ttl, ttl, 2), None, "full");
    }
}
