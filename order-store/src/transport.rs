//! Node-to-node transport: Raft RPCs, snapshot chunks and forwarded client writes
//! over pipelined, length-prefixed frames (see `wire.rs`, docs/decisions.md D3).
//!
//! Client side: one TCP connection per peer, shared by every caller; requests
//! carry an id and responses may arrive in any order. A broken connection fails
//! every pending call at once and the next call reconnects.
//! Server side: each request runs in its own task; responses go back through a
//! single writer task per connection.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use roomkeeper_order_state::Command;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::faults::Faults;
use crate::proposer::{Proposer, WriteError};
use crate::raft_types::{
    BatchOutcome, NodeId, NodeInfo, Raft, Snapshot, SnapshotMeta, TypeConfig, Vote,
};
use crate::wire::{encode_frame, read_frame};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const SNAPSHOT_CHUNK_BYTES: usize = 4 * 1024 * 1024;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// A request between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    SnapshotChunk {
        vote: Vote,
        meta: SnapshotMeta,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    },
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// Client commands a follower forwards to the leader.
    Forward(Vec<Command>),
    /// A follower asks the leader for a linearizable read index.
    ReadIndex,
}

/// The answer to an `RpcRequest`.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    AppendEntries(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    SnapshotChunkAccepted,
    Snapshot(SnapshotResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    Forward(Result<BatchOutcome, WriteError>),
    /// The leader's confirmed read index, or why it could not give one.
    ReadIndex(Result<u64, WriteError>),
    /// The receiver could not handle the request (its Raft stopped, a bad chunk…).
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    id: u64,
    from: NodeId,
    body: T,
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request never left this node: the peer cannot have acted on it.
    #[error("request to peer {0} not sent: {1}")]
    NotSent(NodeId, String),
    /// The request was sent and the connection broke before the answer.
    #[error("peer {0} is unreachable: {1}")]
    Unreachable(NodeId, String),
    #[error("call to peer {0} timed out after {1:?}")]
    Timeout(NodeId, Duration),
    #[error("peer {0} failed the request: {1}")]
    Remote(NodeId, String),
    #[error("peer {0} answered with an unexpected message")]
    Protocol(NodeId),
}

type PendingMap = Arc<Mutex<HashMap<u64, oneshot::Sender<RpcResponse>>>>;

struct Connection {
    /// The address it was opened to: a peer that moved gets a new connection.
    addr: String,
    tx: mpsc::Sender<Vec<u8>>,
    pending: PendingMap,
    alive: Arc<AtomicBool>,
}

/// The connection to one peer, if open, and the last failed attempt to open one.
#[derive(Default)]
struct SlotState {
    conn: Option<Arc<Connection>>,
    failed: Option<(tokio::time::Instant, String)>,
}

type PeerSlot = Arc<tokio::sync::Mutex<SlotState>>;

/// After a failed connect, calls to that peer fail at once for this long
/// instead of queueing behind one connect timeout each.
const CONNECT_BACKOFF: Duration = Duration::from_millis(150);

/// Outgoing connections to every peer, shared by Raft replication and forwarding.
pub struct PeerPool {
    self_id: NodeId,
    next_id: AtomicU64,
    /// One slot per peer. A slot is locked while its connection is opened, the
    /// map only long enough to find the slot: connecting to a peer behind a
    /// partition (SYNs dropped, up to the connect timeout) must not hold up
    /// calls to every other peer.
    conns: std::sync::Mutex<HashMap<NodeId, PeerSlot>>,
    /// Each member's Raft address in the newest membership this node knows.
    /// Replication streams outlive membership changes, so a member whose
    /// address changed (a pod recreated with a new IP) is found here, not in
    /// the address its stream was created with.
    addresses: std::sync::RwLock<HashMap<NodeId, String>>,
    /// Addresses the operator told this node directly, for a group that lost
    /// its leader while members moved (no leader can record the new ones in
    /// the membership). Each one gives way once the membership agrees.
    seeded: std::sync::RwLock<HashMap<NodeId, String>>,
    faults: Arc<Faults>,
}

impl PeerPool {
    pub fn new(self_id: NodeId, faults: Arc<Faults>) -> Arc<Self> {
        Arc::new(Self {
            self_id,
            next_id: AtomicU64::new(1),
            conns: std::sync::Mutex::new(HashMap::new()),
            addresses: std::sync::RwLock::new(HashMap::new()),
            seeded: std::sync::RwLock::new(HashMap::new()),
            faults,
        })
    }

    /// Records the members' Raft addresses from the newest membership.
    pub fn learn_addresses(&self, members: impl IntoIterator<Item = (NodeId, String)>) {
        let fresh: HashMap<NodeId, String> = members.into_iter().collect();
        let old = self.addresses.read().map(|b| b.clone()).unwrap_or_default();
        if let Ok(mut seeded) = self.seeded.write() {
            // A seeded address gives way once the membership agrees, or once
            // the membership records anything new for that member (it moved
            // again, and the leader knows better now).
            seeded.retain(|id, addr| fresh.get(id) != Some(addr) && old.get(id) == fresh.get(id));
        }
        if let Ok(mut book) = self.addresses.write() {
            if *book != fresh {
                *book = fresh;
            }
        }
    }

    /// The address to reach `target` at: the newest membership's, else `fallback`.
    fn address_of(&self, target: NodeId, fallback: &str) -> String {
        let seeded = self
            .seeded
            .read()
            .ok()
            .and_then(|s| s.get(&target).cloned());
        seeded
            .or_else(|| {
                self.addresses
                    .read()
                    .ok()
                    .and_then(|b| b.get(&target).cloned())
            })
            .unwrap_or_else(|| fallback.to_string())
    }

    /// Dials `addresses` for these members until the membership records
    /// the same (see `seeded`). Returns the ids that were new or changed.
    pub fn seed_addresses(&self, addresses: HashMap<NodeId, String>) -> Vec<NodeId> {
        let mut changed = Vec::new();
        if let Ok(mut seeded) = self.seeded.write() {
            let book = self.addresses.read().map(|b| b.clone()).unwrap_or_default();
            for (id, addr) in addresses {
                if book.get(&id) == Some(&addr) {
                    seeded.remove(&id);
                    continue;
                }
                if seeded.get(&id) != Some(&addr) {
                    changed.push(id);
                    seeded.insert(id, addr);
                }
            }
        }
        changed.sort_unstable();
        changed
    }

    async fn connection(&self, target: NodeId, addr: &str) -> Result<Arc<Connection>, CallError> {
        let slot = {
            let mut conns = self
                .conns
                .lock()
                .map_err(|_| CallError::NotSent(target, "peer pool poisoned".into()))?;
            conns.entry(target).or_default().clone()
        };
        let mut conn_slot = slot.lock().await;
        if let Some(c) = conn_slot.conn.as_ref() {
            if c.alive.load(Ordering::Acquire) && c.addr == addr {
                return Ok(c.clone());
            }
        }
        if let Some((at, why)) = &conn_slot.failed {
            if at.elapsed() < CONNECT_BACKOFF {
                return Err(CallError::NotSent(target, why.clone()));
            }
        }
        let connected = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
        {
            Err(_) => Err(format!("connect to {addr} timed out")),
            Ok(Err(e)) => Err(format!("connect to {addr}: {e}")),
            Ok(Ok(stream)) => Ok(stream),
        };
        let stream = match connected {
            Ok(s) => {
                conn_slot.failed = None;
                s
            }
            Err(why) => {
                conn_slot.failed = Some((tokio::time::Instant::now(), why.clone()));
                return Err(CallError::NotSent(target, why));
            }
        };
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
        let pending: PendingMap = Arc::new(Mutex::new(HashMap::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let conn = Arc::new(Connection {
            addr: addr.to_string(),
            tx,
            pending: pending.clone(),
            alive: alive.clone(),
        });
        // Writer: coalesces queued frames into one flush.
        let alive_w = alive.clone();
        tokio::spawn(async move {
            let mut w = BufWriter::new(wr);
            while let Some(frame) = rx.recv().await {
                if w.write_all(&frame).await.is_err() {
                    break;
                }
                while let Ok(more) = rx.try_recv() {
                    if w.write_all(&more).await.is_err() {
                        alive_w.store(false, Ordering::Release);
                        return;
                    }
                }
                if w.flush().await.is_err() {
                    break;
                }
            }
            alive_w.store(false, Ordering::Release);
        });
        // Reader: routes responses to their callers; on error fails them all.
        tokio::spawn(async move {
            let mut r = BufReader::new(rd);
            let mut scratch = Vec::new();
            while let Ok(Some(env)) =
                read_frame::<_, Envelope<RpcResponse>>(&mut r, &mut scratch).await
            {
                let waiter = pending.lock().ok().and_then(|mut p| p.remove(&env.id));
                if let Some(w) = waiter {
                    let _ = w.send(env.body);
                }
            }
            alive.store(false, Ordering::Release);
            if let Ok(mut p) = pending.lock() {
                p.clear();
            }
        });
        conn_slot.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Sends one request to `target` at `addr` and waits for its response.
    pub async fn call(
        &self,
        target: NodeId,
        addr: &str,
        body: RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, CallError> {
        if self.faults.is_isolated(target) {
            return Err(CallError::NotSent(
                target,
                "isolated by an injected fault".into(),
            ));
        }
        if let Some(d) = self.faults.peer_delay(target) {
            tokio::time::sleep(d).await;
        }
        let loss = self.faults.loss(target);
        if loss == crate::faults::Loss::Request {
            tokio::time::sleep(timeout).await;
            return Err(CallError::Timeout(target, timeout));
        }
        let started = tokio::time::Instant::now();
        let addr = self.address_of(target, addr);
        let conn = self.connection(target, &addr).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(&Envelope {
            id,
            from: self.self_id,
            body,
        })
        .map_err(|e| CallError::NotSent(target, e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = conn.pending.lock() {
            p.insert(id, tx);
        }
        if conn.tx.send(frame).await.is_err() {
            conn.alive.store(false, Ordering::Release);
            if let Ok(mut p) = conn.pending.lock() {
                p.remove(&id);
            }
            return Err(CallError::NotSent(target, "connection closed".into()));
        }
        let answer = tokio::time::timeout(timeout, rx).await;
        if loss == crate::faults::Loss::Response {
            tokio::time::sleep_until(started + timeout).await;
            return Err(CallError::Timeout(target, timeout));
        }
        match answer {
            Ok(Ok(RpcResponse::Failed(msg))) => Err(CallError::Remote(target, msg)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(CallError::Unreachable(target, "connection lost".into())),
            Err(_) => {
                if let Ok(mut p) = conn.pending.lock() {
                    p.remove(&id);
                }
                Err(CallError::Timeout(target, timeout))
            }
        }
    }

    /// Asks the leader for a linearizable read index.
    pub async fn read_index(&self, leader: NodeId, addr: &str) -> Result<u64, WriteError> {
        match self
            .call(leader, addr, RpcRequest::ReadIndex, FORWARD_TIMEOUT)
            .await
        {
            Ok(RpcResponse::ReadIndex(r)) => r,
            Ok(_) => Err(WriteError::Unavailable(
                "leader answered a read index with the wrong message".into(),
            )),
            Err(CallError::Timeout(..)) => Err(WriteError::NoQuorum),
            Err(_) => Err(WriteError::NoLeader),
        }
    }

    /// Forwards client commands to the leader.
    pub async fn forward(
        &self,
        leader: NodeId,
        addr: &str,
        commands: Vec<Command>,
    ) -> Result<BatchOutcome, WriteError> {
        match self
            .call(leader, addr, RpcRequest::Forward(commands), FORWARD_TIMEOUT)
            .await
        {
            Ok(RpcResponse::Forward(r)) => r,
            Ok(_) => Err(WriteError::Unavailable(
                "leader answered a forward with the wrong message".into(),
            )),
            // The leader may have received the commands: their fate is unknown.
            Err(CallError::Timeout(..)) => Err(WriteError::OutcomeUnknown),
            // Never sent: nothing happened, the leader is just not reachable.
            Err(CallError::NotSent(..)) => Err(WriteError::NoLeader),
            Err(_) => Err(WriteError::OutcomeUnknown),
        }
    }
}

fn to_rpc_error(e: CallError) -> RPCError<TypeConfig> {
    match e {
        CallError::NotSent(..) | CallError::Unreachable(..) => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

/// openraft's network factory over the peer pool.
#[derive(Clone)]
pub struct Network {
    pub pool: Arc<PeerPool>,
}

/// A client for one peer, as openraft's replication tasks use it.
pub struct PeerClient {
    pool: Arc<PeerPool>,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerClient {
            pool: self.pool.clone(),
            target,
            addr: node.raft_addr.clone(),
        }
    }
}

impl PeerClient {
    async fn rpc(
        &self,
        req: RpcRequest,
        option: &RPCOption,
    ) -> Result<RpcResponse, RPCError<TypeConfig>> {
        self.pool
            .call(self.target, &self.addr, req, option.soft_ttl())
            .await
            .map_err(to_rpc_error)
    }

    fn unexpected(&self) -> RPCError<TypeConfig> {
        to_rpc_error(CallError::Protocol(self.target))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(RpcRequest::AppendEntries(rpc), &option).await? {
            RpcResponse::AppendEntries(r) => Ok(r),
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(RpcRequest::Vote(rpc), &option).await? {
            RpcResponse::Vote(r) => Ok(r),
            _ => Err(self.unexpected()),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(RpcRequest::PreVote(rpc), &option).await? {
            RpcResponse::Vote(r) => Ok(r),
            _ => Err(self.unexpected()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let send = async {
            let bytes = snapshot.snapshot.into_inner();
            let chunks: Vec<&[u8]> = if bytes.is_empty() {
                vec![&[][..]]
            } else {
                bytes.chunks(SNAPSHOT_CHUNK_BYTES).collect()
            };
            let n = chunks.len();
            let mut offset = 0u64;
            // Chunks may take longer than a heartbeat-sized TTL on a slow link.
            let ttl = option.hard_ttl().max(Duration::from_secs(10));
            for (i, chunk) in chunks.into_iter().enumerate() {
                let done = i + 1 == n;
                let req = RpcRequest::SnapshotChunk {
                    vote,
                    meta: snapshot.meta.clone(),
                    offset,
                    data: chunk.to_vec(),
                    done,
                };
                offset += chunk.len() as u64;
                let resp = self
                    .pool
                    .call(self.target, &self.addr, req, ttl)
                    .await
                    .map_err(|e| StreamingError::from(to_rpc_error(e)))?;
                match resp {
                    RpcResponse::SnapshotChunkAccepted if !done => {}
                    RpcResponse::Snapshot(r) if done => return Ok(r),
                    _ => return Err(StreamingError::from(self.unexpected())),
                }
            }
            Err(StreamingError::from(self.unexpected()))
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = send => res,
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(RpcRequest::TransferLeader(req), &option).await? {
            RpcResponse::TransferLeader(r) => Ok(r),
            _ => Err(self.unexpected()),
        }
    }
}

/// When this node last heard from a leader (for bounded-stale follower reads).
#[derive(Debug)]
pub struct LeaderContact {
    started: Instant,
    last_ms: AtomicU64,
}

impl LeaderContact {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
        })
    }

    fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last append from a leader, if ever.
    pub fn since_last(&self) -> Option<Duration> {
        match self.last_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }
}

/// Everything the server side needs to answer peers.
#[derive(Clone)]
pub struct RaftServer {
    pub raft: Raft,
    pub proposer: Proposer,
    pub faults: Arc<Faults>,
    pub contact: Arc<LeaderContact>,
}

impl RaftServer {
    /// Accepts peer connections until the listener fails.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let me = self.clone();
                    tokio::spawn(async move { me.connection(stream).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "raft listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connection(self, stream: TcpStream) {
        let (rd, wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
        tokio::spawn(async move {
            let mut w = BufWriter::new(wr);
            while let Some(frame) = rx.recv().await {
                if w.write_all(&frame).await.is_err() {
                    return;
                }
                while let Ok(more) = rx.try_recv() {
                    if w.write_all(&more).await.is_err() {
                        return;
                    }
                }
                if w.flush().await.is_err() {
                    return;
                }
            }
        });
        let mut r = BufReader::new(rd);
        let mut scratch = Vec::new();
        let mut snapshot_buf: Vec<u8> = Vec::new();
        loop {
            let env = match read_frame::<_, Envelope<RpcRequest>>(&mut r, &mut scratch).await {
                Ok(Some(env)) => env,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "peer connection closed");
                    return;
                }
            };
            if self.faults.is_isolated(env.from) {
                continue; // dropped on the floor, as a partition would
            }
            let id = env.id;
            match env.body {
                RpcRequest::SnapshotChunk {
                    vote,
                    meta,
                    offset,
                    data,
                    done,
                } => {
                    if offset == 0 {
                        snapshot_buf.clear();
                    }
                    if offset != snapshot_buf.len() as u64 {
                        let msg = format!(
                            "snapshot chunk at {offset}, expected {}",
                            snapshot_buf.len()
                        );
                        snapshot_buf.clear();
                        respond(&tx, id, RpcResponse::Failed(msg)).await;
                        continue;
                    }
                    snapshot_buf.extend_from_slice(&data);
                    if !done {
                        respond(&tx, id, RpcResponse::SnapshotChunkAccepted).await;
                        continue;
                    }
                    let bytes = std::mem::take(&mut snapshot_buf);
                    let raft = self.raft.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let snap = openraft::Snapshot {
                            meta,
                            snapshot: Cursor::new(bytes),
                        };
                        let resp = match raft.install_full_snapshot(vote, snap).await {
                            Ok(r) => RpcResponse::Snapshot(r),
                            Err(e) => RpcResponse::Failed(e.to_string()),
                        };
                        respond(&tx, id, resp).await;
                    });
                }
                body => {
                    let me = self.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let resp = me.handle(body).await;
                        respond(&tx, id, resp).await;
                    });
                }
            }
        }
    }

    async fn handle(&self, body: RpcRequest) -> RpcResponse {
        match body {
            RpcRequest::AppendEntries(req) => {
                let res = self.raft.append_entries(req).await;
                if matches!(
                    res,
                    Ok(AppendEntriesResponse::Success)
                        | Ok(AppendEntriesResponse::PartialSuccess(_))
                ) {
                    self.contact.touch();
                }
                match res {
                    Ok(r) => RpcResponse::AppendEntries(r),
                    Err(e) => RpcResponse::Failed(e.to_string()),
                }
            }
            RpcRequest::Vote(req) => match self.raft.vote(req).await {
                Ok(r) => RpcResponse::Vote(r),
                Err(e) => RpcResponse::Failed(e.to_string()),
            },
            RpcRequest::PreVote(req) => match self.raft.pre_vote(req).await {
                Ok(r) => RpcResponse::Vote(r),
                Err(e) => RpcResponse::Failed(e.to_string()),
            },
            RpcRequest::TransferLeader(req) => match self.raft.handle_transfer_leader(req).await {
                Ok(r) => RpcResponse::TransferLeader(r),
                Err(e) => RpcResponse::Failed(e.to_string()),
            },
            RpcRequest::Forward(commands) => {
                RpcResponse::Forward(self.proposer.propose_local(commands).await)
            }
            RpcRequest::ReadIndex => RpcResponse::ReadIndex(leader_read_index(&self.raft).await),
            RpcRequest::SnapshotChunk { .. } => {
                RpcResponse::Failed("snapshot chunk out of band".into())
            }
        }
    }
}

/// On the leader: confirms leadership with a quorum and returns the index a
/// linearizable read must wait for.
pub async fn leader_read_index(raft: &Raft) -> Result<u64, WriteError> {
    use openraft::errors::LinearizableReadError;
    match raft
        .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
        .await
    {
        Ok(read) => Ok(read.log_id().index),
        Err(openraft::errors::RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
            Err(WriteError::NotLeader {
                leader: f.leader_id,
            })
        }
        Err(openraft::errors::RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {
            Err(WriteError::NoQuorum)
        }
        Err(e) => Err(WriteError::Unavailable(e.to_string())),
    }
}

async fn respond(tx: &mpsc::Sender<Vec<u8>>, id: u64, body: RpcResponse) {
    match encode_frame(&Envelope { id, from: 0, body }) {
        Ok(frame) => {
            let _ = tx.send(frame).await;
        }
        Err(e) => tracing::warn!(error = %e, "cannot encode a response to a peer"),
    }
}

#[cfg(test)]
mod addresses {
    use super::*;

    fn pool() -> Arc<PeerPool> {
        PeerPool::new(1, crate::faults::Faults::new())
    }

    #[test]
    fn seeded_addresses_win_until_the_membership_agrees_or_moves_on() {
        let p = pool();
        p.learn_addresses([(2, "10.0.0.2:7101".to_string())]);
        assert_eq!(p.address_of(2, "x"), "10.0.0.2:7101");
        assert_eq!(
            p.seed_addresses(HashMap::from([(2, "10.0.1.2:7101".into())])),
            vec![2]
        );
        assert!(p
            .seed_addresses(HashMap::from([(2, "10.0.1.2:7101".into())]))
            .is_empty());
        assert_eq!(p.address_of(2, "x"), "10.0.1.2:7101");
        // An unrelated membership refresh keeps the seed.
        p.learn_addresses([(2, "10.0.0.2:7101".to_string())]);
        assert_eq!(p.address_of(2, "x"), "10.0.1.2:7101");
        // The membership agrees: the seed is dropped.
        p.learn_addresses([(2, "10.0.1.2:7101".to_string())]);
        assert!(p.seeded.read().unwrap().is_empty());
        // Seeded again, then the membership records yet another address.
        p.seed_addresses(HashMap::from([(2, "10.0.2.2:7101".into())]));
        p.learn_addresses([(2, "10.0.3.2:7101".to_string())]);
        assert_eq!(p.address_of(2, "x"), "10.0.3.2:7101");
    }
}

#[cfg(test)]
mod fuzz {
    //! Peers are not trusted to send well-formed frames: decoding any bytes must
    //! fail cleanly, never panic or allocate without bound.
    use proptest::prelude::*;

    use super::{Envelope, RpcRequest, RpcResponse};
    use crate::wire::read_frame;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic_the_request_decoder(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            rt.block_on(async {
                let mut r = &frame[..];
                let mut scratch = Vec::new();
                let _ = read_frame::<_, Envelope<RpcRequest>>(&mut r, &mut scratch).await;
                let mut r = &frame[..];
                let _ = read_frame::<_, Envelope<RpcResponse>>(&mut r, &mut scratch).await;
            });
        }

        #[test]
        fn forwarded_commands_round_trip(keys in prop::collection::vec("[a-z0-9]{1,12}", 1..20), qty in 1u32..100) {
            use roomkeeper_order_state::Command;
            let cmds: Vec<Command> = keys.iter().map(|k| Command::PlaceOrder {
                room: "r".into(), sku: "s".into(), buyer: k.clone(), qty,
                idempotency_key: k.clone(), contact: vec![1, 2],
            }).collect();
            let env = Envelope { id: 9, from: 2, body: RpcRequest::Forward(cmds.clone()) };
            let frame = crate::wire::encode_frame(&env).expect("encode");
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let got = rt.block_on(async {
                let mut r = &frame[..];
                let mut scratch = Vec::new();
                read_frame::<_, Envelope<RpcRequest>>(&mut r, &mut scratch).await
            }).expect("decode").expect("one frame");
            match got.body {
                RpcRequest::Forward(back) => prop_assert_eq!(back, cmds),
                other => prop_assert!(false, "decoded {:?}", other),
            }
        }
    }
}
