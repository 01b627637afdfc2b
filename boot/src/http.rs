//! The HTTP side of booting: `/boot.ipxe` (what DHCP points iPXE at) chains to a script for
//! the machine's MAC, rendered by a [`ScriptSource`] (the API-backed one renders from the
//! Node's phase and Profile); everything else is a file under the root, sent with sendfile(2)
//! and Range support by [`crate::files`] (never loaded whole into memory).
//!
//! The agent API ([`agent_router`]) is separate: it is served over TLS, and every call but
//! the join is made with the machine's own certificate.

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

/// The machine calling the agent API, from its client certificate (`system:node:NAME` in
/// group `system:nodes`, issued by the cluster CA at join): the TLS layer in front of
/// [`agent_router`] sets it as a request extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The Node's name.
    pub node: String,
    /// The certificate's serial number (hex): only the Node's current ones are accepted.
    pub serial: String,
    /// Issued by a CA other than the one that issues now (a CA rotation is under way).
    pub stale_issuer: bool,
}

use groundwork_types::agent::{
    Heartbeat, HeartbeatReply, InstanceReports, InstanceSet, SecretValue, Task,
};
pub use groundwork_types::agent::{JoinReply, JoinRequest};
use groundwork_types::{Inventory, TaskReport};

/// Why the agent API refused a call: each variant is one HTTP status, its text the body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// 400: the request does not parse or cannot be acted on as sent.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid certificate or token: join (again).
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: authenticated, but for another machine.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no Node boots from this MAC, or the call is not served here.
    #[error("{0}")]
    NotFound(String),
    /// 409: the Node is not in the phase (or task) the call is for.
    #[error("{0}")]
    Conflict(String),
    /// 503: the API could not be read or written; try again.
    #[error("{0}")]
    Unavailable(String),
}

impl AgentError {
    pub fn status(&self) -> u16 {
        match self {
            AgentError::BadRequest(_) => 400,
            AgentError::Unauthenticated(_) => 401,
            AgentError::Forbidden(_) => 403,
            AgentError::NotFound(_) => 404,
            AgentError::Conflict(_) => 409,
            AgentError::Unavailable(_) => 503,
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let code = self.status();
        status_response(code, self.to_string())
    }
}

type Answer<T> = futures_lite::future::Boxed<Result<T, AgentError>>;

/// The agent API behind [`agent_router`]: joining, inventory, tasks, heartbeats, with the
/// request and answer types of `groundwork_types::agent`. Every call but `join` comes from an
/// authenticated machine (`who`).
pub trait InventorySink: Send + Sync {
    /// Exchanges a one-time join token and a certificate request for the machine's
    /// certificate.
    fn join(&self, mac: String, req: JoinRequest) -> Answer<JoinReply>;

    /// A new certificate for a new key, before the current one expires.
    fn renew(&self, _mac: String, _who: AgentIdentity, _csr: String) -> Answer<JoinReply> {
        Box::pin(async { Err(AgentError::NotFound("no renewals here\n".into())) })
    }

    /// The ramdisk's inventory (`POST /inventory`). Returns a short text for the agent.
    fn report(&self, mac: String, who: AgentIdentity, inventory: Inventory) -> Answer<String>;

    /// The ramdisk agent's next task (`GET /agent/next`).
    fn next_task(&self, _mac: String, _who: AgentIdentity) -> Answer<Task> {
        Box::pin(async { Err(AgentError::NotFound("no tasks here\n".into())) })
    }

    /// A report on a task (`POST /agent/report`).
    fn task_report(
        &self,
        _mac: String,
        _who: AgentIdentity,
        _report: TaskReport,
    ) -> Answer<String> {
        Box::pin(async { Err(AgentError::NotFound("no tasks here\n".into())) })
    }

    /// The installed system's heartbeat (`POST /agent/heartbeat`).
    fn heartbeat(
        &self,
        _mac: String,
        _who: AgentIdentity,
        _beat: Heartbeat,
    ) -> Answer<HeartbeatReply> {
        Box::pin(async { Err(AgentError::NotFound("no heartbeats here\n".into())) })
    }

    /// The machine's ServiceInstances (`GET /agent/instances`): at once when `known` is not
    /// the current version, else when they change or after `wait` seconds.
    fn instances(
        &self,
        _mac: String,
        _who: AgentIdentity,
        _known: Option<String>,
        _wait: u32,
    ) -> Answer<InstanceSet> {
        Box::pin(async { Err(AgentError::NotFound("no instances here\n".into())) })
    }

    /// The node agent's reports on its instances (`POST /agent/instances`).
    fn instance_reports(
        &self,
        _mac: String,
        _who: AgentIdentity,
        _reports: InstanceReports,
    ) -> Answer<String> {
        Box::pin(async { Err(AgentError::NotFound("no instances here\n".into())) })
    }

    /// Vault's transit seal (`PUT|POST /v1/transit/{encrypt|decrypt}/KEY`, the token in
    /// `X-Vault-Token`): an HTTP status and Vault-shaped JSON. No machine certificate: the
    /// token is the identity (a Vault member's transit client has none other).
    fn transit(
        &self,
        _op: String,
        _key: String,
        _token: Option<String>,
        _body: Vec<u8>,
    ) -> futures_lite::future::Boxed<(u16, serde_json::Value)> {
        Box::pin(async { (404, serde_json::json!({"errors": ["no transit here"]})) })
    }

    /// A serving certificate for one of the machine's instances (`POST
    /// /agent/certificate?instance=NAME`, the body a certificate request): the names are the
    /// instance's, never the request's.
    fn instance_certificate(
        &self,
        _mac: String,
        _who: AgentIdentity,
        _instance: String,
        _csr: String,
    ) -> Answer<String> {
        Box::pin(async { Err(AgentError::NotFound("no certificates here\n".into())) })
    }

    /// A Credential one of the machine's instances lists (`GET /agent/secret`).
    fn secret(
        &self,
        _mac: String,
        _who: AgentIdentity,
        _instance: String,
        _credential: String,
    ) -> Answer<SecretValue> {
        Box::pin(async { Err(AgentError::NotFound("no secrets here\n".into())) })
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

/// How a ramdisk joins the cluster: its one-time join token, the agent API's address and
/// the cluster CA's hash (it fetches `/ca.crt` over plain HTTP and checks it against the hash).
pub struct JoinParams<'a> {
    pub token: &'a str,
    pub agent: &'a str,
    pub ca_hash: &'a str,
}

/// The discovery script with the machine's join parameters on the kernel command line.
pub fn discovery_script_with_token(
    base: &str,
    kernel: &str,
    initrd: &str,
    cmdline: &str,
    mac: &str,
    join: Option<&JoinParams>,
) -> String {
    let cmdline = match join {
        Some(j) => format!(
            "{cmdline} groundwork.token={} groundwork.agent={} groundwork.ca={}",
            j.token, j.agent, j.ca_hash
        ),
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
    ca_pem: Option<Arc<str>>,
}

#[derive(serde::Deserialize)]
struct MacQuery {
    mac: Option<String>,
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

fn valid_mac(m: &str) -> bool {
    crate::dhcp::leases::parse_mac(m).is_some()
}

/// Paths answered by [`router`]; every other GET or HEAD is a file under the root.
fn is_route(path: &str) -> bool {
    matches!(path, "/boot.ipxe" | "/ipxe" | "/ca.crt")
}

fn status_response(code: u16, msg: String) -> Response {
    (
        axum::http::StatusCode::from_u16(code)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
        msg,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct AgentQuery {
    mac: String,
}

#[derive(serde::Deserialize)]
struct InstancesQuery {
    known: Option<String>,
    wait: Option<u32>,
}

#[derive(serde::Deserialize)]
struct CertificateQuery {
    instance: String,
}

#[derive(serde::Deserialize)]
struct SecretQuery {
    instance: String,
    credential: String,
}

/// A checked MAC and the authenticated machine, or the response that refuses the call.
fn agent_call(
    q: &AgentQuery,
    who: Option<&AgentIdentity>,
) -> Result<(String, AgentIdentity), AgentError> {
    if !valid_mac(&q.mac) {
        return Err(AgentError::BadRequest("mac: not a MAC address\n".into()));
    }
    let Some(who) = who else {
        return Err(AgentError::Unauthenticated(
            "no machine certificate: join first (POST /agent/join with the join token)\n".into(),
        ));
    };
    Ok((q.mac.to_ascii_lowercase(), who.clone()))
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, AgentError> {
    serde_json::from_slice(body)
        .map_err(|e| AgentError::BadRequest(format!("{what} does not decode: {e}\n")))
}

fn reply<T: serde::Serialize>(r: Result<T, AgentError>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn text(r: Result<String, AgentError>) -> Response {
    match r {
        Ok(t) => (axum::http::StatusCode::OK, t).into_response(),
        Err(e) => e.into_response(),
    }
}

type Who = Option<axum::Extension<AgentIdentity>>;
type Sink = State<Arc<dyn InventorySink>>;

/// The checked MAC, the caller and the decoded JSON body of an agent call, or its refusal.
fn checked<B: serde::de::DeserializeOwned>(
    q: &AgentQuery,
    who: &Who,
    body: &[u8],
    what: &str,
) -> Result<(String, AgentIdentity, B), AgentError> {
    let (mac, who) = agent_call(q, who.as_deref())?;
    Ok((mac, who, json_body(body, what)?))
}

/// The agent API, to be served over TLS (the caller's certificate becomes an
/// [`AgentIdentity`]): `POST /agent/join` (no certificate yet: the join token), `POST
/// /agent/renew`, `POST /inventory`, `GET /agent/next`, `POST /agent/report`, `POST
/// /agent/heartbeat`. Bodies are limited to 1 MiB.
pub fn agent_router(sink: Arc<dyn InventorySink>) -> Router {
    use axum::body::Bytes;
    use axum::routing::post;
    Router::new()
        .route(
            "/agent/join",
            post(
                |State(sink): Sink, Query(q): Query<AgentQuery>, body: Bytes| async move {
                    if !valid_mac(&q.mac) {
                        return AgentError::BadRequest("mac: not a MAC address\n".into())
                            .into_response();
                    }
                    match json_body::<JoinRequest>(&body, "join request") {
                        Ok(req) => reply(sink.join(q.mac.to_ascii_lowercase(), req).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            "/agent/renew",
            post(
                |State(sink): Sink, who: Who, Query(q): Query<AgentQuery>, body: Bytes| async move {
                    let csr = String::from_utf8(body.to_vec())
                        .map_err(|_| AgentError::BadRequest("csr: not text\n".into()));
                    match agent_call(&q, who.as_deref()).and_then(|(m, w)| Ok((m, w, csr?))) {
                        Ok((mac, who, csr)) => reply(sink.renew(mac, who, csr).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            "/inventory",
            post(
                |State(sink): Sink, who: Who, Query(q): Query<AgentQuery>, body: Bytes| async move {
                    match checked(&q, &who, &body, "inventory") {
                        Ok((mac, who, inv)) => text(sink.report(mac, who, inv).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            "/agent/next",
            get(
                |State(sink): Sink, who: Who, Query(q): Query<AgentQuery>| async move {
                    match agent_call(&q, who.as_deref()) {
                        Ok((mac, who)) => reply(sink.next_task(mac, who).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            "/agent/report",
            post(
                |State(sink): Sink, who: Who, Query(q): Query<AgentQuery>, body: Bytes| async move {
                    match checked(&q, &who, &body, "report") {
                        Ok((mac, who, r)) => text(sink.task_report(mac, who, r).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            "/agent/heartbeat",
            post(
                |State(sink): Sink, who: Who, Query(q): Query<AgentQuery>, body: Bytes| async move {
                    match checked(&q, &who, &body, "heartbeat") {
                        Ok((mac, who, b)) => reply(sink.heartbeat(mac, who, b).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            "/agent/instances",
            get(
                |State(sink): Sink,
                 who: Who,
                 Query(q): Query<AgentQuery>,
                 Query(i): Query<InstancesQuery>| async move {
                    match agent_call(&q, who.as_deref()) {
                        Ok((mac, who)) => reply(
                            sink.instances(mac, who, i.known, i.wait.unwrap_or(0).min(60))
                                .await,
                        ),
                        Err(e) => e.into_response(),
                    }
                },
            )
            .post(
                |State(sink): Sink, who: Who, Query(q): Query<AgentQuery>, body: Bytes| async move {
                    match checked(&q, &who, &body, "instance reports") {
                        Ok((mac, who, r)) => text(sink.instance_reports(mac, who, r).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            "/agent/secret",
            get(
                |State(sink): Sink,
                 who: Who,
                 Query(q): Query<AgentQuery>,
                 Query(s): Query<SecretQuery>| async move {
                    match agent_call(&q, who.as_deref()) {
                        Ok((mac, who)) => {
                            reply(sink.secret(mac, who, s.instance, s.credential).await)
                        }
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            "/agent/certificate",
            post(
                |State(sink): Sink,
                 who: Who,
                 Query(q): Query<AgentQuery>,
                 Query(i): Query<CertificateQuery>,
                 body: Bytes| async move {
                    let csr = String::from_utf8(body.to_vec())
                        .map_err(|_| AgentError::BadRequest("csr: not text\n".into()));
                    match agent_call(&q, who.as_deref()).and_then(|(m, w)| Ok((m, w, csr?))) {
                        Ok((mac, who, csr)) => {
                            text(sink.instance_certificate(mac, who, i.instance, csr).await)
                        }
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            "/v1/transit/{op}/{key}",
            axum::routing::put(transit).post(transit),
        )
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .with_state(sink)
}

async fn transit(
    State(sink): Sink,
    axum::extract::Path((op, key)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let token = headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (code, v) = sink.transit(op, key, token, body.to_vec()).await;
    (
        axum::http::StatusCode::from_u16(code)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(v),
    )
        .into_response()
}

/// The boot HTTP routes: `/boot.ipxe`, `/ipxe?mac=..` and `/ca.crt` (the cluster CA, which
/// a ramdisk checks against the hash on its command line).
pub fn router(scripts: Arc<dyn ScriptSource>, ca_pem: Option<Arc<str>>) -> Router {
    Router::new()
        .route(
            "/ca.crt",
            get(|State(st): State<AppState>| async move {
                match st.ca_pem {
                    Some(pem) => pem.to_string().into_response(),
                    None => status_response(404, "no cluster CA here\n".into()),
                }
            }),
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
        .with_state(AppState { scripts, ca_pem })
}

/// Serves the boot HTTP routes on `listener` until `shutdown` completes.
///
/// Connections are accepted here and served by one event loop per core: a current-thread
/// runtime on its own thread, as nginx's worker processes, so a file transfer (most of the
/// bytes) never has its wake-ups cross threads or its task stolen. What hyper answers (iPXE
/// scripts, `/ca.crt`, errors) goes back to the caller's runtime, where the script source
/// and its API client live.
pub async fn serve(
    listener: tokio::net::TcpListener,
    root: &Path,
    scripts: Arc<dyn ScriptSource>,
    ca_pem: Option<Arc<str>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let root = std::sync::Arc::new(std::fs::canonicalize(root)?);
    let app = router(scripts, ca_pem);
    let main = tokio::runtime::Handle::current();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    let mut queues = Vec::with_capacity(workers);
    for i in 0..workers {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (root, app, main) = (root.clone(), app.clone(), main.clone());
        std::thread::Builder::new()
            .name(format!("boot-http-{i}"))
            .spawn(move || rt.block_on(worker(rx, root, app, main)))?;
        queues.push(tx);
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next = 0;
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
            // Dropping the queues ends the workers.
            _ = &mut shutdown => return Ok(()),
        };
        // Without TCP_NODELAY, a response written as head then body waits out the client's
        // delayed ACK (40 ms) on every keep-alive request.
        let _ = tcp.set_nodelay(true);
        match tcp.into_std() {
            Ok(std) => {
                if queues[next].send(std).is_err() {
                    tracing::error!(worker = next, "boot HTTP worker gone");
                }
                next = (next + 1) % queues.len();
            }
            Err(e) => tracing::warn!(error = %e, "boot HTTP connection lost before serving"),
        }
    }
}

/// One worker's event loop: serves the connections it is handed until the queue closes.
async fn worker(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    root: Arc<std::path::PathBuf>,
    app: Router,
    main: tokio::runtime::Handle,
) {
    while let Some(std) = rx.recv().await {
        let tcp = match tokio::net::TcpStream::from_std(std) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "boot HTTP connection not registered");
                continue;
            }
        };
        let (root, app, main) = (root.clone(), app.clone(), main.clone());
        tokio::spawn(async move {
            crate::files::connection(tcp, &root, is_route, |io| async move {
                // Not a file: hyper answers it, on the caller's runtime.
                let (prefix, std) = match io.into_std() {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::debug!(error = %e, "boot HTTP connection lost");
                        return;
                    }
                };
                main.spawn(async move {
                    let io = match crate::files::Prefixed::from_std(prefix, std) {
                        Ok(io) => io,
                        Err(e) => {
                            tracing::debug!(error = %e, "boot HTTP connection lost");
                            return;
                        }
                    };
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let io = hyper_util::rt::TokioIo::new(io);
                    // One request, then close: the next request on a kept-alive connection
                    // would otherwise stay with hyper, which cannot sendfile.
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(io, svc)
                        .await
                    {
                        tracing::debug!(error = %e, "boot HTTP connection ended");
                    }
                });
            })
            .await
        });
    }
}
