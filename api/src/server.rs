//! The router and the HTTP server.

use std::future::Future;
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use groundwork_observe::{ApiLabels, LogHub, ResourceLabels, metrics};
use groundwork_store::Store;
use tokio::net::TcpListener;

use crate::{ApiError, discovery, handlers, openapi};

/// Settings of the API server.
#[derive(Clone, Default)]
pub struct ServerConfig {
    /// The log hub of the controllers running in this process; serves `.../NAME/log`.
    pub logs: Option<LogHub>,
    /// Authentication, authorization and audit; `None` trusts every caller (in-process tests,
    /// `--insecure-plain-http`).
    pub auth: Option<std::sync::Arc<crate::auth::Auth>>,
}

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Store,
    pub logs: Option<LogHub>,
}

/// The API's routes over a store, with no controller logs.
pub fn router(store: Store) -> Router {
    router_with(store, ServerConfig::default())
}

/// The API's routes over a store.
pub fn router_with(store: Store, cfg: ServerConfig) -> Router {
    let state = AppState {
        store,
        logs: cfg.logs,
    };
    let router = routes();
    // Outermost first: metrics see every answer, 401 and 403 included.
    let router = match cfg.auth {
        Some(auth) => router.layer(middleware::from_fn_with_state(
            auth,
            crate::auth::middleware,
        )),
        None => router,
    };
    router
        .layer(middleware::from_fn(observe_request))
        .with_state(state)
}

fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/version",
            get(|| async { axum::Json(discovery::version()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(render_metrics))
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
            get(|| async { axum::Json(discovery::openapi_v2()) }),
        )
        .route(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            get(|| async { json(discovery::crds(None)) }),
        )
        .route(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
            get(|Path(n): Path<String>| async move { json(discovery::crds(Some(&n))) }),
        )
        .route(
            "/openapi/v3",
            get(|| async { axum::Json(openapi::index()) }),
        )
        .route(
            "/openapi/v3/{*path}",
            get(|Path(p): Path<String>| async move { json(openapi::group_version(&p)) }),
        )
        .merge(crate::ui::routes())
        .route(
            "/hooks/gitsource/{name}",
            axum::routing::post(crate::hooks::gitsource),
        )
        .route("/apis/{group}/{version}/{plural}", any(handlers::resource))
        .route(
            "/apis/{group}/{version}/{plural}/{name}",
            any(handlers::resource),
        )
        .route(
            "/apis/{group}/{version}/{plural}/{name}/{sub}",
            any(handlers::resource),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}",
            any(handlers::resource),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}",
            any(handlers::resource),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/{sub}",
            any(handlers::resource),
        )
        .route("/api/v1/{plural}", any(handlers::resource))
        .route("/api/v1/namespaces/{ns}/{plural}", any(handlers::resource))
        .route(
            "/api/v1/namespaces/{ns}/{plural}/{name}",
            any(handlers::resource),
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
}

fn json(r: Result<serde_json::Value, ApiError>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn render_metrics(State(st): State<AppState>) -> Response {
    let m = metrics();
    m.store_revision.set(st.store.revision() as i64);
    let mut resp = m.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(groundwork_observe::OPENMETRICS_CONTENT_TYPE),
    );
    resp
}

/// The Kubernetes verb and the resource (`nodes`, `nodes/status`) of a request, as the
/// apiserver's own request metrics name them; `("get", "")` for non-resource paths.
pub(crate) fn classify(method: &Method, path: &str, query: Option<&str>) -> (&'static str, String) {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match segs.first() {
        Some(&"apis") if segs.len() >= 4 => &segs[3..],
        Some(&"api") if segs.len() >= 3 => &segs[2..],
        _ => &[],
    };
    let rest = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        &rest[2..]
    } else {
        rest
    };
    if rest.is_empty() {
        return (
            if *method == Method::GET {
                "get"
            } else {
                "other"
            },
            String::new(),
        );
    }
    let named = rest.len() >= 2;
    let resource = match rest.get(2) {
        Some(sub) => format!("{}/{sub}", rest[0]),
        None => rest[0].to_string(),
    };
    // Reading a Credential's password is using it: RBAC's `use` verb, which `view` and
    // `edit` do not have.
    if *method == Method::GET && named && resource == "credentials/reveal" {
        return ("use", "credentials".to_string());
    }
    let watch = crate::query::is_watch(query);
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

async fn observe_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (verb, resource) = classify(&method, &path, req.uri().query());
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    if path != "/metrics" {
        let m = metrics();
        m.api_requests
            .get_or_create(&ApiLabels {
                verb: verb.into(),
                resource: resource.clone(),
                code: status,
            })
            .inc();
        m.api_request_duration
            .get_or_create(&ResourceLabels {
                verb: verb.into(),
                resource,
            })
            .observe(elapsed.as_secs_f64());
    }
    let elapsed_ms = elapsed.as_millis() as u64;
    if status >= 500 {
        tracing::warn!(%method, path, status, elapsed_ms, "request");
    } else {
        tracing::debug!(%method, path, status, elapsed_ms, "request");
    }
    resp
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Streamed responses (watches) are written in pieces: no Nagle delay between them.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router_with(store, cfg))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves the API over TLS on `listener` until `shutdown` completes.
pub async fn serve_tls(
    listener: TcpListener,
    store: Store,
    cfg: ServerConfig,
    tls: std::sync::Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::tls::serve(listener, router_with(store, cfg), tls, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_like_the_apiserver_does() {
        let c = |m: Method, p: &str, q: Option<&str>| {
            let (v, r) = classify(&m, p, q);
            format!("{v} {r}")
        };
        assert_eq!(
            c(Method::GET, "/apis/groundwork.dev/v1alpha1/nodes", None),
            "list nodes"
        );
        assert_eq!(
            c(
                Method::GET,
                "/apis/groundwork.dev/v1alpha1/nodes",
                Some("watch=true&resourceVersion=5")
            ),
            "watch nodes"
        );
        assert_eq!(
            c(
                Method::PATCH,
                "/apis/groundwork.dev/v1alpha1/nodes/n1/status",
                None
            ),
            "patch nodes/status"
        );
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/default/events", None),
            "list events"
        );
        assert_eq!(
            c(Method::DELETE, "/api/v1/namespaces/default/events/e1", None),
            "delete events"
        );
        assert_eq!(
            c(
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/gw/leases/rack",
                None
            ),
            "update leases"
        );
        assert_eq!(
            c(Method::DELETE, "/apis/groundwork.dev/v1alpha1/racks", None),
            "deletecollection racks"
        );
        assert_eq!(c(Method::GET, "/apis", None), "get ");
    }
}
