//! API errors, rendered as Kubernetes `Status` objects (what kubectl and kube-rs parse).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use groundwork_store::StoreError;
use groundwork_types::{FieldError, KindInfo};
use serde_json::{Value, json};

/// An error the API returns to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{what} not found")]
    NotFound {
        what: String,
        kind: Option<&'static KindInfo>,
        name: String,
    },
    #[error("{what} already exists")]
    AlreadyExists {
        what: String,
        kind: &'static KindInfo,
        name: String,
    },
    #[error("Operation cannot be fulfilled on {what}: {detail}")]
    Conflict {
        what: String,
        kind: &'static KindInfo,
        name: String,
        detail: String,
    },
    #[error("{} {name:?} is invalid: {}", kind_label(kind), causes.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", "))]
    Invalid {
        kind: &'static KindInfo,
        name: String,
        causes: Vec<FieldError>,
    },
    /// Server-side apply found fields another manager owns with other values.
    #[error("Apply failed with {} conflict{}: {}", conflicts.len(), if conflicts.len() == 1 { "" } else { "s" }, conflicts.iter().map(|c| format!("conflict with {:?} using {}: {}", c.manager, kind.api_version(), c.field)).collect::<Vec<_>>().join("; "))]
    ApplyConflict {
        kind: &'static KindInfo,
        name: String,
        conflicts: Vec<crate::ssa::Conflict>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Forbidden(String),
}

fn kind_label(k: &KindInfo) -> String {
    if k.group.is_empty() {
        k.kind.to_string()
    } else {
        format!("{}.{}", k.kind, k.group)
    }
}

impl ApiError {
    pub fn not_found(kind: &'static KindInfo, name: &str) -> Self {
        ApiError::NotFound {
            what: format!("{} {name:?}", kind.qualified_plural()),
            kind: Some(kind),
            name: name.to_string(),
        }
    }
    pub fn conflict(kind: &'static KindInfo, name: &str, detail: impl Into<String>) -> Self {
        ApiError::Conflict {
            what: format!("{} {name:?}", kind.qualified_plural()),
            kind,
            name: name.to_string(),
            detail: detail.into(),
        }
    }
    pub fn invalid(kind: &'static KindInfo, name: &str, causes: Vec<FieldError>) -> Self {
        ApiError::Invalid {
            kind,
            name: name.to_string(),
            causes,
        }
    }
    pub fn invalid_one(kind: &'static KindInfo, name: &str, cause: FieldError) -> Self {
        Self::invalid(kind, name, vec![cause])
    }

    /// Maps a store error about `kind`/`name`.
    pub fn from_store(e: StoreError, kind: &'static KindInfo, name: &str) -> Self {
        match e {
            StoreError::Conflict { .. } => Self::conflict(
                kind,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ),
            StoreError::NotFound { .. } => Self::not_found(kind, name),
            StoreError::AlreadyExists { .. } => ApiError::AlreadyExists {
                what: format!("{} {name:?}", kind.qualified_plural()),
                kind,
                name: name.to_string(),
            },
            StoreError::Compacted {
                requested,
                compacted,
            } => ApiError::Expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::TooLarge { size, limit, .. } => Self::invalid_one(
                kind,
                name,
                FieldError::invalid(
                    "",
                    format!("the object is {size} bytes as JSON, more than the limit of {limit}"),
                ),
            ),
            e @ (StoreError::Storage(_) | StoreError::Closed) => ApiError::Internal(e.to_string()),
        }
    }

    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::ApplyConflict { .. } => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Expired(_) => StatusCode::GONE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::Expired(_) => "Expired",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::Internal(_) => "InternalError",
            ApiError::Unavailable(_) => "ServiceUnavailable",
        }
    }

    /// The Kubernetes `Status` object for this error.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.to_string(), "reason": self.reason(), "code": self.code().as_u16(),
        });
        let details = match self {
            ApiError::NotFound { kind, name, .. } => {
                kind.map(|k| json!({"name": name, "group": k.group, "kind": k.plural}))
            }
            ApiError::AlreadyExists { kind, name, .. } | ApiError::Conflict { kind, name, .. } => {
                Some(json!({"name": name, "group": kind.group, "kind": kind.plural}))
            }
            ApiError::ApplyConflict {
                kind,
                name,
                conflicts,
            } => Some(json!({
                "name": name, "group": kind.group, "kind": kind.plural,
                "causes": conflicts.iter().map(|c| json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with {:?} using {}", c.manager, kind.api_version()),
                    "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            ApiError::Invalid { kind, name, causes } => Some(json!({
                "name": name, "group": kind.group, "kind": kind.kind,
                "causes": causes.iter().map(|c| json!({
                    "reason": c.kind.reason(), "message": c.detail(), "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            _ => None,
        };
        if let Some(d) = details {
            s["details"] = d;
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, ApiError::Internal(_)) {
            tracing::error!(error = %self, "internal error");
        }
        (self.code(), axum::Json(self.status())).into_response()
    }
}
