//! The raft RPCs to other members: JSON over HTTP (mutual TLS when configured) to their raft
//! port.

use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::{NodeId, TypeConfig};

pub struct Factory {
    pub http: reqwest::Client,
    /// `https` with mutual TLS, else `http`.
    pub scheme: &'static str,
}

pub struct Client {
    http: reqwest::Client,
    scheme: &'static str,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Client;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Client {
        Client {
            http: self.http.clone(),
            scheme: self.scheme,
            target,
            addr: node.addr.clone(),
        }
    }
}

impl Client {
    /// POSTs `req` as JSON (serialised into a buffer of `size_hint` bytes).
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        size_hint: usize,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let mut body = Vec::with_capacity(size_hint);
        serde_json::to_writer(&mut body, req)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let r = self
            .http
            .post(format!("{}://{}{path}", self.scheme, self.addr))
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let body: Result<Resp, E> = r
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        body.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let hint = 256
            + rpc
                .entries
                .iter()
                .map(crate::entry_size_hint)
                .sum::<usize>();
        self.call("/raft/v2/append", &rpc, hint, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(
            "/raft/v2/snapshot",
            &rpc,
            256 + 2 * rpc.data.len(),
            option.hard_ttl(),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("/raft/v2/vote", &rpc, 256, option.hard_ttl())
            .await
    }
}
