//! Who is calling, and may they: authentication (client certificates from the cluster CA: CN
//! is the user, O the group; bearer tokens from a token file), authorization (RBAC: Kubernetes'
//! ClusterRole/ClusterRoleBinding objects plus built-in roles; the group `system:masters` may
//! do everything; machine identities `system:node:NAME` only their own Node), and the audit
//! log (every write and every refusal, as JSON lines).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use groundwork_store::Store;
use serde_json::{Value, json};

use crate::tls::PeerCert;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

pub use groundwork_pki::{MASTERS, NODES_GROUP};
/// The audience of signed tokens the API accepts.
pub const API_AUDIENCE: &str = "api";

/// What a request asks to do, in RBAC's terms.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes {
    pub verb: String,
    /// Empty for the core group.
    pub group: String,
    /// `nodes`, or `nodes/status` with a subresource.
    pub resource: String,
    pub namespace: String,
    pub name: String,
    /// Set for paths that are not resources (`/metrics`, `/apis`, ...).
    pub path: Option<String>,
}

/// Parses a request into RBAC attributes.
pub fn attributes(method: &Method, path: &str, query: Option<&str>) -> Attributes {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest): (&str, &[&str]) = match segs.first() {
        Some(&"apis") if segs.len() >= 4 => (segs[1], &segs[3..]),
        Some(&"api") if segs.len() >= 3 => ("", &segs[2..]),
        _ => {
            return Attributes {
                verb: method.as_str().to_ascii_lowercase(),
                path: Some(path.to_string()),
                ..Default::default()
            };
        }
    };
    let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (rest[1], &rest[2..])
    } else {
        ("", rest)
    };
    let (verb, resource) = crate::server::classify(method, path, query);
    let _ = rest;
    let name = rest.get(1).copied().unwrap_or("");
    Attributes {
        verb: verb.to_string(),
        group: group.to_string(),
        resource,
        namespace: namespace.to_string(),
        name: name.to_string(),
        path: None,
    }
}

/// Static bearer tokens: a CSV file like Kubernetes' `--token-auth-file`:
/// `token,user,uid,"group1,group2"` and an optional fifth column `expires=RFC3339`. Read again
/// whenever it changes on disk, so removing a line revokes a token without a restart.
pub struct TokenFile {
    path: PathBuf,
    /// (mtime, size, inode) of the file last read, and its tokens; empty after a failed read.
    state: Mutex<(Option<Stamp>, Tokens)>,
}

/// What identifies a version of the token file: modification time, size, inode.
type Stamp = (SystemTime, u64, u64);

/// SHA-256 of each token → its user and expiry (the tokens themselves are not kept).
type Tokens = HashMap<Vec<u8>, (UserInfo, Option<jiff::Timestamp>)>;

fn digest(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// Splits a CSV line, honouring double quotes.
fn csv(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().expect("one field").push(c),
        }
    }
    out.into_iter().map(|f| f.trim().to_string()).collect()
}

impl TokenFile {
    pub fn open(path: PathBuf) -> Result<TokenFile, String> {
        let f = TokenFile {
            path,
            state: Mutex::new((None, HashMap::new())),
        };
        f.reload()?;
        Ok(f)
    }

    fn reload(&self) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => {
                // Fail closed: a missing or unreadable file revokes every token.
                st.1.clear();
                st.0 = None;
                return Err(format!("{}: {e}", self.path.display()));
            }
        };
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
            meta.ino(),
        );
        if st.0 == Some(stamp) {
            return Ok(());
        }
        st.0 = Some(stamp);
        match self.parse() {
            Ok(map) => {
                st.1 = map;
                Ok(())
            }
            Err(e) => {
                st.1.clear();
                Err(e)
            }
        }
    }

    fn parse(&self) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f = csv(line);
            // The line number only: the line holds a token.
            let bad = |why: &str| format!("{} line {}: {why}", self.path.display(), i + 1);
            if f.len() < 3 || f.len() > 5 || f[0].is_empty() || f[1].is_empty() {
                return Err(bad(
                    "expected token,user,uid[,\"groups\"][,expires=RFC3339]",
                ));
            }
            let groups = f
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            let expires = match f.get(4) {
                Some(e) => {
                    let t = e
                        .strip_prefix("expires=")
                        .ok_or_else(|| bad("the fifth column must be expires=RFC3339"))?;
                    Some(
                        t.parse::<jiff::Timestamp>()
                            .map_err(|e| bad(&format!("expires: {e}")))?,
                    )
                }
                None => None,
            };
            map.insert(
                digest(&f[0]),
                (
                    UserInfo {
                        name: f[1].clone(),
                        groups,
                    },
                    expires,
                ),
            );
        }
        Ok(map)
    }

    /// The user of a token, or why not.
    pub fn lookup(&self, token: &str) -> Result<UserInfo, &'static str> {
        if let Err(e) = self.reload() {
            tracing::error!(error = %e, "token file unusable: every bearer token is refused until it is fixed");
        }
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.1.get(&digest(token)) {
            None => Err("unknown token"),
            Some((_, Some(exp))) if *exp <= jiff::Timestamp::now() => Err("token expired"),
            Some((u, _)) => Ok(u.clone()),
        }
    }
}

/// The audit log: one JSON line per write and per refused request, rotated by size.
pub struct Audit {
    path: Option<PathBuf>,
    max_bytes: u64,
    keep: usize,
    out: Mutex<Option<std::fs::File>>,
}

impl Audit {
    /// `path` "-" writes to stdout.
    pub fn open(path: &str, max_bytes: u64, keep: usize) -> Result<Audit, String> {
        let path = (path != "-").then(|| PathBuf::from(path));
        let out = match &path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("audit log {}: {e}", p.display()))?,
            ),
            None => None,
        };
        Ok(Audit {
            path,
            max_bytes,
            keep: keep.max(1),
            out: Mutex::new(out),
        })
    }

    pub fn record(&self, event: &Value) {
        let mut line = event.to_string();
        line.push('\n');
        let Some(path) = &self.path else {
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
            return;
        };
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let size = out
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
        if size + line.len() as u64 > self.max_bytes {
            // path.N-1 → path.N, ..., path → path.1
            for i in (1..self.keep).rev() {
                let _ = std::fs::rename(
                    format!("{}.{i}", path.display()),
                    format!("{}.{}", path.display(), i + 1),
                );
            }
            let _ = std::fs::rename(path, format!("{}.1", path.display()));
            *out = match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::error!(error = %e, path = %path.display(), "audit log cannot be reopened after rotation");
                    None
                }
            };
        }
        if let Some(f) = out.as_mut()
            && let Err(e) = f.write_all(line.as_bytes())
        {
            tracing::error!(error = %e, path = %path.display(), "audit log write failed");
        }
    }
}

/// Authentication, authorization and audit of the API.
pub struct Auth {
    pub store: Store,
    pub tokens: Option<TokenFile>,
    pub audit: Option<Audit>,
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

/// Paths anyone may read: liveness and version.
fn public(path: &str) -> bool {
    // Webhook receivers authenticate by the body's signature (crate::hooks).
    // The console's page and script hold no data; they call the API with the user's identity.
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
        || path.starts_with("/hooks/")
        || crate::ui::is_console(path)
}

/// Paths every authenticated user may read: discovery and OpenAPI (Kubernetes'
/// `system:discovery`).
pub(crate) fn is_discovery_path(path: &str) -> bool {
    path == "/api"
        || path == "/apis"
        || path.starts_with("/openapi/")
        || path == "/openapi"
        || (path.starts_with("/api/") && path.matches('/').count() == 2)
        || (path.starts_with("/apis/") && path.matches('/').count() <= 3)
}

fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

impl Auth {
    fn machine_certificate_listed(&self, node: &str, der: &[u8]) -> bool {
        let Some(serial) = groundwork_pki::serial(der) else {
            return false;
        };
        self.store
            .get(&format!("groundwork.dev/nodes//{node}"))
            .ok()
            .flatten()
            .and_then(|o| {
                o.object
                    .pointer("/status/provisioning/agent/certificates")
                    .and_then(|c| c.as_array())
                    .map(|c| c.iter().any(|s| s.as_str() == Some(serial.as_str())))
            })
            .unwrap_or(false)
    }

    fn authenticate(&self, req: &Request) -> Result<Option<UserInfo>, &'static str> {
        if let Some(PeerCert(der)) = req.extensions().get::<PeerCert>()
            && let Some((name, groups)) = groundwork_pki::subject(der)
        {
            // A machine's certificate is good only while its Node lists it (revocation).
            if let Some(node) = name.strip_prefix("system:node:")
                && groups.iter().any(|g| g == NODES_GROUP)
                && !self.machine_certificate_listed(node, der)
            {
                return Err(
                    "machine certificate revoked or replaced (its Node no longer lists it)",
                );
            }
            return Ok(Some(UserInfo { name, groups }));
        }
        let bearer = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        match (bearer.map(str::trim), &self.tokens) {
            // Short-lived signed tokens (`groundwork pki token`), audience `api` only.
            (Some(t), _) if t.starts_with("gw1.") => {
                use groundwork_types::secrets::TokenError;
                let key = crate::secrets::key().ok_or("signed tokens need the secret key")?;
                key.verify_token(t, API_AUDIENCE)
                    .map(|c| {
                        Some(UserInfo {
                            name: c.sub,
                            groups: c.groups,
                        })
                    })
                    .map_err(|e| match e {
                        TokenError::Format => "malformed signed token",
                        TokenError::Signature => "token signature does not verify",
                        TokenError::Audience { .. } => "token is not for the API (audience)",
                        TokenError::Expired(_) => "token expired",
                    })
            }
            (Some(t), Some(tokens)) => tokens.lookup(t).map(Some),
            (Some(_), None) => Err("bearer tokens are not enabled (--token-file)"),
            (None, _) => Ok(None),
        }
    }

    fn audit(
        &self,
        user: Option<&UserInfo>,
        a: &Attributes,
        code: u16,
        decision: &str,
        reason: &str,
    ) {
        let Some(audit) = &self.audit else { return };
        audit.record(&json!({
            "time": jiff::Timestamp::now().to_string(),
            "user": user.map(|u| u.name.as_str()),
            "groups": user.map(|u| u.groups.clone()),
            "verb": a.verb,
            "group": a.group,
            "resource": a.resource,
            "namespace": a.namespace,
            "name": a.name,
            "path": a.path,
            "code": code,
            "decision": decision,
            "reason": reason,
        }));
    }
}

/// The middleware: 401 without credentials, 403 without permission, audit of writes and
/// refusals.
pub async fn middleware(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if public(&path) {
        return next.run(req).await;
    }
    if path.contains('%') && (path.starts_with("/api/") || path.starts_with("/apis/")) {
        // Object names and namespaces never need escaping; refusing it keeps what is
        // authorized and audited identical to what the handlers decode.
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "percent-encoded resource paths are not accepted",
        );
    }
    let a = attributes(req.method(), &path, req.uri().query());
    let user = match auth.authenticate(&req) {
        Ok(Some(u)) => u,
        Ok(None) => {
            auth.audit(None, &a, 401, "deny", "no credentials");
            return status(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized: no client certificate or bearer token",
            );
        }
        Err(why) => {
            auth.audit(None, &a, 401, "deny", why);
            return status(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                &format!("Unauthorized: {why}"),
            );
        }
    };
    let applies = a.verb == "patch"
        && req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.contains("apply-patch"));
    let also_create = Attributes {
        verb: "create".into(),
        ..a.clone()
    };
    let decision = crate::rbac::authorize(&auth.store, &user, &a).and_then(|()| {
        // An apply may create the object.
        if applies {
            crate::rbac::authorize(&auth.store, &user, &also_create)
        } else {
            Ok(())
        }
    });
    if let Err(why) = decision {
        auth.audit(Some(&user), &a, 403, "deny", &why);
        // Kubernetes' wording, then why.
        let msg = match &a.path {
            Some(p) => format!(
                "forbidden: User {:?} cannot {} path {p:?} ({why})",
                user.name, a.verb
            ),
            None => {
                let target = if a.group.is_empty() {
                    a.resource.clone()
                } else {
                    format!("{}.{}", a.resource, a.group)
                };
                let name = if a.name.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", a.name)
                };
                let scope = if a.namespace.is_empty() {
                    "at the cluster scope".to_string()
                } else {
                    format!("in the namespace {:?}", a.namespace)
                };
                format!(
                    "{target}{name} is forbidden: User {:?} cannot {} resource {:?} in API group {:?} {scope} ({why})",
                    user.name, a.verb, a.resource, a.group
                )
            }
        };
        return status(StatusCode::FORBIDDEN, "Forbidden", &msg);
    }
    // The handlers check what depends on the object too (using a Credential).
    req.extensions_mut().insert(user.clone());
    // Writes are audited, and reads of a secret's value (`credentials/NAME/reveal`).
    if a.path.is_some() || !(is_write(&a.verb) || a.verb == "use") {
        return next.run(req).await;
    }
    // Recorded even when the client goes away before the answer (the write may have happened).
    struct Pending {
        auth: Arc<Auth>,
        user: UserInfo,
        a: Attributes,
        done: bool,
    }
    impl Drop for Pending {
        fn drop(&mut self) {
            if !self.done {
                self.auth.audit(
                    Some(&self.user),
                    &self.a,
                    0,
                    "allow",
                    "client went away; outcome unknown",
                );
            }
        }
    }
    let mut pending = Pending {
        auth: auth.clone(),
        user,
        a,
        done: false,
    };
    let resp = next.run(req).await;
    pending.done = true;
    let code = resp.status().as_u16();
    pending
        .auth
        .audit(Some(&pending.user), &pending.a, code, "allow", "");
    resp
}
