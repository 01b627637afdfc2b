//! HTTP glue: resolves the path to a kind, parses the query and body, calls `objects` or
//! `watch`, and renders objects, lists and Tables.

use axum::body::Bytes;
use std::collections::HashMap;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use groundwork_store::Store;
use groundwork_types::{KindInfo, kind_by_plural};
use serde_json::{Value, json};

use crate::objects::{self, Change, DeleteOptions, Part, Target, Written};
use crate::query::Params;
use crate::server::AppState;
use crate::{ApiError, table};

type Result<T> = std::result::Result<T, ApiError>;

fn resolve(group: &str, version: &str, plural: &str) -> Result<&'static KindInfo> {
    kind_by_plural(group, plural)
        .filter(|k| k.version == version)
        .ok_or_else(|| ApiError::NotFound {
            what: format!(
                "the server could not find the requested resource ({plural}.{group}/{version})"
            ),
            kind: None,
            name: plural.into(),
        })
}

fn accept(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
}

/// The request's media type, lower case, without parameters; `""` when the header is absent.
fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// The media type of a create or replace body. As kube-apiserver does, a request without a
/// Content-Type is taken as its first supported type, JSON (the official Python client sends
/// none); a PATCH has no such default, since its type says which kind of patch it is.
fn body_type(headers: &HeaderMap) -> String {
    let ctype = content_type(headers);
    if ctype.is_empty() && headers.get(header::CONTENT_TYPE).is_none() {
        "application/json".into()
    } else {
        ctype
    }
}

fn parse_body(body: &Bytes, ctype: &str) -> Result<Value> {
    if ctype == crate::protobuf::PROTOBUF {
        // client-go's typed clients send built-in kinds as protobuf and do not retry as JSON.
        return crate::protobuf::to_json(body).map_err(|e| ApiError::BadRequest(e.to_string()));
    }
    if !(ctype.contains("json") || ctype.contains("yaml")) || ctype.contains("cbor") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "content type {ctype:?}: send application/json, YAML, or (for built-in kinds) {}",
            crate::protobuf::PROTOBUF
        )));
    }
    if body.is_empty() {
        return Err(ApiError::BadRequest(
            "the request body is empty; send a JSON object".into(),
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(e) if ctype.contains("yaml") => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))?;
            serde_saphyr::from_str::<Value>(text).map_err(|y| {
                ApiError::BadRequest(format!("the body is neither JSON ({e}) nor YAML ({y})"))
            })
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

fn written(w: Written, kind: &'static KindInfo, as_table: bool) -> Response {
    let mut resp = if as_table {
        table_response(table::table(kind, &[w.object], json!({}), objects::now()))
    } else {
        axum::Json(w.object).into_response()
    };
    *resp.status_mut() = w.code;
    for warning in w.warnings {
        let v = format!(
            "299 - {}",
            serde_json::to_string(&warning).unwrap_or_default()
        );
        if let Ok(h) = HeaderValue::from_str(&v) {
            resp.headers_mut().append(header::WARNING, h);
        }
    }
    resp
}

fn table_response(v: Value) -> Response {
    let mut resp = axum::Json(v).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(table::TABLE_CONTENT_TYPE),
    );
    resp
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    after: String,
}

/// Reads are linearizable (as Kubernetes' quorum reads) unless the client accepts any
/// version (`resourceVersion=0`): on a replicated store this waits until this member has
/// applied everything committed before the request.
async fn linearize(
    store: &Store,
    p: &Params,
    kind: &'static groundwork_types::KindInfo,
) -> Result<()> {
    if p.resource_version.as_deref() == Some("0") {
        return Ok(());
    }
    store
        .linearize()
        .await
        .map_err(|e| ApiError::from_store(e, kind, ""))
}

fn list(store: &Store, t: &Target, p: &Params, as_table: bool) -> Result<Response> {
    let kind = t.kind;
    let filter = p.selector(kind)?;
    let token = match &p.continue_ {
        Some(c) => {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .map_err(|_| {
                    ApiError::BadRequest("continue: not a token this server issued".into())
                })?;
            let tok: ContinueToken = serde_json::from_slice(&raw).map_err(|_| {
                ApiError::BadRequest("continue: not a token this server issued".into())
            })?;
            if tok.rv < store.compacted() {
                return Err(ApiError::Expired(
                    "The provided continue parameter is too old to display a consistent list result. Start a new list without the continue parameter.".into(),
                ));
            }
            Some(tok)
        }
        None => None,
    };
    let page = store
        .list(
            &t.prefix(),
            token.as_ref().map(|t| t.after.as_str()),
            p.limit,
            p.has_selector()
                .then_some(&filter as &dyn Fn(&Value) -> bool),
        )
        .map_err(|e| ApiError::from_store(e, kind, ""))?;
    // Every page of one list reports the first page's revision, so a watch started from it
    // misses nothing.
    let rv = token.as_ref().map_or(page.revision, |t| t.rv);
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(after) = page.continue_after {
        let tok = serde_json::to_vec(&ContinueToken { rv, after }).unwrap_or_default();
        meta["continue"] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(tok)
            .into();
        meta["remainingItemCount"] = page.remaining.into();
    }
    let items: Vec<Value> = page.items.into_iter().map(|s| s.object).collect();
    if as_table {
        return Ok(table_response(table::table(
            kind,
            &items,
            meta,
            objects::now(),
        )));
    }
    Ok(axum::Json(json!({"apiVersion": kind.api_version(), "kind": format!("{}List", kind.kind), "metadata": meta, "items": items})).into_response())
}

async fn collection_request(store: Store, t: Target, req: Req) -> Result<Response> {
    let (p, method, headers, body) = req.into_parts()?;
    let as_table = table::wants_table(accept(&headers));
    match method {
        Method::GET if p.watch => crate::watch::watch(&store, &t, &p, as_table).await,
        Method::GET => {
            linearize(&store, &p, t.kind).await?;
            list(&store, &t, &p, as_table)
        }
        Method::POST => {
            if t.namespace.is_none() && t.kind.namespaced {
                return Err(ApiError::MethodNotAllowed(
                    "create namespaced objects under /api/v1/namespaces/NAMESPACE/".into(),
                ));
            }
            let obj = parse_body(&body, &body_type(&headers))?;
            Ok(written(
                objects::create(&store, &t, obj, &p).await?,
                t.kind,
                as_table,
            ))
        }
        Method::DELETE => {
            // deletecollection: delete every object the selectors match.
            let matches = p.selector(t.kind)?;
            let page = store
                .list(&t.prefix(), None, 0, Some(&matches))
                .map_err(|e| ApiError::from_store(e, t.kind, ""))?;
            let mut items = Vec::new();
            for s in page.items {
                let name = objects::meta_str(&s.object, "name")
                    .unwrap_or("")
                    .to_string();
                let target = Target {
                    kind: t.kind,
                    namespace: objects::meta_str(&s.object, "namespace")
                        .map(String::from)
                        .or(t.namespace.clone()),
                };
                match objects::delete(&store, &target, &name, &DeleteOptions::default(), &p).await {
                    Ok(w) => items.push(w.object),
                    Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(axum::Json(json!({"apiVersion": t.kind.api_version(), "kind": format!("{}List", t.kind.kind), "metadata": {"resourceVersion": store.revision().to_string()}, "items": items})).into_response())
        }
        other => Err(ApiError::MethodNotAllowed(format!(
            "{other} is not supported on a collection"
        ))),
    }
}

/// The parts of an HTTP request a handler needs.
pub(crate) struct Req {
    method: Method,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
    user: Option<crate::auth::UserInfo>,
}

async fn item_request(
    store: Store,
    t: Target,
    name: String,
    part: Part,
    req: Req,
) -> Result<Response> {
    let (p, method, headers, body) = req.into_parts()?;
    let as_table = table::wants_table(accept(&headers));
    let kind = t.kind;
    match method {
        Method::GET => {
            linearize(&store, &p, kind).await?;
            let obj = store
                .get(&t.key(&name))
                .map_err(|e| ApiError::from_store(e, kind, &name))?
                .ok_or_else(|| ApiError::not_found(kind, &name))?;
            Ok(written(
                Written {
                    code: StatusCode::OK,
                    object: obj.object,
                    warnings: vec![],
                },
                kind,
                as_table,
            ))
        }
        Method::PUT => {
            let obj = parse_body(&body, &body_type(&headers))?;
            Ok(written(
                objects::update(&store, &t, &name, Change::Replace(&obj), part, &p).await?,
                kind,
                as_table,
            ))
        }
        Method::PATCH => {
            let ctype = content_type(&headers);
            let patch = parse_body(&body, &ctype)?;
            let w = match ctype.as_str() {
                "application/merge-patch+json" => {
                    objects::update(&store, &t, &name, Change::Merge(&patch), part, &p).await?
                }
                "application/strategic-merge-patch+json" => {
                    objects::update(&store, &t, &name, Change::Strategic(&patch), part, &p).await?
                }
                "application/json-patch+json" => {
                    let ops: json_patch::Patch = serde_json::from_value(patch).map_err(|e| {
                        ApiError::BadRequest(format!("not an RFC 6902 JSON patch: {e}"))
                    })?;
                    objects::update(&store, &t, &name, Change::Json(&ops), part, &p).await?
                }
                "application/apply-patch+yaml" | "application/apply-patch+json" => {
                    // A dry run cannot rely on a create's precondition: it confirms a missing
                    // object with the leader first.
                    let change = if part == Part::Main {
                        Change::Apply(&patch)
                    } else {
                        Change::Merge(&patch)
                    };
                    match objects::update(&store, &t, &name, change, part, &p).await {
                        Err(ApiError::NotFound { .. }) if part == Part::Main => {
                            let mut obj = patch.clone();
                            if let Some(m) = obj.as_object_mut() {
                                let meta = m.entry("metadata").or_insert_with(|| json!({}));
                                if let Some(meta) = meta.as_object_mut() {
                                    // The URL names the object: a body naming another is refused.
                                    let body_name =
                                        meta.entry("name").or_insert_with(|| name.clone().into());
                                    if body_name.as_str() != Some(name.as_str()) {
                                        return Err(ApiError::BadRequest(format!(
                                            "metadata.name {body_name}: the URL names {name:?}"
                                        )));
                                    }
                                }
                            }
                            let created = Params {
                                ssa: true,
                                ..p.clone()
                            };
                            match objects::create(&store, &t, obj, &created).await {
                                Ok(w) => w,
                                // Created meanwhile, or this member had not applied it yet
                                // (then a partial body, or one with a resourceVersion, fails
                                // as a create): update it after catching up with the leader;
                                // if it really does not exist, the create's error stands.
                                Err(create_err) if !p.dry_run => {
                                    match objects::update(
                                        &store,
                                        &t,
                                        &name,
                                        Change::Apply(&patch),
                                        part,
                                        &p,
                                    )
                                    .await
                                    {
                                        Err(ApiError::NotFound { .. }) => return Err(create_err),
                                        other => other?,
                                    }
                                }
                                Err(e) => return Err(e),
                            }
                        }
                        other => other?,
                    }
                }
                other => {
                    return Err(ApiError::UnsupportedMediaType(format!(
                        "the body of the request was in an unknown format ({other:?}) - accepted media types include: \
                         application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, \
                         application/strategic-merge-patch+json (a merge patch with conditions merged by type)"
                    )));
                }
            };
            Ok(written(w, kind, as_table))
        }
        Method::DELETE if part == Part::Main => {
            let opts: DeleteOptions = if body.is_empty() {
                DeleteOptions::default()
            } else {
                // JSON whatever the Content-Type says (curl -d sends a form type), or protobuf.
                let v = if content_type(&headers) == crate::protobuf::PROTOBUF {
                    parse_body(&body, crate::protobuf::PROTOBUF)?
                } else {
                    serde_json::from_slice(&body)
                        .map_err(|e| ApiError::BadRequest(format!("DeleteOptions: {e}")))?
                };
                serde_json::from_value(v)
                    .map_err(|e| ApiError::BadRequest(format!("DeleteOptions: {e}")))?
            };
            Ok(written(
                objects::delete(&store, &t, &name, &opts, &p).await?,
                kind,
                false,
            ))
        }
        other => Err(ApiError::MethodNotAllowed(format!(
            "{other} is not supported here"
        ))),
    }
}

fn into_response(r: Result<Response>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

impl Req {
    /// The query parameters (with the caller), method, headers and body.
    fn into_parts(self) -> Result<(Params, Method, HeaderMap, Bytes)> {
        let mut p = Params::parse(self.query.as_deref())?;
        p.user = self.user;
        if p.field_manager.is_none() {
            // As Kubernetes does: the User-Agent's product, `kubectl/v1.28 (...)` → kubectl.
            p.field_manager = self
                .headers
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
                .and_then(|ua| ua.split('/').next())
                .map(|s| s.chars().take(128).collect::<String>())
                .filter(|s| !s.is_empty());
        }
        Ok((p, self.method, self.headers, self.body))
    }
}

impl<S: Send + Sync> FromRequest<S> for Req {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Response> {
        let (parts, body) = req.into_parts();
        let query = parts.uri.query().map(String::from);
        let body = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|e| {
                ApiError::BadRequest(format!("reading the request body: {e}")).into_response()
            })?;
        Ok(Req {
            user: parts.extensions.get::<crate::auth::UserInfo>().cloned(),
            method: parts.method,
            query,
            headers: parts.headers,
            body,
        })
    }
}

/// Every resource route: `/api/v1/[namespaces/NS/]PLURAL[/NAME]` and
/// `/apis/GROUP/VERSION/[namespaces/NS/]PLURAL[/NAME[/SUBRESOURCE]]`.
pub(crate) async fn resource(
    State(st): State<AppState>,
    Path(p): Path<HashMap<String, String>>,
    req: Req,
) -> Response {
    into_response(dispatch(st, p, req).await)
}

async fn dispatch(st: AppState, p: HashMap<String, String>, req: Req) -> Result<Response> {
    let group = p.get("group").map_or("", String::as_str);
    let version = p.get("version").map_or("v1", String::as_str);
    let plural = p.get("plural").map_or("", String::as_str);
    let kind = resolve(group, version, plural)?;
    let namespace = p.get("ns").cloned();
    let name = p.get("name").cloned();
    let base = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    if !kind.namespaced && namespace.is_some() {
        return Err(ApiError::NotFound {
            what: format!("{plural} are cluster-scoped; use {base}/{plural}"),
            kind: None,
            name: plural.into(),
        });
    }
    if kind.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::NotFound {
            what: format!("{plural} are namespaced; use {base}/namespaces/NAMESPACE/{plural}"),
            kind: None,
            name: plural.into(),
        });
    }
    let t = Target { kind, namespace };
    let Some(name) = name else {
        return collection_request(st.store, t, req).await;
    };
    match p.get("sub").map(String::as_str) {
        None => item_request(st.store, t, name, Part::Main, req).await,
        Some("status") if kind.has_status => {
            item_request(st.store, t, name, Part::Status, req).await
        }
        Some("log") if req.method == Method::GET && !kind.namespaced => {
            crate::logs::object_log(&st, kind, &name, req.query.as_deref())
        }
        Some("reveal") if req.method == Method::GET && kind.kind == "Credential" => {
            let (p, _, _, _) = req.into_parts()?;
            linearize(&st.store, &p, kind).await?;
            let obj = st
                .store
                .get(&t.key(&name))
                .map_err(|e| ApiError::from_store(e, kind, &name))?
                .ok_or_else(|| ApiError::not_found(kind, &name))?;
            let v = crate::secrets::reveal(&st.store, p.user.as_ref(), &name, &obj.object)?;
            let mut r = axum::Json(v).into_response();
            // Never kept by a cache or a proxy.
            r.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            Ok(r)
        }
        Some(sub) => Err(ApiError::NotFound {
            what: format!("subresource {sub:?} of {plural}"),
            kind: None,
            name,
        }),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use groundwork_store::{Store, StoreConfig};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    const PROFILES: &str = "/apis/groundwork.dev/v1alpha1/profiles";

    async fn apply(app: &axum::Router, name: &str, n: u64, query: &str) -> (u16, Value) {
        let body = json!({
            "apiVersion": "groundwork.dev/v1alpha1", "kind": "Profile",
            "metadata": {"name": name, "annotations": {"n": n.to_string()}}, "spec": {}
        });
        let req = Request::patch(format!(
            "{PROFILES}/{name}?fieldManager=t&force=true{query}"
        ))
        .header("content-type", "application/apply-patch+yaml")
        .body(Body::from(body.to_string()))
        .expect("request");
        let resp = app.clone().oneshot(req).await.expect("response");
        let code = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (code, serde_json::from_slice(&bytes).expect("json"))
    }

    /// Server-side apply of an object that does not exist yet creates it; applies racing to
    /// create the same object all succeed (the ones that lose the create update it), and a
    /// dry run creates nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applies_racing_to_create_an_object_all_succeed() {
        let dir = tempfile::tempdir().expect("dir");
        let app = crate::router(
            Store::open(StoreConfig::new(dir.path().join("db.redb"))).expect("store"),
        );
        for round in 0..20 {
            let name = format!("p{round}");
            let racers: Vec<_> = (0..8)
                .map(|n| {
                    let (app, name) = (app.clone(), name.clone());
                    tokio::spawn(async move { apply(&app, &name, n, "").await })
                })
                .collect();
            let mut created = 0;
            for r in racers {
                let (code, body) = r.await.expect("task");
                assert!(code == 200 || code == 201, "apply {name}: {code} {body}");
                created += usize::from(code == 201);
            }
            assert_eq!(created, 1, "{name}: exactly one apply creates it");
        }
        // A body that cannot create a missing object keeps the create's error (after the
        // update it falls back to finds nothing either).
        let body = json!({
            "apiVersion": "groundwork.dev/v1alpha1", "kind": "Profile",
            "metadata": {"name": "rv", "resourceVersion": "5"}, "spec": {}
        });
        let req = Request::patch(format!("{PROFILES}/rv?fieldManager=t&force=true"))
            .header("content-type", "application/apply-patch+yaml")
            .body(Body::from(body.to_string()))
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("response");
        assert_eq!(resp.status().as_u16(), 422);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        assert!(
            String::from_utf8_lossy(&bytes).contains("metadata.resourceVersion"),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let (code, body) = apply(&app, "dry", 1, "&dryRun=All").await;
        assert_eq!(code, 201, "{body}");
        let req = Request::get(format!("{PROFILES}/dry"))
            .body(Body::empty())
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("response");
        assert_eq!(resp.status().as_u16(), 404);
    }
}
