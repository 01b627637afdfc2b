//! Webhook receivers: `POST /hooks/gitsource/NAME`, signed by Gitea (`X-Gitea-Signature`:
//! hex HMAC-SHA256 of the body) or GitHub (`X-Hub-Signature-256: sha256=HEX`, which Gitea
//! sends too) with the secret in the GitSource's `spec.webhookSecret` Credential. The body
//! is never trusted beyond its signature: a valid call only asks the GitSource controller to
//! fetch now (annotation `groundwork.dev/requested-at`), so a replay costs one fetch. No
//! client certificate: the signature is the authentication, checked in constant time on the
//! raw bytes before anything is parsed.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use groundwork_types::{REQUESTED_AT_ANNOTATION, kind_by_kind};
use serde_json::{Value, json};

use crate::objects::{Change, Part, Target};
use crate::query::Params;
use crate::server::AppState;

fn refuse(code: StatusCode, why: &str) -> Response {
    (
        code,
        axum::Json(
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "code": code.as_u16(), "message": why}),
        ),
    )
        .into_response()
}

/// The signature a request carries, as bytes: Gitea's header first, then GitHub's.
fn signature(headers: &HeaderMap) -> Option<Vec<u8>> {
    let hex = |s: &str| -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) {
            return None;
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect()
    };
    if let Some(v) = headers
        .get("x-gitea-signature")
        .and_then(|v| v.to_str().ok())
        && !v.is_empty()
    {
        return hex(v.trim());
    }
    let v = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())?;
    hex(v.trim().strip_prefix("sha256=")?)
}

pub(crate) async fn gitsource(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let kind = kind_by_kind("GitSource").expect("a served kind");
    let t = Target {
        kind,
        namespace: None,
    };
    // The same answer for an unknown GitSource, one without a secret and a bad signature:
    // the route tells a caller without the secret nothing.
    let unauthorized = || refuse(StatusCode::UNAUTHORIZED, "the signature does not verify");
    let Ok(Some(stored)) = st.store.get(&t.key(&name)) else {
        return unauthorized();
    };
    let secret_name = stored
        .object
        .pointer("/spec/webhookSecret")
        .and_then(Value::as_str)
        .map(str::to_string);
    let Some(secret_name) = secret_name else {
        return unauthorized();
    };
    let cred = Target {
        kind: kind_by_kind("Credential").expect("a served kind"),
        namespace: None,
    };
    let sealed = st
        .store
        .get(&cred.key(&secret_name))
        .ok()
        .flatten()
        .and_then(|c| {
            c.object
                .pointer("/spec/encryptedPassword")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let secret = match (sealed, crate::secrets::key()) {
        (Some(s), Some(k)) => k.open(&format!("credentials/{secret_name}"), &s).ok(),
        _ => None,
    };
    let Some(secret) = secret else {
        tracing::warn!(gitsource = %name, credential = %secret_name, "webhook refused: its secret Credential is missing or does not open");
        return unauthorized();
    };
    let Some(sig) = signature(&headers) else {
        tracing::warn!(gitsource = %name, "webhook refused: no signature");
        return unauthorized();
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    if ring::hmac::verify(&key, &body, &sig).is_err() {
        tracing::warn!(gitsource = %name, "webhook refused: wrong signature");
        return unauthorized();
    }
    let patch = json!({"metadata": {"annotations": {
        REQUESTED_AT_ANNOTATION: jiff::Timestamp::now().to_string()
    }}});
    match crate::objects::update(
        &st.store,
        &t,
        &name,
        Change::Merge(&patch),
        Part::Main,
        &Params::default(),
    )
    .await
    {
        Ok(_) => {
            tracing::info!(gitsource = %name, "webhook: fetch requested");
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({"gitsource": name, "fetch": "requested"})),
            )
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}
