//! Sessions in a signed cookie: who signed in (dev sign-in only), the CSRF token every form
//! carries, and when the session ends. The cookie is `HttpOnly`, `SameSite=Strict`, and
//! `Secure` when the console serves TLS; its content is authenticated with HMAC-SHA-256 under
//! the console's session secret, so a browser can read nothing it could change. It never holds
//! key material.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// The cookie's name.
pub(crate) const COOKIE: &str = "kms_console_session";

/// What a session holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    /// The principal chosen on the dev sign-in page.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub(crate) principal: Option<String>,
    /// The CSRF token of this session's forms, hex.
    #[serde(rename = "c")]
    pub(crate) csrf: String,
    /// Expiry, seconds since the epoch.
    #[serde(rename = "e")]
    pub(crate) expires: u64,
}

/// Signs and checks session cookies.
#[derive(Debug)]
pub(crate) struct Sessions {
    key: hmac::Key,
    lifetime: u64,
    secure: bool,
    rng: SystemRandom,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Sessions {
    /// Sessions signed with `secret`, lasting `lifetime` seconds; `secure` marks cookies
    /// `Secure` (the console serves TLS).
    pub(crate) fn new(secret: &[u8], lifetime: u64, secure: bool) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            lifetime,
            secure,
            rng: SystemRandom::new(),
        }
    }

    /// A random secret for a console that has no secret file (sessions end when it stops).
    pub(crate) fn random_secret() -> anyhow::Result<Vec<u8>> {
        let mut secret = vec![0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| anyhow::anyhow!("no system randomness"))?;
        Ok(secret)
    }

    /// A new session, signed in as `principal` if given.
    pub(crate) fn fresh(&self, principal: Option<String>) -> anyhow::Result<Session> {
        let mut token = [0u8; 24];
        self.rng
            .fill(&mut token)
            .map_err(|_| anyhow::anyhow!("no system randomness"))?;
        Ok(Session {
            principal,
            csrf: hex::encode(token),
            expires: now() + self.lifetime,
        })
    }

    /// The cookie value for `session`: the JSON in base64url, a dot, its MAC.
    pub(crate) fn encode(&self, session: &Session) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(session).unwrap_or_default());
        let tag = hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The session in a cookie value, if its MAC is right and it has not expired.
    pub(crate) fn decode(&self, value: &str) -> Option<Session> {
        let (body, tag) = value.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(&self.key, body.as_bytes(), &tag).ok()?;
        let session: Session = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        (session.expires > now()).then_some(session)
    }

    /// The `Set-Cookie` header value carrying `session`.
    pub(crate) fn set_cookie(&self, session: &Session) -> String {
        format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.encode(session),
            self.lifetime,
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The session in a request's `Cookie` headers.
    pub(crate) fn in_headers(&self, headers: &axum::http::HeaderMap) -> Option<Session> {
        headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == COOKIE)
            .find_map(|(_, value)| self.decode(value))
    }
}

/// Whether a submitted CSRF token is the session's.
pub(crate) fn csrf_matches(session: &Session, submitted: &str) -> bool {
    !submitted.is_empty() && bool::from(session.csrf.as_bytes().ct_eq(submitted.as_bytes()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn round_trips_and_refuses_changes() {
        let sessions = Sessions::new(b"secret", 3600, false);
        let s = sessions
            .fresh(Some("acs:ram::1234567890123456:root".into()))
            .unwrap();
        let value = sessions.encode(&s);
        assert_eq!(sessions.decode(&value), Some(s.clone()));
        // Another principal in the same envelope: the MAC no longer matches.
        let forged = Session {
            principal: Some("acs:ram::1000000000000000:user/operator".into()),
            ..s.clone()
        };
        let forged_body = sessions.encode(&forged);
        let (_, tag) = value.split_once('.').unwrap();
        let (body, _) = forged_body.split_once('.').unwrap();
        assert_eq!(sessions.decode(&format!("{body}.{tag}")), None);
        // Another secret: nothing decodes.
        assert_eq!(Sessions::new(b"other", 3600, false).decode(&value), None);
        assert_eq!(sessions.decode("garbage"), None);
    }

    #[test]
    fn expired_sessions_are_refused() {
        let sessions = Sessions::new(b"secret", 3600, false);
        let mut s = sessions.fresh(None).unwrap();
        s.expires = now() - 1;
        assert_eq!(sessions.decode(&sessions.encode(&s)), None);
    }

    #[test]
    fn cookie_attributes() {
        let plain = Sessions::new(b"k", 60, false);
        let s = plain.fresh(None).unwrap();
        let c = plain.set_cookie(&s);
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
        assert!(!c.contains("Secure"), "{c}");
        assert!(
            Sessions::new(b"k", 60, true)
                .set_cookie(&s)
                .ends_with("; Secure")
        );
    }

    #[test]
    fn csrf_must_match() {
        let sessions = Sessions::new(b"secret", 3600, false);
        let s = sessions.fresh(None).unwrap();
        assert!(csrf_matches(&s, &s.csrf.clone()));
        assert!(!csrf_matches(&s, ""));
        assert!(!csrf_matches(&s, "00"));
    }
}
