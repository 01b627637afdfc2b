//! Groundwork's replicated store: the object store ([`groundwork_store::Store`]) as the state
//! machine of an openraft group. Every member keeps the whole state; `resourceVersion` is the
//! raft log index, so it is the same on every member and a watch can resume on any of them.
//!
//! Members talk JSON over HTTP on their raft port (`--raft-listen`), under a protocol version
//! prefix (`/raft/v2/`): the three raft RPCs (`append`, `vote`, `snapshot`), plus what
//! followers ask the leader: `write` (a forwarded write), `read-index` (the commit index a
//! linearizable read must wait for), `join` and `remove` (membership), and `status`. A member
//! of another protocol version answers 404, which the caller reports as unreachable.
//! Clients never need to know the leader: any member's API forwards.

mod network;
mod server;
mod storage;
mod tls;
pub mod wal;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use groundwork_store::{BoxFuture, Committed, Proposer, Store, StoreError, WriteOp};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, Raft};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use server::router;
pub use storage::{FLUSH_EVERY, FLUSH_IDLE};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Groundwork's raft types: batches of store operations in, their results out.
    pub TypeConfig:
        D = Batch,
        R = Applied,
);

/// The application data of one log entry: the writes that reached the leader together, applied
/// in order. One entry (one log append, one fsync on each member) carries many writes: group
/// commit, since openraft 0.9 appends each proposal to the leader's log on its own.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Batch(pub Vec<WriteOp>);

impl Batch {
    /// About how many bytes the batch takes as JSON: a buffer of this size is not regrown
    /// while it is serialised (regrowing buffers of hundreds of KiB was a tenth of the
    /// leader's CPU, most of it the kernel zeroing fresh pages).
    pub(crate) fn json_size_hint(&self) -> usize {
        self.0.iter().map(op_size).sum()
    }
}

/// About how many bytes a log entry takes as JSON.
pub(crate) fn entry_size_hint(e: &openraft::Entry<TypeConfig>) -> usize {
    256 + match &e.payload {
        openraft::EntryPayload::Normal(b) => b.json_size_hint(),
        _ => 1024,
    }
}

/// The results of applying one entry, one per operation of its batch (none for a blank or
/// membership entry), returned to the writers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Applied(pub Vec<Outcome>);

/// The result of one write.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Outcome {
    Ok {
        revision: u64,
        object: groundwork_store::Json,
    },
    /// A failed precondition: nothing was written.
    Rejected(Rejected),
}

/// Why an operation changed nothing (the store's precondition errors, on the wire).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Rejected {
    Conflict {
        key: String,
        expected: u64,
        actual: u64,
    },
    NotFound {
        key: String,
    },
    AlreadyExists {
        key: String,
    },
}

impl From<Rejected> for StoreError {
    fn from(r: Rejected) -> Self {
        match r {
            Rejected::Conflict {
                key,
                expected,
                actual,
            } => StoreError::Conflict {
                key,
                expected,
                actual,
            },
            Rejected::NotFound { key } => StoreError::NotFound { key },
            Rejected::AlreadyExists { key } => StoreError::AlreadyExists { key },
        }
    }
}

/// How a member runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Raft timing: heartbeats, and the election timeout range.
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Entries since the last snapshot that trigger a new one (a snapshot is also taken when
    /// the log outgrows the last one: [`storage::LogGrowth`]).
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, for followers that lag a little (more need the
    /// snapshot).
    pub logs_to_keep: u64,
    /// How long a write or a linearizable read may wait for the leader and a quorum.
    pub request_timeout: Duration,
    /// How often applied writes are persisted to the store's file under a steady load
    /// ([`storage::FLUSH_EVERY`]).
    pub persist_every: Duration,
    /// How long the applies pause before what they applied is persisted
    /// ([`storage::FLUSH_IDLE`]).
    pub persist_idle: Duration,
    /// Mutual TLS between members (None: plain HTTP, for a trusted network only).
    pub tls: Option<RaftTls>,
    /// This member's certificates and when they expire (name, RFC 3339), for `cluster status`.
    pub certificates: Vec<(String, String)>,
}

/// Mutual TLS on the raft port: every connection, both ways, presents a certificate from the
/// cluster CA, and the caller's must also pass `allow` (members, and the operator's tools).
#[derive(Clone)]
pub struct RaftTls {
    /// This member's certificate and key (PEM): presented when calling others.
    pub cert_pem: String,
    pub key_pem: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// The server side: this member's certificate, a client certificate from the CA required.
    pub server: Arc<rustls::ServerConfig>,
    /// Accepts a caller's verified certificate (DER).
    pub allow: fn(&[u8]) -> bool,
    /// What a caller without a certificate may reach (joining with a join token); without
    /// it, such a caller is dropped after the handshake. The server configuration must then
    /// accept callers without a certificate.
    pub public: Option<axum::Router>,
}

impl RaftTls {
    /// A member's TLS from PEM: its certificate and key (server and client), the cluster CA,
    /// who may call it, and what a caller without a certificate may reach.
    pub fn from_pem(
        cert_pem: String,
        key_pem: String,
        ca_pem: String,
        allow: fn(&[u8]) -> bool,
        public: Option<axum::Router>,
    ) -> Result<RaftTls, String> {
        // Callers without a certificate are accepted by TLS and reach only `public`.
        let server = groundwork_pki::tls::server_config_with(&cert_pem, &key_pem, &ca_pem, false)?;
        Ok(RaftTls {
            cert_pem,
            key_pem,
            ca_pem,
            server,
            allow,
            public,
        })
    }
}

impl std::fmt::Debug for RaftTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftTls { key: <redacted> }")
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat: Duration::from_millis(150),
            election_min: Duration::from_millis(750),
            election_max: Duration::from_millis(1500),
            snapshot_every: 100_000,
            logs_to_keep: 1000,
            request_timeout: Duration::from_secs(10),
            persist_every: storage::FLUSH_EVERY,
            persist_idle: storage::FLUSH_IDLE,
            tls: None,
            certificates: Vec::new(),
        }
    }
}

/// One member of the group.
#[derive(Clone)]
pub struct Member {
    pub id: NodeId,
    /// The raft address other members reach this one at.
    pub addr: String,
    pub raft: Raft<TypeConfig>,
    store: Store,
    http: reqwest::Client,
    opts: Options,
    /// Writes waiting to be proposed together ([`batch_loop`]).
    batcher: mpsc::Sender<Submit>,
    /// Linearizable reads waiting for the leader's next read-index round ([`read_rounds`]).
    reads: mpsc::UnboundedSender<oneshot::Sender<Result<u64, ReadRefused>>>,
}

/// Why a read-index round on this member gave no index.
#[derive(Clone, Debug)]
pub(crate) enum ReadRefused {
    /// This member is not (or no longer) the leader.
    NotLeader,
    /// A majority did not answer the round's heartbeats in time (openraft waits one
    /// heartbeat interval): a partition, or members too busy to answer. Worth a retry.
    NoQuorum(String),
    /// Anything else (openraft stopped).
    Failed(String),
}

impl std::fmt::Display for ReadRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadRefused::NotLeader => f.write_str("not the leader"),
            ReadRefused::NoQuorum(e) | ReadRefused::Failed(e) => f.write_str(e),
        }
    }
}

/// Confirms leadership for every linearizable read waiting, one round at a time (etcd's
/// read-index loop does the same). openraft's `get_read_log_id` sends each member a
/// heartbeat of its own per call: 100 lists at once sent 200 heartbeats, the followers could
/// not answer them all within openraft's timeout (the heartbeat interval), and the reads
/// failed for want of a quorum. Reads that arrive during a round wait for the next one, so
/// each read's round starts after the read did, as linearizability needs.
///
/// `start_floor`, the last log index at start, is a lower bound for the read index while
/// this member leads. A member that was the leader before a restart resumes as the leader of
/// the same term without openraft's no-op entry, so openraft's read index can then be its
/// committed index from before the stop, below writes it acknowledged; every entry in the
/// leader's log will commit, so waiting for them is safe.
async fn read_rounds(
    raft: Raft<TypeConfig>,
    start_floor: u64,
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Result<u64, ReadRefused>>>,
) {
    use openraft::error::CheckIsLeaderError;
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiting.push(w);
        }
        waiting.retain(|w| !w.is_closed());
        if waiting.is_empty() {
            continue;
        }
        let r = match raft.get_read_log_id().await {
            Ok((read, _)) => {
                // The floor, but never beyond this member's log: entries of it a later
                // leader truncated (it was not a leader of their term then) will not commit.
                let last = raft.metrics().borrow().last_log_index.unwrap_or(0);
                Ok(read
                    .map(|l| l.index)
                    .unwrap_or(0)
                    .max(start_floor.min(last)))
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(ReadRefused::NotLeader)
            }
            Err(RaftError::APIError(e @ CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(ReadRefused::NoQuorum(e.to_string()))
            }
            Err(e) => Err(ReadRefused::Failed(e.to_string())),
        };
        for w in waiting {
            let _ = w.send(r.clone());
        }
    }
}

/// A write handed to the batcher, and where its result goes.
struct Submit {
    op: WriteOp,
    reply: oneshot::Sender<Result<Outcome, Refused>>,
}

/// A request to another member that failed.
enum PostError {
    /// It never reached the member: nothing was sent.
    NotSent(String),
    /// It may have reached the member and been acted on.
    Unknown(String),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::NotSent(e) | PostError::Unknown(e) => f.write_str(e),
        }
    }
}

/// How often a write waiting out an election looks for the new leader.
const LEADER_RETRY: Duration = Duration::from_millis(100);

/// Why the leader did not take a write.
pub(crate) enum Refused {
    /// This member is not (or no longer) the leader: nothing was written.
    NotLeader(Option<NodeId>),
    /// Anything else (the write may or may not have been applied).
    Failed(String),
}

/// Most writes in one log entry.
const MAX_BATCH: usize = 256;
/// A log entry takes no more writes once its objects reach this size (so an entry, and the
/// append RPC carrying [`MAX_PAYLOAD_ENTRIES`] of them, stay bounded).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Most log entries in one append RPC.
const MAX_PAYLOAD_ENTRIES: u64 = 32;
/// The largest request the raft port takes: [`MAX_PAYLOAD_ENTRIES`] entries of
/// [`MAX_BATCH_BYTES`] and a last object of up to the store's limit
/// ([`groundwork_store::MAX_OBJECT_BYTES`]), or a snapshot chunk (3 MiB of data, up to 4 bytes
/// each as JSON).
pub(crate) const MAX_RPC_BYTES: usize = 192 << 20;

/// About how many bytes an operation takes as JSON (counted against [`MAX_BATCH_BYTES`]).
fn op_size(op: &WriteOp) -> usize {
    64 + op.key().len()
        + match op {
            WriteOp::Put { value, .. } => value.as_str().len(),
            WriteOp::Delete { .. } => 0,
        }
}
/// Entries proposed and not yet applied at a time. While one is in flight, new writes queue up
/// and go together in the next entry: the busier the leader, the larger its batches, while a
/// lone write is proposed at once. One in flight measured best at 16, 64 and 256 connections
/// (fewer, larger entries cost less CPU per write than overlapping smaller ones, and the
/// machine is CPU-bound); 2 and 4 gave 2-15 % fewer writes/s.
const IN_FLIGHT: usize = 1;

/// The pause before a refused read-index round is tried again.
const READ_RETRY: Duration = Duration::from_millis(50);

/// Asks openraft for a snapshot once the log has outgrown the last one (checked every
/// second; openraft ignores the request while a snapshot is being built). Ends with the
/// member.
async fn snapshot_by_size(raft: Raft<TypeConfig>, growth: Arc<storage::LogGrowth>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if growth.snapshot_due() && raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

/// Proposes queued writes, as many as are waiting (up to [`MAX_BATCH`]) in each entry.
async fn batch_loop(raft: Raft<TypeConfig>, mut rx: mpsc::Receiver<Submit>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = op_size(&first.op);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                // A writer that gave up (timed out, or the follower that forwarded it hung
                // up) was told the write may still apply; not proposing it is simpler for it.
                Ok(s) if s.reply.is_closed() => {}
                Ok(s) => {
                    bytes += op_size(&s.op);
                    batch.push(s);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let propose = async move {
            let (ops, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|s| (s.op, s.reply)).unzip();
            let r = raft.client_write(Batch(ops)).await;
            drop(slot);
            match r {
                Ok(resp) => {
                    // One outcome per operation; a reply without one is dropped, and its
                    // writer reports the write as lost.
                    for (reply, out) in replies.into_iter().zip(resp.data.0) {
                        let _ = reply.send(Ok(out));
                    }
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    for reply in replies {
                        let _ = reply.send(Err(Refused::NotLeader(f.leader_id)));
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(Refused::Failed(e.clone())));
                    }
                }
            }
        };
        // With one entry in flight, the loop waits for it anyway: proposing on this task
        // saves a task switch on every write's path.
        if IN_FLIGHT == 1 {
            propose.await;
        } else {
            tokio::spawn(propose);
        }
    }
}

/// A failure to reach or use the group, as the API reports it.
fn unavailable(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(what.to_string())
}

/// This member's raft ID: kept in `DATA_DIR/raft-id`, made up on first start.
pub fn node_id(data_dir: &std::path::Path) -> std::io::Result<NodeId> {
    let p = data_dir.join("raft-id");
    match std::fs::read_to_string(&p) {
        Ok(s) => s.trim().parse().map_err(|_| {
            std::io::Error::other(format!("{}: not a raft member ID: {s:?}", p.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Random, non-zero, below 2^53 so it survives JSON tools.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            let id = (t ^ (u64::from(std::process::id()) << 32)) % ((1 << 53) - 1) + 1;
            std::fs::write(&p, format!("{id}\n"))?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

impl Member {
    /// Starts this member over `store`, listening for raft traffic on `listener`. Without
    /// `join`, a member with no state bootstraps a group of one; with `join` (any member's
    /// raft address) it asks to be added, as a learner then a voter, retrying until it is.
    pub async fn start(
        id: NodeId,
        store: Store,
        log_path: &std::path::Path,
        listener: tokio::net::TcpListener,
        join: Option<String>,
        opts: Options,
    ) -> Result<Member, String> {
        let addr = listener
            .local_addr()
            .map_err(|e| format!("raft listener: {e}"))?
            .to_string();
        let config = Config {
            cluster_name: "groundwork".into(),
            heartbeat_interval: opts.heartbeat.as_millis() as u64,
            election_timeout_min: opts.election_min.as_millis() as u64,
            election_timeout_max: opts.election_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(opts.snapshot_every),
            max_in_snapshot_log_to_keep: opts.logs_to_keep,
            // openraft purges after every applied entry by default (one log commit each once
            // the first snapshot exists): purge in batches, at most a snapshot interval.
            purge_batch_size: opts.snapshot_every.clamp(1, 1024),
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("raft configuration: {e}"))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("raft listener: {e}"))?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        // Traffic to other members leaves from the raft address, so firewalls (and the
        // partition tests) can tell members apart by source address.
        if !bound.ip().is_unspecified() {
            http = http.local_address(bound.ip());
        }
        if let Some(t) = &opts.tls {
            // Every CA of the bundle (two during a CA rotation).
            let cas = reqwest::Certificate::from_pem_bundle(t.ca_pem.as_bytes())
                .map_err(|e| format!("raft TLS: the CA: {e}"))?;
            let id = reqwest::Identity::from_pem(format!("{}{}", t.cert_pem, t.key_pem).as_bytes())
                .map_err(|e| format!("raft TLS: the member certificate: {e}"))?;
            http = http.tls_built_in_root_certs(false).identity(id);
            for ca in cas {
                http = http.add_root_certificate(ca);
            }
        }
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let http = http.build().map_err(|e| e.to_string())?;
        let mut log = storage::LogStore::open(log_path)?;
        let growth = log.growth();
        let start_floor = {
            use openraft::storage::RaftLogStorage;
            log.get_log_state()
                .await
                .map_err(|e| format!("raft log: {e}"))?
                .last_log_id
                .map(|l| l.index)
                .unwrap_or(0)
        };
        let raft = Raft::new(
            id,
            Arc::new(config),
            network::Factory {
                http: http.clone(),
                scheme,
            },
            log,
            storage::StateMachine::new(store.clone(), growth.clone()),
        )
        .await
        .map_err(|e| format!("raft: {e}"))?;
        store.spawn_flusher(opts.persist_every, opts.persist_idle);
        tokio::spawn(snapshot_by_size(raft.clone(), growth));
        let (batcher, queued) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(batch_loop(raft.clone(), queued));
        let (reads, read_queue) = mpsc::unbounded_channel();
        tokio::spawn(read_rounds(raft.clone(), start_floor, read_queue));
        let member = Member {
            id,
            addr: addr.clone(),
            raft,
            store: store.clone(),
            http,
            opts,
            batcher,
            reads,
        };
        let app = router(member.clone());
        match &member.opts.tls {
            Some(t) => {
                tokio::spawn(tls::serve(
                    listener,
                    app,
                    t.server.clone(),
                    t.allow,
                    t.public.clone(),
                ));
            }
            None => {
                tokio::spawn(async move {
                    use axum::serve::ListenerExt;
                    // As over TLS: replies leave at once, never held back by Nagle.
                    let listener = listener.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::error!(error = %e, "raft listener stopped");
                    }
                });
            }
        }
        let initialized = member
            .raft
            .is_initialized()
            .await
            .map_err(|e| format!("raft: {e}"))?;
        match (initialized, join) {
            (true, _) => tracing::info!(id, %addr, "raft member restarted"),
            (false, None) => {
                let mut nodes = BTreeMap::new();
                nodes.insert(id, BasicNode { addr: addr.clone() });
                member
                    .raft
                    .initialize(nodes)
                    .await
                    .map_err(|e| format!("raft initialize: {e}"))?;
                tracing::info!(id, %addr, "raft group bootstrapped with this member");
            }
            (false, Some(peer)) => {
                let m = member.clone();
                tokio::spawn(async move { m.join_loop(peer).await });
            }
        }
        store.set_proposer(Arc::new(member.clone()));
        Ok(member)
    }

    fn scheme(&self) -> &'static str {
        if self.opts.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    async fn join_loop(&self, peer: String) {
        let mut wait = Duration::from_millis(200);
        loop {
            let req = server::JoinRequest {
                id: self.id,
                addr: self.addr.clone(),
            };
            match self
                .post::<_, String>(&peer, "/raft/v2/join", &req, Duration::from_secs(60))
                .await
            {
                Ok(Ok(m)) => {
                    tracing::info!(id = self.id, %peer, "joined the raft group: {m}");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(%peer, error = %e, "join refused; retrying"),
                Err(e) => tracing::warn!(%peer, error = %e, "join: no answer; retrying"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// POSTs JSON to a member's raft port; the outer error is transport, the inner the
    /// member's answer.
    async fn post<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Result<Resp, String>, String> {
        self.post_to(addr, path, body, timeout)
            .await
            .map_err(|e| e.to_string())
    }

    /// As [`Member::post`], telling a request that never reached the member (no connection,
    /// no TLS session: it was not sent) from one whose fate is unknown.
    async fn post_to<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Result<Resp, String>, PostError> {
        let r = self
            .http
            .post(format!("{}://{addr}{path}", self.scheme()))
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    PostError::NotSent(e.to_string())
                } else {
                    PostError::Unknown(e.to_string())
                }
            })?;
        r.json::<Result<Resp, String>>()
            .await
            .map_err(|e| PostError::Unknown(e.to_string()))
    }

    /// The current leader's raft address, waiting up to the request timeout for one.
    async fn leader(&self) -> Result<(NodeId, String), StoreError> {
        let deadline = tokio::time::Instant::now() + self.opts.request_timeout;
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if let Some(l) = m.current_leader
                    && let Some(n) = m.membership_config.membership().get_node(&l)
                {
                    return Ok((l, n.addr.clone()));
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(unavailable(format!(
                    "no raft leader within {:?}: fewer than a majority of the members are reachable",
                    self.opts.request_timeout
                )));
            }
        }
    }

    /// Writes on the leader (here or forwarded) and returns once applied here.
    async fn write(&self, op: WriteOp) -> Result<Committed, StoreError> {
        let deadline = tokio::time::Instant::now() + self.opts.request_timeout;
        loop {
            let (leader, addr) = self.leader().await?;
            let applied = if leader == self.id {
                match tokio::time::timeout_at(deadline, self.submit(op.clone())).await {
                    Err(_) => {
                        return Err(unavailable(
                            "the write was not committed in time (no quorum?); it may still apply",
                        ));
                    }
                    Ok(Ok(o)) => o,
                    Ok(Err(Refused::NotLeader(_))) => {
                        // Leadership moved before the entry was accepted: nothing was written.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Ok(Err(Refused::Failed(e))) => return Err(unavailable(e)),
                }
            } else {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                // If another member becomes leader meanwhile, the one we forwarded to was cut
                // off or crashed: stop waiting for its answer. Whether it committed the write
                // first cannot be known here, so the caller gets 503 (not a retry, which could
                // apply the write twice), but in about an election instead of the timeout.
                let mut metrics = self.raft.metrics();
                let deposed = async {
                    let _ = metrics
                        .wait_for(|m| m.current_leader.is_some_and(|l| l != leader))
                        .await;
                };
                let forwarded = tokio::select! {
                    r = self.post_to::<_, Outcome>(&addr, "/raft/v2/write", &op, left) => r,
                    _ = deposed => Err(PostError::Unknown(format!(
                        "the leader at {addr} was replaced while the write was pending; it may or may not have been applied"
                    ))),
                };
                match forwarded {
                    Ok(Ok(a)) => a,
                    Ok(Err(e)) if e.starts_with(server::NOT_LEADER) => {
                        // The leader we knew stepped down before accepting: retry.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Ok(Err(e)) => return Err(unavailable(e)),
                    Err(PostError::NotSent(e)) => {
                        // The leader is gone (killed, restarting, cut off) and the write never
                        // left this member: wait for the election, as kube-apiserver hides
                        // etcd's from its clients, within the request's deadline.
                        if tokio::time::Instant::now() + LEADER_RETRY >= deadline {
                            return Err(unavailable(format!(
                                "no leader reachable within {:?}; the last one known, at \
                                 {addr}, refused the connection: {e}",
                                self.opts.request_timeout
                            )));
                        }
                        tracing::debug!(leader = %addr, error = %e, "leader unreachable; waiting for the next");
                        tokio::time::sleep(LEADER_RETRY).await;
                        continue;
                    }
                    Err(PostError::Unknown(e)) => {
                        if let Some(done) = self.created_meanwhile(&op).await {
                            return Ok(done);
                        }
                        return Err(unavailable(format!(
                            "forwarding the write to the leader at {addr} failed: {e}"
                        )));
                    }
                }
            };
            return match applied {
                Outcome::Ok { revision, object } => {
                    // Read-your-writes on this member.
                    self.store
                        .wait_applied(revision, self.opts.request_timeout)
                        .await?;
                    Ok(Committed { revision, object })
                }
                Outcome::Rejected(r) => Err(r.into()),
            };
        }
    }

    /// A create whose forwarding ended without an answer: whether it was applied. The
    /// object carries the uid the API server gave it, so once this member has caught up with
    /// the new leader, an object under the key with that uid is this very write (a retry
    /// could only answer AlreadyExists). Anything else stays "unknown" to the caller.
    async fn created_meanwhile(&self, op: &WriteOp) -> Option<Committed> {
        let WriteOp::Put {
            key,
            value,
            precondition: groundwork_store::Precondition::MustNotExist,
        } = op
        else {
            return None;
        };
        let uid = |v: &serde_json::Value| v["metadata"]["uid"].as_str().map(String::from);
        let ours = uid(&serde_json::from_str(value.as_str()).ok()?)?;
        let index = self.read_index().await.ok()?;
        self.store
            .wait_applied_index(index, self.opts.request_timeout)
            .await
            .ok()?;
        let stored = self.store.get(key).ok()??;
        // The object as stored now, at its revision (it may have changed since the create).
        (uid(&stored.object).as_deref() == Some(ours.as_str())).then(|| Committed {
            revision: stored.revision,
            object: groundwork_store::Json::encode(&stored.object),
        })
    }

    /// Hands `op` to the batcher and waits for its outcome (this member must be the leader).
    pub(crate) async fn submit(&self, op: WriteOp) -> Result<Outcome, Refused> {
        let (reply, rx) = oneshot::channel();
        self.batcher
            .send(Submit { op, reply })
            .await
            .map_err(|_| Refused::Failed("the raft member is stopping".into()))?;
        rx.await.map_err(|_| {
            Refused::Failed(
                "the write's log entry ended without its result; it may have been applied".into(),
            )
        })?
    }

    /// The read index a linearizable read here waits for: the leader's (this member's, or
    /// asked of it), retried while there is time left: a round without a quorum, or a
    /// leader that just changed, refuses the read only once the request timeout has passed.
    pub(crate) async fn read_index(&self) -> Result<u64, StoreError> {
        let deadline = tokio::time::Instant::now() + self.opts.request_timeout;
        loop {
            let (leader, addr) = self.leader().await?;
            let r = if leader == self.id {
                match tokio::time::timeout_at(deadline, self.leader_read_index()).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("no round completed in time".into()),
                }
            } else {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self
                    .post::<_, u64>(&addr, "/raft/v2/read-index", &(), left)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => Err(format!("asking the leader at {addr} failed: {e}")),
                }
            };
            let error = match r {
                Ok(i) => return Ok(i),
                Err(e) => e,
            };
            if tokio::time::Instant::now() + READ_RETRY >= deadline {
                return Err(unavailable(format!(
                    "the leader could not confirm its leadership with a quorum within {:?} \
                     (no quorum?): {error}",
                    self.opts.request_timeout
                )));
            }
            tracing::debug!(error = %error, "read index refused; retrying");
            tokio::time::sleep(READ_RETRY).await;
        }
    }

    /// The read index, asked of this member as the leader: openraft's (the commit index,
    /// after confirming leadership with a quorum), at least the log's last index at start. Reads
    /// waiting at once share one round ([`read_rounds`]).
    pub(crate) async fn leader_read_index(&self) -> Result<u64, ReadRefused> {
        let (tx, rx) = oneshot::channel();
        self.reads
            .send(tx)
            .map_err(|_| ReadRefused::Failed("the member is stopping".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(ReadRefused::Failed("the member is stopping".into())))
    }

    /// Adds a member: learner first (it catches up), then voter.
    pub async fn add_member(&self, id: NodeId, addr: String) -> Result<String, String> {
        self.raft
            .add_learner(id, BasicNode { addr: addr.clone() }, true)
            .await
            .map_err(|e| e.to_string())?;
        let mut voters = BTreeSet::new();
        voters.insert(id);
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(voters), false)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("member {id} at {addr} is a voter"))
    }

    /// Removes a member from the voters and the group.
    pub async fn remove_member(&self, id: NodeId) -> Result<String, String> {
        let mut ids = BTreeSet::new();
        ids.insert(id);
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
            .await
            .map_err(|e| e.to_string())?;
        // Drop it as a learner too (change_membership(retain=false) already did, but a
        // learner-only member needs this).
        let _ = self
            .raft
            .change_membership(ChangeMembers::RemoveNodes(ids), false)
            .await;
        Ok(format!("member {id} removed"))
    }

    /// A JSON summary for `groundwork cluster status`.
    pub fn status(&self) -> serde_json::Value {
        let m = self.raft.metrics().borrow().clone();
        let members: Vec<serde_json::Value> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| {
                serde_json::json!({
                    "id": id,
                    "addr": n.addr,
                    "voter": m.membership_config.membership().get_joint_config().iter().any(|c| c.contains(id)),
                })
            })
            .collect();
        serde_json::json!({
            "id": self.id,
            "addr": self.addr,
            "state": format!("{:?}", m.state),
            "term": m.current_term,
            "leader": m.current_leader,
            "lastLogIndex": m.last_log_index,
            "applied": m.last_applied.map(|l| l.index),
            "snapshot": m.snapshot.map(|l| l.index),
            "members": members,
            // A membership change in progress: joint configuration, or not yet applied here.
            "membershipChanging": m.membership_config.membership().get_joint_config().len() > 1
                || m.membership_config.log_id().map(|l| l.index) > m.last_applied.map(|l| l.index),
            "certificates": self.opts.certificates.iter()
                .map(|(name, until)| serde_json::json!({"name": name, "notAfter": until}))
                .collect::<Vec<_>>(),
        })
    }
}

impl Proposer for Member {
    fn propose(&self, op: WriteOp) -> BoxFuture<'_, Result<Committed, StoreError>> {
        Box::pin(self.write(op))
    }

    fn linearize(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let index = self.read_index().await?;
            self.store
                .wait_applied_index(index, self.opts.request_timeout)
                .await
        })
    }
}

/// Where a member's raft port is, as given on the command line.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?}: expected IP:PORT (e.g. 10.0.0.1:6444)"))
}
