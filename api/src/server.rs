//! The router and the HTTP server.

use std::future::Future;
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, Request};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use groundwork_store::Store;
use tokio::net::TcpListener;

use crate::{ApiError, discovery, handlers, openapi};

/// Settings of the API server.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {}

/// The API's routes over a store.
pub fn router(store: Store) -> Router {
    Router::new()
        .route(
            "/version",
            get(|| async { axum::Json(discovery::version()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/api",
            get(|h: HeaderMap| async move { discovery::api(&h) }),
        )
        .route(
            "/api/{version}",
            get(|Path(v): Path<String>| async move { json(discovery::resource_list("", &v)) }),
        )
        .route(
            "/apis",
            get(|h: HeaderMap| async move { discovery::apis(&h) }),
        )
        .route(
            "/apis/{group}",
            get(|Path(g): Path<String>| async move { json(discovery::api_group(&g)) }),
        )
        .route(
            "/apis/{group}/{version}",
            get(|Path((g, v)): Path<(String, String)>| async move {
                json(discovery::resource_list(&g, &v))
            }),
        )
        .route(
            "/openapi/v2",
            get(|| async {
                ApiError::NotFound {
                    what: "OpenAPI v2 (use /openapi/v3)".into(),
                    kind: None,
                    name: "v2".into(),
                }
            }),
        )
        .route(
            "/openapi/v3",
            get(|| async { axum::Json(openapi::index()) }),
        )
        .route(
            "/openapi/v3/{*path}",
            get(|Path(p): Path<String>| async move { json(openapi::group_version(&p)) }),
        )
        .route(
            "/apis/{group}/{version}/{plural}",
            any(handlers::group_collection),
        )
        .route(
            "/apis/{group}/{version}/{plural}/{name}",
            any(handlers::group_item),
        )
        .route(
            "/apis/{group}/{version}/{plural}/{name}/{sub}",
            any(handlers::group_subresource),
        )
        .route("/api/v1/{plural}", any(handlers::core_collection))
        .route(
            "/api/v1/namespaces/{ns}/{plural}",
            any(handlers::core_ns_collection),
        )
        .route(
            "/api/v1/namespaces/{ns}/{plural}/{name}",
            any(handlers::core_ns_item),
        )
        .fallback(|req: Request| async move {
            ApiError::NotFound {
                what: format!(
                    "the server could not find the requested resource ({})",
                    req.uri().path()
                ),
                kind: None,
                name: String::new(),
            }
        })
        .layer(middleware::from_fn(log_request))
        .with_state(store)
}

fn json(r: Result<serde_json::Value, ApiError>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    if status >= 500 {
        tracing::warn!(%method, path, status, elapsed_ms = start.elapsed().as_millis() as u64, "request");
    } else {
        tracing::debug!(%method, path, status, elapsed_ms = start.elapsed().as_millis() as u64, "request");
    }
    resp
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(store))
        .with_graceful_shutdown(shutdown)
        .await
}
