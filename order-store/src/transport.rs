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
use std::net::IpAddr;
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
use roomkeeper_order_state::{Command, Outcome, RejectCode, ShardState};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::auth::{Principal, TokenTable, Verb};
use crate::contact::ContactKeys;
use crate::dead_leader::DeadLeader;
use crate::faults::Faults;
use crate::metrics::NodeMetrics;
use crate::proposer::{Proposer, WriteError};
use crate::raft_tls::RaftTls;
use crate::raft_types::{
    BatchOutcome, NodeId, NodeInfo, Raft, Snapshot, SnapshotMeta, TypeConfig, Vote,
};
use crate::state_machine::StateMachine;
use crate::wire::{encode_frame, read_frame, read_frame_within, FrameDeadline, WireError};

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
    /// Client commands a follower forwards to the leader, each with the
    /// token (name and scope) it came with.
    Forward(ForwardBatch),
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

/// Client commands forwarded to the leader with the identity of the client
/// each came from: the leader authorizes every command again against its own
/// token table (a follower cannot widen a token's scope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardBatch {
    /// The distinct callers of the batch.
    pub principals: Vec<Principal>,
    /// Each command and the index of its caller in `principals`.
    pub commands: Vec<(u32, Command)>,
}

impl ForwardBatch {
    /// Pairs `commands[i]` with `principals[i]`; callers shared by several
    /// commands (one token, many requests) are sent once.
    pub fn new(commands: Vec<Command>, principals: &[Arc<Principal>]) -> Self {
        let mut distinct: Vec<&Arc<Principal>> = Vec::new();
        let mut out = Vec::with_capacity(commands.len());
        for (cmd, p) in commands.into_iter().zip(principals) {
            let i = match distinct
                .iter()
                .position(|d| Arc::ptr_eq(d, p) || ***d == **p)
            {
                Some(i) => i,
                None => {
                    distinct.push(p);
                    distinct.len() - 1
                }
            };
            out.push((i as u32, cmd));
        }
        Self {
            principals: distinct.into_iter().map(|p| (**p).clone()).collect(),
            commands: out,
        }
    }
}

/// What a client command needs: a verb, and the room it acts in (`None`:
/// the room of an order the state does not hold).
fn needs<'a>(state: &'a ShardState, cmd: &'a Command) -> Option<(Verb, Option<&'a str>)> {
    match cmd {
        Command::PlaceOrder { room, .. } => Some((Verb::Order, Some(room))),
        Command::UpsertRoom { room, .. }
        | Command::UpsertRoomWithWindows { room, .. }
        | Command::UpsertListing { room, .. } => Some((Verb::ManageListings, Some(room))),
        Command::CancelOrder { order_id } | Command::PayOrder { order_id } => {
            Some((Verb::Order, state.order_room(*order_id)))
        }
        // No client token may pause sales or re-seal contacts: those are the
        // operator's, proposed on the leader.
        Command::SetSalesPaused { .. } | Command::ResealContacts { .. } => None,
    }
}

/// The leader's check of one forwarded command: allowed only when both the
/// scope the follower sent and this node's own scope for that token name
/// allow it. `Some(code)` is the refusal.
pub fn authorize_forwarded(
    table: &TokenTable,
    state: &ShardState,
    batch: &ForwardBatch,
    index: u32,
    cmd: &Command,
) -> Option<RejectCode> {
    let Some(sent) = batch.principals.get(index as usize) else {
        return Some(RejectCode::Forbidden);
    };
    let Some(own) = table.scope_of(&sent.name) else {
        return Some(RejectCode::Forbidden);
    };
    let Some((verb, room)) = needs(state, cmd) else {
        return Some(RejectCode::Forbidden);
    };
    let ok = match room {
        Some(room) => own.allows(verb, room) && sent.scope.allows(verb, room),
        None => {
            let everywhere = |s: &crate::auth::Scope| s.every_room() && s.verbs.contains(verb);
            if everywhere(own) && everywhere(&sent.scope) {
                true
            } else {
                return Some(RejectCode::OrderNotFound);
            }
        }
    };
    (!ok).then_some(RejectCode::Forbidden)
}

/// One frame. Requests name the cluster, the sender and the node they are
/// for: a frame for another cluster or node is refused and counted, and with
/// TLS `from` must be the node the sender's certificate names.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope<T> {
    pub(crate) id: u64,
    pub(crate) cluster: String,
    /// The Raft group (shard) the frame is for; a node hosts
    /// [`HOSTED_SHARD`] only until rooms are sharded (issue 13).
    pub(crate) shard: ShardId,
    pub(crate) from: NodeId,
    pub(crate) to: NodeId,
    pub(crate) body: T,
}

/// A Raft group's id within a cluster.
pub type ShardId = u32;

/// The one shard a node hosts until rooms are sharded over many Raft groups
/// (issue 13): frames name it, and a frame for any other is refused.
pub const HOSTED_SHARD: ShardId = 0;

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

/// A peer stream, plain TCP or TLS over it.
trait PeerIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> PeerIo for T {}
type PeerStream = Box<dyn PeerIo>;

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
    /// The cluster every frame names.
    cluster: String,
    /// Mutual TLS to peers; `None` only with `--insecure-plaintext-raft`.
    tls: Option<Arc<RaftTls>>,
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
    pub fn new(
        self_id: NodeId,
        cluster: String,
        tls: Option<Arc<RaftTls>>,
        faults: Arc<Faults>,
    ) -> Arc<Self> {
        Arc::new(Self {
            self_id,
            cluster,
            tls,
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

    /// Opens a stream to `target`: TCP, then TLS asking for `target`'s name.
    async fn open_stream(&self, target: NodeId, addr: &str) -> Result<PeerStream, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name = tls
            .server_name(target)
            .ok_or_else(|| format!("no TLS name for node {target}"))?;
        let stream = tls
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with node {target} at {addr}: {e}"))?;
        Ok(Box::new(stream))
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
        let connected =
            match tokio::time::timeout(CONNECT_TIMEOUT, self.open_stream(target, addr)).await {
                Err(_) => Err(format!("connect to {addr} timed out")),
                Ok(Err(e)) => Err(e),
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
        let (rd, wr) = tokio::io::split(stream);
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
            cluster: self.cluster.clone(),
            shard: HOSTED_SHARD,
            from: self.self_id,
            to: target,
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
        batch: ForwardBatch,
    ) -> Result<BatchOutcome, WriteError> {
        match self
            .call(leader, addr, RpcRequest::Forward(batch), FORWARD_TIMEOUT)
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

/// Bounds of the Raft listener: what one unauthenticated remote can hold.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Open peer connections beyond this are closed at once.
    pub max_connections: usize,
    /// Open connections from one remote IP address beyond this are closed at once.
    pub max_connections_per_address: usize,
    /// How long a frame may take once started; also the time a new
    /// connection has to deliver its first complete frame.
    pub frame: FrameDeadline,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_connections_per_address: 64,
            frame: FrameDeadline::default(),
        }
    }
}

/// Open connections, in total and per remote address.
#[derive(Default)]
struct ConnCounts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Held by a connection's task; gives its place back when dropped.
struct ConnPermit {
    counts: Arc<Mutex<ConnCounts>>,
    addr: IpAddr,
    open: prometheus::IntGauge,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        if let Ok(mut c) = self.counts.lock() {
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.per_address.get_mut(&self.addr) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.per_address.remove(&self.addr);
                }
            }
        }
        self.open.dec();
    }
}

/// Everything the server side needs to answer peers.
#[derive(Clone)]
pub struct RaftServer {
    pub node_id: NodeId,
    pub cluster: String,
    pub raft: Raft,
    pub proposer: Proposer,
    pub faults: Arc<Faults>,
    pub contact: Arc<LeaderContact>,
    pub metrics: NodeMetrics,
    pub limits: ListenerLimits,
    /// Mutual TLS; `None` only with `--insecure-plaintext-raft`.
    pub tls: Option<Arc<RaftTls>>,
    /// Opens forwarded contacts: a forwarded order must carry a sealed one.
    pub keyring: Arc<ContactKeys>,
    /// This node's client tokens: forwarded writes are authorized again.
    pub clients: Arc<TokenTable>,
    /// The state forwarded cancels and pays are authorized against.
    pub sm: StateMachine,
    /// Lifts the lease for votes when the leader's process is gone.
    pub dead_leader: Arc<DeadLeader>,
    counts: Arc<Mutex<ConnCounts>>,
}

/// What the server side is built from (see `RaftServer`).
pub struct RaftServerParts {
    pub node_id: NodeId,
    pub cluster: String,
    pub raft: Raft,
    pub proposer: Proposer,
    pub faults: Arc<Faults>,
    pub contact: Arc<LeaderContact>,
    pub metrics: NodeMetrics,
    pub limits: ListenerLimits,
    pub tls: Option<Arc<RaftTls>>,
    pub keyring: Arc<ContactKeys>,
    pub clients: Arc<TokenTable>,
    pub sm: StateMachine,
    pub dead_leader: Arc<DeadLeader>,
}

/// Why a request frame is refused; the label of
/// `roomkeeper_raft_requests_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The frame names another cluster.
    WrongCluster,
    /// The frame is for a shard (Raft group) this node does not host.
    WrongShard,
    /// The frame is for another node.
    WrongNode,
    /// `from` is not the node the TLS certificate names, or the Raft message
    /// claims another leader or candidate than its sender.
    IdentityMismatch,
    /// A forward or read index from a node outside this leader's membership.
    NotMember,
    /// A forwarded order whose contact is not sealed with the cluster's keys.
    UnsealedContact,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::WrongCluster => "wrong_cluster",
            Refusal::WrongShard => "wrong_shard",
            Refusal::WrongNode => "wrong_node",
            Refusal::IdentityMismatch => "identity_mismatch",
            Refusal::NotMember => "not_member",
            Refusal::UnsealedContact => "unsealed_contact",
        }
    }
}

/// The node id a Raft vote is for (the leader or candidate).
fn vote_node(v: &Vote) -> NodeId {
    *openraft::vote::RaftLeaderId::node_id(v.leader_id())
}

impl RaftServer {
    pub fn new(p: RaftServerParts) -> Self {
        Self {
            node_id: p.node_id,
            cluster: p.cluster,
            raft: p.raft,
            proposer: p.proposer,
            faults: p.faults,
            contact: p.contact,
            metrics: p.metrics,
            limits: p.limits,
            tls: p.tls,
            keyring: p.keyring,
            clients: p.clients,
            sm: p.sm,
            dead_leader: p.dead_leader,
            counts: Arc::new(Mutex::new(ConnCounts::default())),
        }
    }

    /// Checks a request against the frame's header, the sender's certificate
    /// and this node's membership (the rule per request: docs/security.md).
    fn check(&self, env: &Envelope<RpcRequest>, peer: Option<NodeId>) -> Result<(), Refusal> {
        if env.cluster != self.cluster {
            return Err(Refusal::WrongCluster);
        }
        if env.shard != HOSTED_SHARD {
            return Err(Refusal::WrongShard);
        }
        if env.to != self.node_id {
            return Err(Refusal::WrongNode);
        }
        if peer.is_some_and(|p| p != env.from) {
            return Err(Refusal::IdentityMismatch);
        }
        let claimed = match &env.body {
            RpcRequest::AppendEntries(r) => Some(vote_node(&r.vote)),
            RpcRequest::Vote(r) | RpcRequest::PreVote(r) => Some(vote_node(&r.vote)),
            RpcRequest::SnapshotChunk { vote, .. } => Some(vote_node(vote)),
            RpcRequest::TransferLeader(r) => Some(vote_node(r.from_leader())),
            RpcRequest::Forward(_) | RpcRequest::ReadIndex => None,
        };
        if claimed.is_some_and(|c| c != env.from) {
            return Err(Refusal::IdentityMismatch);
        }
        use openraft::async_runtime::WatchReceiver;
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        let stored = &m.membership_config;
        let membership = stored.membership();
        let is_node = membership.get_node(&env.from).is_some();
        let is_voter = membership.voter_ids().any(|v| v == env.from);
        // This node knows no membership yet (a learner being added), or the
        // request is for a term after its newest membership was written (the
        // sender may have been added since): Raft must let those through.
        let membership_term = stored
            .log_id()
            .as_ref()
            .map(|l| openraft::vote::RaftLeaderId::term(l.committed_leader_id()));
        let newer = |v: &Vote| {
            membership_term.is_none_or(|t| openraft::vote::RaftLeaderId::term(v.leader_id()) > t)
        };
        let allowed = match &env.body {
            // Only members may use the leader: it acts on their word.
            RpcRequest::Forward(_) | RpcRequest::ReadIndex => is_node,
            // Leaders: any member (voters replicate to learners), or newer.
            RpcRequest::AppendEntries(r) => is_node || newer(&r.vote),
            RpcRequest::SnapshotChunk { vote, .. } => is_node || newer(vote),
            RpcRequest::TransferLeader(r) => is_node || newer(r.from_leader()),
            // Candidates: voters only, or newer.
            RpcRequest::Vote(r) | RpcRequest::PreVote(r) => is_voter || newer(&r.vote),
        };
        if !allowed {
            return Err(Refusal::NotMember);
        }
        drop(m);
        if let RpcRequest::Forward(batch) = &env.body {
            let keyring = self.keyring.get();
            for (_, cmd) in &batch.commands {
                if let Command::PlaceOrder { contact, .. } = cmd {
                    if keyring.open(contact).is_err() {
                        return Err(Refusal::UnsealedContact);
                    }
                }
            }
        }
        Ok(())
    }

    /// Accepts peer connections until the listener fails.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    let Some(permit) = self.admit(remote.ip()) else {
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.accept(stream).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "raft listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Takes a connection slot for `addr`, or counts why there is none.
    fn admit(&self, addr: IpAddr) -> Option<ConnPermit> {
        let refused = {
            let Ok(mut c) = self.counts.lock() else {
                return None;
            };
            let from_addr = c.per_address.get(&addr).copied().unwrap_or(0);
            if c.total >= self.limits.max_connections {
                Some("total_limit")
            } else if from_addr >= self.limits.max_connections_per_address {
                Some("address_limit")
            } else {
                c.total += 1;
                *c.per_address.entry(addr).or_insert(0) += 1;
                None
            }
        };
        if let Some(reason) = refused {
            self.refuse_connection(reason);
            tracing::debug!(%addr, reason, "raft connection refused");
            return None;
        }
        self.metrics.raft_connections_open.inc();
        Some(ConnPermit {
            counts: self.counts.clone(),
            addr,
            open: self.metrics.raft_connections_open.clone(),
        })
    }

    /// Runs one accepted connection: the TLS handshake (within the frame
    /// deadline) and the peer's identity first, unless plaintext.
    async fn accept(self, stream: TcpStream) {
        let Some(tls) = self.tls.clone() else {
            return self.connection(stream, None).await;
        };
        let handshake = tokio::time::timeout(self.limits.frame.base, tls.acceptor.accept(stream));
        let stream = match handshake.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.refuse_connection("tls_handshake");
                tracing::debug!(error = %e, "raft TLS handshake failed");
                return;
            }
            Err(_) => {
                self.refuse_connection("tls_handshake_timeout");
                return;
            }
        };
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| crate::raft_tls::identity_of(cert, &self.cluster));
        let Some(peer) = peer else {
            self.refuse_connection("no_node_identity");
            tracing::warn!("raft peer certificate names no node of this cluster");
            return;
        };
        self.connection(stream, Some(peer)).await
    }

    fn refuse_connection(&self, reason: &'static str) {
        self.metrics
            .raft_connections_refused_total
            .with_label_values(&[reason])
            .inc();
    }

    fn refuse_request(&self, reason: &'static str) {
        self.metrics
            .raft_requests_refused_total
            .with_label_values(&[reason])
            .inc();
    }

    /// Serves one connection; `peer` is the node its certificate names.
    async fn connection<S>(self, stream: S, peer: Option<NodeId>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
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
        let mut first = true;
        loop {
            let read = read_frame_within::<_, Envelope<RpcRequest>>(
                &mut r,
                &mut scratch,
                self.limits.frame,
            );
            // A new connection must say something within the frame deadline:
            // idle sockets that never send a frame do not hold a slot.
            let read = if first {
                match tokio::time::timeout(self.limits.frame.base, read).await {
                    Ok(r) => r,
                    Err(_) => Err(WireError::Timeout),
                }
            } else {
                read.await
            };
            first = false;
            let env = match read {
                Ok(Some(env)) => env,
                Ok(None) => return,
                Err(e) => {
                    let reason = match e {
                        WireError::TooLarge(_) => Some("frame_too_large"),
                        WireError::Timeout => Some("frame_timeout"),
                        WireError::Decode(_) => Some("malformed"),
                        WireError::Io(_) | WireError::Encode(_) => None,
                    };
                    if let Some(reason) = reason {
                        self.refuse_request(reason);
                    }
                    tracing::debug!(error = %e, "peer connection closed");
                    return;
                }
            };
            if let Err(refusal) = self.check(&env, peer) {
                self.refuse_request(refusal.label());
                tracing::warn!(
                    from = env.from,
                    peer = ?peer,
                    reason = refusal.label(),
                    "raft request refused"
                );
                match refusal {
                    // Members that lag may not know of a new member yet: say
                    // why, keep the connection.
                    Refusal::NotMember | Refusal::UnsealedContact => {
                        let msg = format!("refused: {}", refusal.label());
                        respond(&tx, env.id, RpcResponse::Failed(msg)).await;
                        continue;
                    }
                    _ => return,
                }
            }
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
                    let dead_leader = self.dead_leader.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let snap = openraft::Snapshot {
                            meta,
                            snapshot: Cursor::new(bytes),
                        };
                        let resp = match raft.install_full_snapshot(vote, snap).await {
                            Ok(r) => {
                                dead_leader.silence.heard();
                                RpcResponse::Snapshot(r)
                            }
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
                match &res {
                    Ok(AppendEntriesResponse::Success)
                    | Ok(AppendEntriesResponse::PartialSuccess(_)) => {
                        self.contact.touch();
                        self.dead_leader.silence.heard();
                    }
                    // The leader counts a conflict as an acknowledgement of
                    // its term too (its lease clock moves).
                    Ok(AppendEntriesResponse::Conflict) => self.dead_leader.silence.heard(),
                    _ => {}
                }
                match res {
                    Ok(r) => RpcResponse::AppendEntries(r),
                    Err(e) => RpcResponse::Failed(e.to_string()),
                }
            }
            RpcRequest::Vote(req) => {
                let candidate = vote_node(&req.vote);
                let req = self.dead_leader.vouch(&self.raft, req, candidate).await;
                match self.raft.vote(req).await {
                    Ok(r) => RpcResponse::Vote(r),
                    Err(e) => RpcResponse::Failed(e.to_string()),
                }
            }
            RpcRequest::PreVote(req) => match self.raft.pre_vote(req).await {
                Ok(r) => RpcResponse::Vote(r),
                Err(e) => RpcResponse::Failed(e.to_string()),
            },
            RpcRequest::TransferLeader(req) => match self.raft.handle_transfer_leader(req).await {
                Ok(r) => RpcResponse::TransferLeader(r),
                Err(e) => RpcResponse::Failed(e.to_string()),
            },
            RpcRequest::Forward(batch) => RpcResponse::Forward(self.forwarded(batch).await),
            RpcRequest::ReadIndex => RpcResponse::ReadIndex(leader_read_index(&self.raft).await),
            RpcRequest::SnapshotChunk { .. } => {
                RpcResponse::Failed("snapshot chunk out of band".into())
            }
        }
    }
}

impl RaftServer {
    /// Proposes the forwarded commands this node's token table allows; the
    /// others are answered `forbidden` (or `order_not_found`) in place and
    /// counted as `roomkeeper_raft_requests_refused_total{reason="forbidden"}`.
    async fn forwarded(&self, batch: ForwardBatch) -> Result<BatchOutcome, WriteError> {
        let verdicts: Vec<Option<RejectCode>> = self.sm.read(|s| {
            batch
                .commands
                .iter()
                .map(|(i, cmd)| authorize_forwarded(&self.clients, s, &batch, *i, cmd))
                .collect()
        });
        let refused = verdicts.iter().filter(|v| v.is_some()).count();
        if refused == 0 {
            let commands = batch.commands.into_iter().map(|(_, c)| c).collect();
            return self.proposer.propose_local(commands).await;
        }
        for ((i, _), v) in batch.commands.iter().zip(&verdicts) {
            if v == &Some(RejectCode::Forbidden) {
                self.refuse_request("forbidden");
                let name = batch.principals.get(*i as usize).map(|p| p.name.as_str());
                tracing::warn!(token = ?name, "forwarded write refused: outside the token's scope");
            }
        }
        let allowed: Vec<Command> = batch
            .commands
            .into_iter()
            .zip(&verdicts)
            .filter(|(_, v)| v.is_none())
            .map(|((_, c), _)| c)
            .collect();
        let mut done = match allowed.is_empty() {
            true => Vec::new(),
            false => self.proposer.propose_local(allowed).await?.outcomes,
        }
        .into_iter();
        let mut outcomes = Vec::with_capacity(verdicts.len());
        for v in verdicts {
            match v {
                Some(code) => outcomes.push(Outcome::Rejected {
                    code,
                    replayed: false,
                }),
                None => match done.next() {
                    Some(o) => outcomes.push(o),
                    None => return Err(WriteError::OutcomeUnknown),
                },
            }
        }
        Ok(BatchOutcome { outcomes })
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
    let env = Envelope {
        id,
        cluster: String::new(),
        shard: HOSTED_SHARD,
        from: 0,
        to: 0,
        body,
    };
    match encode_frame(&env) {
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
        PeerPool::new(1, "c".into(), None, crate::faults::Faults::new())
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
mod forwarded_identity {
    use super::*;
    use crate::auth::{token_file_secret, Scope};
    use roomkeeper_order_state::{ListingState, RoomState, Stamped};

    fn order(room: &str) -> Command {
        Command::PlaceOrder {
            room: room.into(),
            sku: "s".into(),
            buyer: "b".into(),
            qty: 1,
            idempotency_key: "k".into(),
            contact: vec![],
        }
    }

    fn state_with_order_in(room: &str) -> ShardState {
        let mut s = ShardState::new();
        for command in [
            Command::UpsertRoom {
                room: room.into(),
                title: String::new(),
                home_region: "eu".into(),
                state: RoomState::Live,
            },
            Command::UpsertListing {
                room: room.into(),
                sku: "s".into(),
                price_cents: 1,
                stock_total: 5,
                per_buyer_limit: 5,
                state: ListingState::Open,
            },
            order(room),
        ] {
            s.apply(&Stamped { at_ms: 1, command });
        }
        s
    }

    fn verdict(
        table: &TokenTable,
        state: &ShardState,
        sent: Principal,
        cmd: Command,
    ) -> Option<RejectCode> {
        let batch = ForwardBatch::new(vec![cmd], &[Arc::new(sent)]);
        let (i, cmd) = &batch.commands[0];
        authorize_forwarded(table, state, &batch, *i, cmd)
    }

    #[test]
    fn the_leader_judges_by_its_own_table_not_the_scope_a_follower_sends() {
        let table = TokenTable::parse(&format!(
            "shop-a {} room-a order\nops {} * manage_listings\n",
            token_file_secret(b"a"),
            token_file_secret(b"o")
        ))
        .expect("table");
        let state = state_with_order_in("room-b");
        let shop = |rooms: &str, verbs: &str| Principal {
            name: "shop-a".into(),
            scope: Scope::parse(rooms, verbs).expect("scope"),
        };
        // As the follower saw it: allowed.
        assert_eq!(
            verdict(&table, &state, shop("room-a", "order"), order("room-a")),
            None
        );
        // Room B, even when the follower claims a wider scope.
        assert_eq!(
            verdict(&table, &state, shop("*", "*"), order("room-b")),
            Some(RejectCode::Forbidden)
        );
        // A narrower scope sent than the leader's own also binds.
        assert_eq!(
            verdict(&table, &state, shop("room-c", "order"), order("room-a")),
            Some(RejectCode::Forbidden)
        );
        // A name the leader does not know, and pausing sales, never pass.
        let stranger = Principal {
            name: "stranger".into(),
            scope: Scope::all(),
        };
        assert_eq!(
            verdict(&table, &state, stranger, order("room-a")),
            Some(RejectCode::Forbidden)
        );
        let pause = Command::SetSalesPaused {
            paused: true,
            reason: "x".into(),
        };
        assert_eq!(
            verdict(&table, &state, shop("*", "*"), pause),
            Some(RejectCode::Forbidden)
        );
        // Cancels are judged by the order's room in the leader's state.
        let cancel = Command::CancelOrder { order_id: 1 };
        assert_eq!(
            verdict(&table, &state, shop("room-a", "order"), cancel),
            Some(RejectCode::Forbidden)
        );
        let unknown = Command::PayOrder { order_id: 99 };
        assert_eq!(
            verdict(&table, &state, shop("room-a", "order"), unknown),
            Some(RejectCode::OrderNotFound)
        );
        let ops = Principal {
            name: "ops".into(),
            scope: Scope::parse("*", "manage_listings").expect("scope"),
        };
        let listing = Command::UpsertRoom {
            room: "room-z".into(),
            title: String::new(),
            home_region: "eu".into(),
            state: RoomState::Live,
        };
        assert_eq!(verdict(&table, &state, ops.clone(), listing), None);
        assert_eq!(
            verdict(&table, &state, ops, order("room-z")),
            Some(RejectCode::Forbidden)
        );
        // An open node (no tokens) trusts the scope its member sent.
        let open = TokenTable::open();
        assert_eq!(
            verdict(&open, &state, shop("room-a", "order"), order("room-a")),
            None
        );
        assert_eq!(
            verdict(&open, &state, shop("room-a", "order"), order("room-b")),
            Some(RejectCode::Forbidden)
        );
    }

    #[test]
    fn one_token_many_commands_travels_once() {
        let a = Arc::new(Principal {
            name: "a".into(),
            scope: Scope::all(),
        });
        let b = Arc::new(Principal {
            name: "b".into(),
            scope: Scope::all(),
        });
        let batch = ForwardBatch::new(vec![order("r"), order("r"), order("r")], &[a.clone(), b, a]);
        assert_eq!(batch.principals.len(), 2);
        let idx: Vec<u32> = batch.commands.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![0, 1, 0]);
    }
}

#[cfg(test)]
mod fuzz {
    //! Peers are not trusted to send well-formed frames: decoding any bytes must
    //! fail cleanly, never panic or allocate without bound.
    use proptest::prelude::*;

    use super::{Envelope, RpcRequest, RpcResponse, HOSTED_SHARD};
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
            let who = std::sync::Arc::new(crate::auth::Principal { name: "t".into(), scope: crate::auth::Scope::all() });
            let batch = super::ForwardBatch::new(cmds.clone(), &vec![who; cmds.len()]);
            prop_assert_eq!(batch.principals.len(), 1);
            let env = Envelope { id: 9, cluster: "c".into(), shard: HOSTED_SHARD, from: 2, to: 1, body: RpcRequest::Forward(batch.clone()) };
            let frame = crate::wire::encode_frame(&env).expect("encode");
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let got = rt.block_on(async {
                let mut r = &frame[..];
                let mut scratch = Vec::new();
                read_frame::<_, Envelope<RpcRequest>>(&mut r, &mut scratch).await
            }).expect("decode").expect("one frame");
            match got.body {
                RpcRequest::Forward(back) => prop_assert_eq!(back, batch),
                other => prop_assert!(false, "decoded {:?}", other),
            }
        }
    }
}
