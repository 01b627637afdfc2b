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
                        let before = e.prev().is_some_and(&matches);
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
