//! The HTTP side of booting: `/boot.ipxe` (what DHCP points iPXE at) chains to a script for
//! the machine's MAC, rendered by a [`ScriptSource`] (the API-backed one renders from the
//! Node's phase and Profile); everything else is a file under the root, sent with sendfile(2)
//! and Range support by [`crate::files`] (never loaded whole into memory).

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Renders the iPXE script for a machine.
pub trait ScriptSource: Send + Sync {
    /// `mac` as iPXE sends it (`52:54:00:12:34:56`), `base` the URL the machine reached us at.
    fn script(&self, mac: &str, base: &str) -> String;
}

/// Where the ramdisk agent's inventory reports go (`POST /inventory?mac=..&token=..`).
pub trait InventorySink: Send + Sync {
    /// Returns a short text for the agent, or an HTTP status and message.
    fn report(
        &self,
        mac: String,
        token: String,
        inventory: serde_json::Value,
    ) -> futures_lite::future::Boxed<Result<String, (u16, String)>>;

    /// The ramdisk agent's next task (`GET /agent/next`), as JSON.
    fn next_task(
        &self,
        _mac: String,
        _token: String,
        _base: String,
    ) -> futures_lite::future::Boxed<Result<serde_json::Value, (u16, String)>> {
        Box::pin(async { Err((404, "no tasks here\n".to_string())) })
    }

    /// A report on a task (`POST /agent/report`).
    fn task_report(
        &self,
        _mac: String,
        _token: String,
        _report: serde_json::Value,
    ) -> futures_lite::future::Boxed<Result<String, (u16, String)>> {
        Box::pin(async { Err((404, "no tasks here\n".to_string())) })
    }

    /// The installed system's heartbeat (`POST /agent/heartbeat`); answers JSON.
    fn heartbeat(
        &self,
        _mac: String,
        _token: String,
        _beat: serde_json::Value,
    ) -> futures_lite::future::Boxed<Result<serde_json::Value, (u16, String)>> {
        Box::pin(async { Err((404, "no heartbeats here\n".to_string())) })
    }
}

/// The script every machine gets when nothing is known about it: the discovery ramdisk.
pub struct StaticScripts {
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
}

impl ScriptSource for StaticScripts {
    fn script(&self, mac: &str, base: &str) -> String {
        discovery_script(base, &self.kernel, &self.initrd, &self.cmdline, mac)
    }
}

/// Boots the discovery/install ramdisk. `kernel`/`initrd` are file names under the root (or
/// absolute URLs).
pub fn discovery_script(
    base: &str,
    kernel: &str,
    initrd: &str,
    cmdline: &str,
    mac: &str,
) -> String {
    discovery_script_with_token(base, kernel, initrd, cmdline, mac, None)
}

/// The discovery script with the machine's boot token on the kernel command line.
pub fn discovery_script_with_token(
    base: &str,
    kernel: &str,
    initrd: &str,
    cmdline: &str,
    mac: &str,
    token: Option<&str>,
) -> String {
    let cmdline = match token {
        Some(t) => format!("{cmdline} groundwork.token={t}"),
        None => cmdline.to_string(),
    };
    let url = |f: &str| {
        if f.starts_with("http://") || f.starts_with("https://") {
            f.to_string()
        } else {
            format!("{base}/{}", f.trim_start_matches('/'))
        }
    };
    format!(
        "#!ipxe\n# groundwork: discovery for {mac}\nkernel {} initrd=initrd.img {cmdline} groundwork.mac={mac} groundwork.url={base}\ninitrd --name initrd.img {}\nboot || goto failed\n:failed\necho boot failed; retrying in 10 s\nsleep 10\nchain {base}/boot.ipxe\n",
        url(kernel),
        url(initrd)
    )
}

/// Boots from the first local disk (installed machines).
pub fn local_disk_script(mac: &str) -> String {
    format!(
        "#!ipxe\n# groundwork: {mac} is installed: boot from local disk\nsanboot --no-describe --drive 0x80 || exit\n"
    )
}

#[derive(Clone)]
struct AppState {
    scripts: Arc<dyn ScriptSource>,
    sink: Option<Arc<dyn InventorySink>>,
}

#[derive(serde::Deserialize)]
struct ReportQuery {
    mac: String,
    token: String,
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn ipxe(text: String) -> Response {
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(serde::Deserialize)]
struct MacQuery {
    mac: Option<String>,
}

fn valid_mac(m: &str) -> bool {
    crate::dhcp::leases::parse_mac(m).is_some()
}

/// Paths answered by [`router`]; every other GET or HEAD is a file under the root.
fn is_route(path: &str) -> bool {
    matches!(
        path,
        "/boot.ipxe"
            | "/ipxe"
            | "/inventory"
            | "/agent/next"
            | "/agent/report"
            | "/agent/heartbeat"
    )
}

fn status_response(code: u16, msg: String) -> Response {
    (
        axum::http::StatusCode::from_u16(code)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
        msg,
    )
        .into_response()
}

/// The sink and a checked MAC, or the response that refuses the call.
fn agent_call(
    st: &AppState,
    q: &ReportQuery,
) -> Result<(Arc<dyn InventorySink>, String), (u16, String)> {
    let Some(sink) = st.sink.clone() else {
        return Err((404, "no agent API here\n".into()));
    };
    if !valid_mac(&q.mac) {
        return Err((400, "mac: not a MAC address\n".into()));
    }
    Ok((sink, q.mac.to_ascii_lowercase()))
}

fn json_body(body: &[u8], what: &str) -> Result<serde_json::Value, (u16, String)> {
    serde_json::from_slice(body).map_err(|e| (400, format!("{what}: {e}\n")))
}

/// `/agent/next`, `/agent/report`, `/agent/heartbeat`.
fn agent_routes(r: Router<AppState>) -> Router<AppState> {
    r.route(
        "/agent/next",
        get(
            |State(st): State<AppState>, headers: HeaderMap, Query(q): Query<ReportQuery>| async move {
                let (sink, mac) = match agent_call(&st, &q) {
                    Ok(v) => v,
                    Err((c, m)) => return status_response(c, m),
                };
                match sink.next_task(mac, q.token, base_url(&headers)).await {
                    Ok(v) => axum::Json(v).into_response(),
                    Err((code, msg)) => status_response(code, msg),
                }
            },
        ),
    )
    .route(
        "/agent/report",
        axum::routing::post(
            |State(st): State<AppState>, Query(q): Query<ReportQuery>, body: axum::body::Bytes| async move {
                let (sink, mac) = match agent_call(&st, &q) {
                    Ok(v) => v,
                    Err((c, m)) => return status_response(c, m),
                };
                let v = match json_body(&body, "report") {
                    Ok(v) => v,
                    Err((c, m)) => return status_response(c, m),
                };
                match sink.task_report(mac, q.token, v).await {
                    Ok(t) => (axum::http::StatusCode::OK, t).into_response(),
                    Err((code, msg)) => status_response(code, msg),
                }
            },
        ),
    )
    .route(
        "/agent/heartbeat",
        axum::routing::post(
            |State(st): State<AppState>, Query(q): Query<ReportQuery>, body: axum::body::Bytes| async move {
                let (sink, mac) = match agent_call(&st, &q) {
                    Ok(v) => v,
                    Err((c, m)) => return status_response(c, m),
                };
                let v = match json_body(&body, "heartbeat") {
                    Ok(v) => v,
                    Err((c, m)) => return status_response(c, m),
                };
                match sink.heartbeat(mac, q.token, v).await {
                    Ok(v) => axum::Json(v).into_response(),
                    Err((code, msg)) => status_response(code, msg),
                }
            },
        ),
    )
}

/// The boot HTTP routes; inventory reports go to `sink` (404 without one).
pub fn router(scripts: Arc<dyn ScriptSource>, sink: Option<Arc<dyn InventorySink>>) -> Router {
    agent_routes(Router::new())
        .route(
            "/inventory",
            axum::routing::post(
                |State(st): State<AppState>,
                 Query(q): Query<ReportQuery>,
                 body: axum::body::Bytes| async move {
                    let Some(sink) = st.sink.clone() else {
                        return (axum::http::StatusCode::NOT_FOUND, "no inventory here\n".to_string())
                            .into_response();
                    };
                    if !valid_mac(&q.mac) {
                        return (axum::http::StatusCode::BAD_REQUEST, "bad mac\n".to_string()).into_response();
                    }
                    let inv: serde_json::Value = match serde_json::from_slice(&body) {
                        Ok(v) => v,
                        Err(e) => {
                            return (axum::http::StatusCode::BAD_REQUEST, format!("inventory: {e}\n"))
                                .into_response();
                        }
                    };
                    match sink.report(q.mac.to_ascii_lowercase(), q.token, inv).await {
                        Ok(t) => (axum::http::StatusCode::OK, t).into_response(),
                        Err((code, msg)) => (
                            axum::http::StatusCode::from_u16(code)
                                .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                            msg,
                        )
                            .into_response(),
                    }
                },
            ),
        )
        .route(
            "/boot.ipxe",
            get(|headers: HeaderMap| async move {
                let base = base_url(&headers);
                ipxe(format!("#!ipxe\nchain {base}/ipxe?mac=${{net0/mac}}\n"))
            }),
        )
        .route(
            "/ipxe",
            get(
                |State(st): State<AppState>, headers: HeaderMap, Query(q): Query<MacQuery>| async move {
                    let base = base_url(&headers);
                    match q.mac.as_deref().filter(|m| valid_mac(m)) {
                        Some(mac) => {
                            let mac = mac.to_ascii_lowercase();
                            tracing::info!(%mac, "iPXE script served");
                            ipxe(st.scripts.script(&mac, &base))
                        }
                        None => (
                            axum::http::StatusCode::BAD_REQUEST,
                            "mac=XX:XX:XX:XX:XX:XX is required\n",
                        )
                            .into_response(),
                    }
                },
            ),
        )
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "not found\n") })
        .with_state(AppState { scripts, sink })
}

/// Serves the boot HTTP routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    root: &Path,
    scripts: Arc<dyn ScriptSource>,
    sink: Option<Arc<dyn InventorySink>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let root = std::sync::Arc::new(std::fs::canonicalize(root)?);
    let app = router(scripts, sink);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, typically: wait rather than spin.
                    tracing::warn!(error = %e, "boot HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        // Without TCP_NODELAY, a response written as head then body waits out the client's
        // delayed ACK (40 ms) on every keep-alive request.
        let _ = tcp.set_nodelay(true);
        let (root, app) = (root.clone(), app.clone());
        tokio::spawn(async move {
            crate::files::connection(tcp, &root, is_route, |io| async move {
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let io = hyper_util::rt::TokioIo::new(io);
                // One request, then close: the next request on a kept-alive connection would
                // otherwise stay with hyper, which cannot sendfile.
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(io, svc)
                    .await
                {
                    tracing::debug!(error = %e, "boot HTTP connection ended");
                }
            })
            .await
        });
    }
}
