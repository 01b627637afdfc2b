//! `GET .../{plural}/{name}/log[?follow=true&tailLines=N]`: the controller log lines about one
//! object, from the [`LogHub`](groundwork_observe::LogHub) of the controllers running in this
//! process, as plain text (one line per line, like `kubectl logs`). With `follow`, the response
//! stays open and new lines are written as the controllers log them.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use groundwork_types::KindInfo;
use tokio::sync::broadcast::error::RecvError;

use crate::ApiError;
use crate::server::AppState;

pub(crate) fn object_log(
    st: &AppState,
    kind: &'static KindInfo,
    name: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let mut follow = false;
    let mut tail = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "follow" => follow = v == "true" || v == "1",
            "tailLines" => {
                tail = Some(v.parse::<usize>().map_err(|_| {
                    ApiError::BadRequest(format!("tailLines={v:?}: not a non-negative integer"))
                })?)
            }
            _ => {}
        }
    }
    let Some(hub) = st.logs.clone() else {
        return Err(ApiError::Unavailable(
            "no controllers run in this server process (started with --controllers none), \
             so it holds no controller logs"
                .into(),
        ));
    };
    let object = format!("{}/{name}", kind.singular);
    let rx = follow.then(|| hub.subscribe());
    let lines = hub.tail(&object, tail);
    if lines.is_empty() {
        let key = crate::objects::Target {
            kind,
            namespace: None,
        }
        .key(name);
        let exists = st
            .store
            .get(&key)
            .map_err(|e| ApiError::from_store(e, kind, name))?
            .is_some();
        if !exists {
            return Err(ApiError::not_found(kind, name));
        }
    }
    let mut last = lines.last().map_or(0, |l| l.seq);
    let backlog: String = lines.iter().map(|l| format!("{}\n", l.text)).collect();
    let body = match rx {
        None => Body::from(backlog),
        Some(mut rx) => {
            let (tx, out) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
            tokio::spawn(async move {
                if !backlog.is_empty() && tx.send(Ok(Bytes::from(backlog))).await.is_err() {
                    return;
                }
                loop {
                    let text = tokio::select! {
                        _ = tx.closed() => return,
                        r = rx.recv() => match r {
                            Ok(l) if l.object == object && l.seq > last => {
                                last = l.seq;
                                format!("{}\n", l.text)
                            }
                            Ok(_) => continue,
                            Err(RecvError::Lagged(n)) => {
                                format!("... {n} log lines (of all objects) skipped: this reader fell behind\n")
                            }
                            Err(RecvError::Closed) => return,
                        },
                    };
                    if tx.send(Ok(Bytes::from(text))).await.is_err() {
                        return;
                    }
                }
            });
            Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(out))
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}
