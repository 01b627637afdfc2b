//! Watch: newline-delimited JSON events over a chunked response. Starts from a list snapshot
//! (synthetic ADDED events) or replays history after a resourceVersion; sends bookmarks when
//! asked; answers a compacted revision with one ERROR event carrying a 410 `Expired` Status.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use groundwork_store::{EventType, Store, StoreError};
use groundwork_types::KindInfo;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::objects::Target;
use crate::query::Params;
use crate::{ApiError, table};

/// Idle time after which a bookmark is sent (when the client allows bookmarks).
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);
/// A watch without `timeoutSeconds` ends after this long; clients re-watch.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

fn line(type_: &str, object: Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(kind: &KindInfo, revision: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        json!({"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": meta}),
    )
}

fn expired(e: &StoreError) -> Bytes {
    let err = ApiError::Expired(e.to_string());
    line("ERROR", err.status())
}

pub(crate) async fn watch(
    store: &Store,
    t: &Target,
    p: &Params,
    as_table: bool,
) -> Result<Response, ApiError> {
    let kind = t.kind;
    let matches = p.selector(kind)?;
    let selective = p.has_selector();
    let prefix = t.prefix();
    let requested = p.resource_version_number()?;

    let (start, initial) = if requested.is_none() || p.send_initial_events {
        let page = store
            .list(&prefix, None, 0, Some(&matches))
            .map_err(|e| ApiError::from_store(e, kind, ""))?;
        (
            page.revision,
            page.items.into_iter().map(|s| s.object).collect::<Vec<_>>(),
        )
    } else {
        (requested.unwrap_or(0), Vec::new())
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    let mut stream = match store.watch(start) {
        Ok(s) => s,
        Err(e @ StoreError::Compacted { .. }) => {
            let _ = tx.try_send(Ok(expired(&e)));
            drop(tx);
            return Ok(respond(rx));
        }
        Err(e) => return Err(ApiError::from_store(e, kind, "")),
    };
    let render = move |o: Value| -> Value {
        if as_table {
            table::table(kind, &[o], json!({}), crate::objects::now())
        } else {
            o
        }
    };
    let timeout = p
        .timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let allow_bookmarks = p.allow_bookmarks;
    let send_initial = p.send_initial_events;
    let open_watches = groundwork_observe::metrics()
        .api_watches
        .get_or_create(&groundwork_observe::ResourceLabels {
            verb: "watch".into(),
            resource: kind.plural.into(),
        })
        .clone();
    tokio::spawn(async move {
        open_watches.inc();
        // Decrements however the task ends.
        struct Open(prometheus_client::metrics::gauge::Gauge);
        impl Drop for Open {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        let _open = Open(open_watches);
        for o in initial {
            if tx.send(Ok(line("ADDED", render(o)))).await.is_err() {
                return;
            }
        }
        if send_initial && tx.send(Ok(bookmark(kind, start, true))).await.is_err() {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
        loop {
            let out = tokio::select! {
                _ = tx.closed() => return,
                _ = &mut deadline => return,
                _ = ticks.tick(), if allow_bookmarks => bookmark(kind, stream.last_revision(), false),
                ev = stream.recv() => match ev {
                    Ok(e) => {
                        if !e.key.starts_with(&prefix) {
                            continue;
                        }
                        let now_matches = matches(e.object());
                        // Without a selector the previous object need not be read (or parsed).
                        let before = if !selective {
                            e.had_prev()
                        } else if e.prev_unknown() {
                            // Replayed from history, its previous version compacted away: this
                            // watch cannot tell whether the object entered or left its
                            // selector. 410, as for a compacted resourceVersion: relist.
                            let _ = tx.send(Ok(expired(&StoreError::Compacted {
                                requested: start,
                                compacted: e.revision,
                            }))).await;
                            return;
                        } else {
                            e.prev().is_some_and(&matches)
                        };
                        let type_ = match (e.type_, before, now_matches) {
                            (EventType::Added, _, true) => "ADDED",
                            (EventType::Modified, true, true) => "MODIFIED",
                            (EventType::Modified, false, true) => "ADDED",
                            (EventType::Modified, true, false) => "DELETED",
                            (EventType::Deleted, true, _) => "DELETED",
                            _ => continue,
                        };
                        ticks.reset();
                        line(type_, render(e.object().clone()))
                    }
                    Err(e @ StoreError::Compacted { .. }) => {
                        let _ = tx.send(Ok(expired(&e))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Ok(line("ERROR", ApiError::Internal(e.to_string()).status()))).await;
                        return;
                    }
                },
            };
            if tx.send(Ok(out)).await.is_err() {
                return;
            }
        }
    });
    Ok(respond(rx))
}

fn respond(rx: mpsc::Receiver<Result<Bytes, Infallible>>) -> Response {
    let mut resp = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use futures::StreamExt;
    use groundwork_store::{Store, StoreConfig};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    const PROFILES: &str = "/apis/groundwork.dev/v1alpha1/profiles";

    /// Creates or updates Profile `name` with label `tier` (server-side apply); its revision.
    async fn apply(app: &axum::Router, name: &str, tier: &str) -> u64 {
        let body = json!({
            "apiVersion": "groundwork.dev/v1alpha1", "kind": "Profile",
            "metadata": {"name": name, "labels": {"tier": tier}}, "spec": {}
        });
        let req = Request::patch(format!("{PROFILES}/{name}?fieldManager=t&force=true"))
            .header("content-type", "application/apply-patch+yaml")
            .body(Body::from(body.to_string()))
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("response");
        assert!(
            resp.status().is_success(),
            "apply {name}: {}",
            resp.status()
        );
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let v: Value = serde_json::from_slice(&bytes).expect("json");
        v["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("resourceVersion")
    }

    /// The first `n` lines of a watch (type, and name or error code), waiting at most 5 s.
    async fn watch(app: &axum::Router, query: &str, n: usize) -> Vec<(String, Value)> {
        let req = Request::get(format!("{PROFILES}?watch=true&{query}"))
            .body(Body::empty())
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("response");
        assert!(resp.status().is_success(), "watch: {}", resp.status());
        let mut body = resp.into_body().into_data_stream();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let read = async {
            while out.len() < n {
                let Some(chunk) = body.next().await else {
                    break;
                };
                buf.extend_from_slice(&chunk.expect("chunk"));
                while let Some(at) = buf.iter().position(|&b| b == b'\n') {
                    let line: Value = serde_json::from_slice(&buf[..at]).expect("line");
                    buf.drain(..=at);
                    let o = &line["object"];
                    let what = match line["type"].as_str() {
                        Some("ERROR") => o["code"].clone(),
                        _ => o["metadata"]["name"].clone(),
                    };
                    out.push((line["type"].as_str().unwrap_or("").to_string(), what));
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read).await;
        out
    }

    /// Objects entering and leaving a label selector show as ADDED and DELETED when a watch
    /// replays them from history; replaying a change whose previous version history no longer
    /// holds ends a selector watch with 410 (relist), while a watch without a selector,
    /// which does not need it, goes on.
    #[tokio::test]
    async fn selector_watches_follow_objects_in_and_out_and_relist_without_a_previous_version() {
        let dir = tempfile::tempdir().expect("dir");
        let mut cfg = StoreConfig::new(dir.path().join("db.redb"));
        cfg.history_retention = 10;
        let app = crate::router(Store::open(cfg).expect("store"));

        let start = apply(&app, "a", "web").await;
        apply(&app, "a", "db").await;
        apply(&app, "a", "web").await;
        apply(&app, "b", "db").await;
        let got = watch(
            &app,
            &format!("labelSelector=tier%3Dweb&resourceVersion={start}"),
            2,
        )
        .await;
        assert_eq!(
            got,
            vec![("DELETED".into(), json!("a")), ("ADDED".into(), json!("a"))],
            "replayed from history"
        );

        // "c" is created, then history moves on (30 writes to "d") past its creation.
        apply(&app, "c", "web").await;
        for i in 0..30 {
            apply(&app, "d", if i % 2 == 0 { "x" } else { "y" }).await;
        }
        let before = apply(&app, "d", "z").await;
        apply(&app, "c", "db").await;
        let got = watch(
            &app,
            &format!("labelSelector=tier%3Dweb&resourceVersion={before}"),
            1,
        )
        .await;
        assert_eq!(
            got,
            vec![("ERROR".into(), json!(410))],
            "c's creation is compacted"
        );
        let got = watch(&app, &format!("resourceVersion={before}"), 1).await;
        assert_eq!(
            got,
            vec![("MODIFIED".into(), json!("c"))],
            "no selector: no previous version needed"
        );
    }
}
