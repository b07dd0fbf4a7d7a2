//! The HTTP edge: `GET /healthz`, and every other request read as a signed KMS OpenAPI call,
//! verified, run as its action, and answered in JSON with a `RequestId`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::actions::{self, Call};
use crate::auth::{Incoming, Verifier};
use crate::error::ApiError;
use crate::planes::Planes;

/// The API version every action belongs to.
pub const API_VERSION: &str = "2016-01-20";

/// What every request needs.
#[derive(Debug)]
pub struct AppState {
    /// Signature checks.
    pub verifier: Verifier,
    /// The planes.
    pub planes: Planes,
    /// The region `DescribeRegions` answers.
    pub region: String,
    /// `HostId` of error answers.
    pub host_id: String,
}

/// A JSON body with the reference's content type.
pub fn json_body(value: &Value) -> Response {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Body::from(bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=utf-8"),
    );
    response
}

/// The router: health, and the API on every other path and method.
pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .fallback(handle)
        .with_state(state)
}

async fn handle(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string().to_uppercase();
    let incoming = Incoming {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or_default(),
        headers: &headers,
        body: &body,
    };
    let outcome = async {
        let verified = state.verifier.verify(&incoming).await?;
        if verified.version != API_VERSION {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidVersion",
                format!(
                    "Specified parameter Version {:?} is not valid; this service speaks {API_VERSION}.",
                    verified.version
                ),
            ));
        }
        let call = Call {
            planes: &state.planes,
            principal: &verified.principal,
            params: &verified.params,
            region: &state.region,
        };
        let result = actions::run(&call, &verified.action).await;
        tracing::info!(
            request_id = %request_id,
            action = %verified.action,
            scheme = ?verified.scheme,
            principal = %verified.principal,
            outcome = %result.as_ref().map_or_else(|e| e.code.as_str(), |_| "OK"),
            "request"
        );
        result
    };
    match outcome.await {
        Ok(mut answer) => {
            answer.insert("RequestId".into(), Value::String(request_id.clone()));
            let mut response = json_body(&Value::Object(answer));
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert("x-acs-request-id", v);
            }
            response
        }
        Err(e) => {
            if e.status.is_client_error() && e.code != "SignatureDoesNotMatch" {
                tracing::info!(request_id = %request_id, code = %e.code, "refused");
            } else if e.code == "SignatureDoesNotMatch" {
                tracing::info!(request_id = %request_id, "signature does not match");
            }
            e.into_response_with(&request_id, &state.host_id)
        }
    }
}
