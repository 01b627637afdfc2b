//! The raft port: RPCs from other members, and the requests followers send the leader.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::{Deserialize, Serialize};

use crate::{Member, NodeId, Outcome, Refused, TypeConfig};

/// The prefix of the error a member that is not the leader answers forwarded requests with.
pub const NOT_LEADER: &str = "not the leader";

#[derive(Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: NodeId,
    pub addr: String,
}

#[derive(Serialize, Deserialize)]
pub struct RemoveRequest {
    pub id: NodeId,
}

/// Routes of the raft port.
pub fn router(m: Member) -> Router {
    Router::new()
        .route(
            "/raft/v2/append",
            post(|State(m): State<Member>, body: axum::body::Bytes| async move {
                // Parsed directly (axum's `Json` tracks the path of every value, which cost
                // a tenth of a follower's CPU on large appends).
                let r: AppendEntriesRequest<TypeConfig> = match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        return (
                            axum::http::StatusCode::BAD_REQUEST,
                            format!("raft append: the request does not parse: {e}"),
                        )
                            .into_response();
                    }
                };
                Json(m.raft.append_entries(r).await).into_response()
            }),
        )
        .route(
            "/raft/v2/vote",
            post(|State(m): State<Member>, Json(r): Json<VoteRequest<NodeId>>| async move {
                Json(m.raft.vote(r).await)
            }),
        )
        .route(
            "/raft/v2/snapshot",
            post(
                |State(m): State<Member>, Json(r): Json<InstallSnapshotRequest<TypeConfig>>| async move {
                    Json(m.raft.install_snapshot(r).await)
                },
            ),
        )
        .route(
            "/raft/v2/write",
            post(|State(m): State<Member>, Json(op): Json<groundwork_store::WriteOp>| async move {
                let r: Result<Outcome, String> = match m.submit(op).await {
                    Ok(o) => Ok(o),
                    Err(Refused::NotLeader(l)) => Err(format!("{NOT_LEADER} (leader: {l:?})")),
                    Err(Refused::Failed(e)) => Err(e),
                };
                Json(r)
            }),
        )
        .route(
            "/raft/v2/read-index",
            post(|State(m): State<Member>| async move {
                let r: Result<u64, String> = match m.leader_read_index().await {
                    Ok(i) => Ok(i),
                    Err(e) => Err(format!("{NOT_LEADER}: {e}")),
                };
                Json(r)
            }),
        )
        .route(
            "/raft/v2/join",
            post(|State(m): State<Member>, Json(j): Json<JoinRequest>| async move {
                let (id, addr) = (j.id, j.addr.clone());
                Json(forward_or(&m, "/raft/v2/join", &j, |m| async move { m.add_member(id, addr).await }).await)
            }),
        )
        .route(
            "/raft/v2/remove",
            post(|State(m): State<Member>, Json(r): Json<RemoveRequest>| async move {
                let id = r.id;
                Json(forward_or(&m, "/raft/v2/remove", &r, |m| async move { m.remove_member(id).await }).await)
            }),
        )
        .route(
            "/raft/v2/status",
            get(|State(m): State<Member>| async move { Json(m.status()) }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(crate::MAX_RPC_BYTES))
        .with_state(m)
}

/// Runs `f` on the leader: here, or by forwarding the request to it.
async fn forward_or<Req, F, Fut>(m: &Member, path: &str, req: &Req, f: F) -> Result<String, String>
where
    Req: Serialize,
    F: FnOnce(Member) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let (leader, addr) = m.leader().await.map_err(|e| e.to_string())?;
    if leader == m.id {
        return f(m.clone()).await;
    }
    m.post::<_, String>(&addr, path, req, std::time::Duration::from_secs(120))
        .await
        .map_err(|e| format!("forwarding to the leader at {addr}: {e}"))?
}
