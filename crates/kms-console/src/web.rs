//! The HTTP side: routes, the layer that keeps a session and sets the security headers on
//! every answer, who the caller is (trusted proxy header or dev sign-in), forms checked
//! against the session's CSRF token, and the static files.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{Markup, html};

use crate::config::Proxy;
use crate::planes::{ApiError, Planes};
use crate::session::{Session, Sessions, csrf_matches};
use crate::view;

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) planes: Planes,
    pub(crate) sessions: Sessions,
    pub(crate) proxy: Option<Proxy>,
    pub(crate) dev_json: Option<PathBuf>,
}

pub(crate) type Shared = Arc<AppState>;

/// The Content-Security-Policy of every answer: only the console's own files, no inline
/// script or style, no framing, forms only to the console.
pub(crate) const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; \
                              img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                              base-uri 'none'";

const CSS: &str = include_str!("../static/console.css");
const JS: &str = include_str!("../static/console.js");

/// Every route of the console.
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/keys") }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", post(sign_out))
        .merge(crate::keys::routes())
        .merge(crate::key::routes())
        .merge(crate::instances::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session_layer,
        ))
        .with_state(state)
}

async fn css() -> Response {
    static_file("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    static_file("text/javascript; charset=utf-8", JS)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Keeps a session for every browser (a new one when its cookie is missing, forged or
/// expired) and sets the security headers.
async fn session_layer(State(state): State<Shared>, mut request: Request, next: Next) -> Response {
    let existing = state.sessions.in_headers(request.headers());
    let (session, new) = match existing {
        Some(s) => (Some(s), false),
        None => (state.sessions.fresh(None).ok(), true),
    };
    let Some(session) = session else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness").into_response();
    };
    request.extensions_mut().insert(session.clone());
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if new
        && !headers.contains_key(header::SET_COOKIE)
        && let Ok(v) = HeaderValue::from_str(&state.sessions.set_cookie(&session))
    {
        headers.insert(header::SET_COOKIE, v);
    }
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ] {
        if name == "cache-control" && headers.contains_key(header::CACHE_CONTROL) {
            continue;
        }
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The signed-in caller of a page, with the session its forms belong to.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) principal: String,
    pub(crate) session: Session,
    /// Signed in on the dev sign-in page (a warning banner shows).
    pub(crate) dev: bool,
}

/// Why there is no caller.
#[derive(Debug)]
pub(crate) enum NoCaller {
    /// An identity header from a peer that is not a trusted proxy.
    Untrusted,
    /// Nobody signed in: to the sign-in page.
    SignIn,
    /// Nobody signed in and no sign-in page.
    Unauthenticated,
    Internal,
}

impl IntoResponse for NoCaller {
    fn into_response(self) -> Response {
        match self {
            NoCaller::SignIn => Redirect::to("/sign-in").into_response(),
            NoCaller::Untrusted => view::bare_page(
                StatusCode::FORBIDDEN,
                "Access refused",
                html! {
                    p role="alert" { "This request names a principal in an identity header, but it does not come from a trusted proxy. Nothing was done." }
                },
            ),
            NoCaller::Unauthenticated => view::bare_page(
                StatusCode::UNAUTHORIZED,
                "Not signed in",
                html! { p role="alert" { "No principal: sign in through the authenticating proxy." } },
            ),
            NoCaller::Internal => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
        }
    }
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = NoCaller;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, NoCaller> {
        let session = parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(NoCaller::Internal)?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<crate::Peer>>()
            .map(|c| c.0.0.ip());
        if let Some(proxy) = &state.proxy {
            let values: Vec<&HeaderValue> = parts
                .headers
                .get_all(proxy.header.as_str())
                .iter()
                .collect();
            if !values.is_empty() {
                let trusted = peer.is_some_and(|ip| proxy.trusts(ip));
                if !trusted || values.len() != 1 {
                    tracing::warn!(?peer, "identity header from an untrusted peer refused");
                    return Err(NoCaller::Untrusted);
                }
                let principal = values[0].to_str().map_err(|_| NoCaller::Untrusted)?.trim();
                if kms_types::Principal::parse_explained(principal).is_err() {
                    return Err(NoCaller::Untrusted);
                }
                return Ok(Caller {
                    principal: principal.to_string(),
                    session,
                    dev: false,
                });
            }
        }
        if state.dev_json.is_some() {
            return match session.principal.clone() {
                Some(principal) => Ok(Caller {
                    principal,
                    session,
                    dev: true,
                }),
                None => Err(NoCaller::SignIn),
            };
        }
        Err(NoCaller::Unauthenticated)
    }
}

/// A urlencoded form whose `csrf` field matched the session's token.
#[derive(Debug)]
pub(crate) struct Posted(pub(crate) Fields);

/// The fields of a form, in order; a name may repeat (checkboxes).
#[derive(Debug, Default)]
pub(crate) struct Fields(pub(crate) Vec<(String, String)>);

impl Fields {
    /// The first value of `name`, trimmed; empty when absent.
    pub(crate) fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .unwrap_or_default()
    }

    /// Every non-empty value of `name`.
    pub(crate) fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    /// Tag pairs from the fields `tag_key` and `tag_value`, in order; empty pairs skipped.
    pub(crate) fn tags(&self) -> Vec<kms_proto::kms::v1::Tag> {
        let keys: Vec<&str> = self
            .0
            .iter()
            .filter(|(k, _)| k == "tag_key")
            .map(|(_, v)| v.trim())
            .collect();
        let values: Vec<&str> = self
            .0
            .iter()
            .filter(|(k, _)| k == "tag_value")
            .map(|(_, v)| v.trim())
            .collect();
        keys.iter()
            .enumerate()
            .filter(|(_, k)| !k.is_empty())
            .map(|(i, k)| kms_proto::kms::v1::Tag {
                key: (*k).to_string(),
                value: values.get(i).copied().unwrap_or_default().to_string(),
            })
            .collect()
    }
}

/// A refused form: no or a wrong CSRF token, or a body that is not a form.
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        view::bare_page(
            StatusCode::FORBIDDEN,
            "Request refused",
            html! { p role="alert" { (self.0) } },
        )
    }
}

impl FromRequest<Shared> for Posted {
    type Rejection = Refused;

    async fn from_request(request: Request, state: &Shared) -> Result<Self, Refused> {
        let session = request.extensions().get::<Session>().cloned();
        let Form(fields) = Form::<Vec<(String, String)>>::from_request(request, state)
            .await
            .map_err(|_| Refused("The form could not be read."))?;
        let fields = Fields(fields);
        match session {
            Some(s) if csrf_matches(&s, fields.get("csrf")) => Ok(Posted(fields)),
            _ => Err(Refused(
                "The form's security token is missing or belongs to another session: reload the page and submit again.",
            )),
        }
    }
}

/// What a page handler answers: the page, or the API's error on a page.
pub(crate) type PageResult = Result<Response, Failure>;

/// A failed call shown to the person: reason code and message as the API gave them.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: ApiError,
    pub(crate) caller: Option<Caller>,
    pub(crate) back: Option<String>,
}

impl Failure {
    /// The error of a call made for `caller`, with a link back to `back`.
    pub(crate) fn new(
        caller: &Caller,
        back: impl Into<String>,
        error: impl Into<ApiError>,
    ) -> Self {
        Self {
            error: error.into(),
            caller: Some(caller.clone()),
            back: Some(back.into()),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        view::error_page(&self)
    }
}

/// A closure that turns a call's error into a [`Failure`] for `caller`.
pub(crate) fn fail<'a, E: Into<ApiError>>(
    caller: &'a Caller,
    back: &'a str,
) -> impl Fn(E) -> Failure + 'a {
    move |e| Failure::new(caller, back, e)
}

/// The principals a dev stack's `dev.json` names, for the sign-in page.
fn dev_principals(path: &std::path::Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(doc) = serde_json::from_str::<BTreeMap<String, serde_json::Value>>(&text) else {
        return Vec::new();
    };
    doc.iter()
        .filter(|(k, _)| k.ends_with("_principal"))
        .filter_map(|(k, v)| {
            let label = k.trim_end_matches("_principal").replace('_', " ");
            v.as_str().map(|p| (label, p.to_string()))
        })
        .collect()
}

async fn sign_in_page(State(state): State<Shared>, request: Request) -> Response {
    let Some(path) = &state.dev_json else {
        return NoCaller::Unauthenticated.into_response();
    };
    let session = request.extensions().get::<Session>().cloned();
    let csrf = session.map(|s| s.csrf).unwrap_or_default();
    let principals = dev_principals(path);
    view::bare_page(
        StatusCode::OK,
        "Sign in",
        html! {
            (view::dev_banner())
            form method="post" action="/sign-in" {
                input type="hidden" name="csrf" value=(csrf);
                fieldset {
                    legend { "Principal" }
                    @if principals.is_empty() {
                        p role="alert" { "No principals found in " (path.display()) "." }
                    }
                    @for (i, (label, principal)) in principals.iter().enumerate() {
                        div {
                            input type="radio" name="principal" id=(format!("principal-{i}")) value=(principal) checked[i == 0];
                            label for=(format!("principal-{i}")) { (label) ": " code { (principal) } }
                        }
                    }
                }
                button type="submit" { "Sign in" }
            }
        },
    )
}

async fn sign_in(State(state): State<Shared>, Posted(fields): Posted) -> Response {
    let Some(path) = &state.dev_json else {
        return NoCaller::Unauthenticated.into_response();
    };
    let chosen = fields.get("principal");
    if !dev_principals(path).iter().any(|(_, p)| p == chosen) {
        return Refused("That principal is not one of the dev stack's.").into_response();
    }
    match state.sessions.fresh(Some(chosen.to_string())) {
        Ok(session) => {
            let mut response = Redirect::to("/keys").into_response();
            if let Ok(v) = HeaderValue::from_str(&state.sessions.set_cookie(&session)) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            response
        }
        Err(_) => NoCaller::Internal.into_response(),
    }
}

async fn sign_out(State(state): State<Shared>, Posted(_): Posted) -> Response {
    match state.sessions.fresh(None) {
        Ok(session) => {
            let mut response = Redirect::to("/sign-in").into_response();
            if let Ok(v) = HeaderValue::from_str(&state.sessions.set_cookie(&session)) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            response
        }
        Err(_) => NoCaller::Internal.into_response(),
    }
}

/// A 303 to `to`, after a form did its work.
pub(crate) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// Markup to a 200 HTML answer.
pub(crate) fn page(markup: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}
