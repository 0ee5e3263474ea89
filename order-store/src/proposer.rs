//! Turns client commands into Raft log entries.
//!
//! Commands wait in one bounded queue; the proposer takes everything waiting
//! (up to `MAX_BATCH`) as one entry, with a bounded number of entries in flight
//! (docs/decisions.md D2). A full queue is refused at once (`Overloaded`), a
//! leader that cannot see a quorum refuses at once (`NoQuorum`), and nothing
//! waits longer than the write timeout (`OutcomeUnknown`: retry with the same
//! idempotency key, which is safe).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::Instant as _;
use roomkeeper_order_state::{Command, Outcome};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::auth::Principal;
use crate::metrics::NodeMetrics;
use crate::raft_types::{Batch, BatchOutcome, NodeId, Raft};
use crate::transport::PeerPool;

/// Most commands carried by one log entry.
pub const MAX_BATCH: usize = 512;

/// Why a write was not carried out (or its fate is unknown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    #[error("the node is overloaded: its write queue is full")]
    Overloaded,
    #[error("no leader is elected (an election is running, or quorum is lost)")]
    NoLeader,
    #[error("sales are paused: this shard's leader cannot reach a majority of voters (quorum lost); orders are refused, never guessed")]
    NoQuorum,
    #[error("leadership moved while the write was proposed; retry with the same idempotency key")]
    NotLeader { leader: Option<NodeId> },
    #[error("the write may or may not have been committed; retry with the same idempotency key")]
    OutcomeUnknown,
    #[error("the order store is unavailable: {0}")]
    Unavailable(String),
}

impl WriteError {
    /// Stable code for JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            WriteError::Overloaded => "overloaded",
            WriteError::NoLeader => "no_leader",
            WriteError::NoQuorum => "no_quorum",
            WriteError::NotLeader { .. } => "not_leader",
            WriteError::OutcomeUnknown => "outcome_unknown",
            WriteError::Unavailable(_) => "unavailable",
        }
    }

    /// How long a client should wait before retrying.
    pub fn retry_after(&self) -> Duration {
        match self {
            WriteError::Overloaded => Duration::from_millis(50),
            WriteError::NotLeader { .. } => Duration::from_millis(20),
            WriteError::NoLeader | WriteError::OutcomeUnknown => Duration::from_millis(250),
            WriteError::NoQuorum | WriteError::Unavailable(_) => Duration::from_secs(1),
        }
    }
}

/// Tuning of the proposer.
#[derive(Debug, Clone)]
pub struct ProposerConfig {
    pub queue_capacity: usize,
    pub max_inflight_entries: usize,
    pub write_timeout: Duration,
    /// A leader whose last quorum acknowledgement is older than this refuses writes.
    pub quorum_timeout: Duration,
}

impl Default for ProposerConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 8192,
            max_inflight_entries: 4,
            write_timeout: Duration::from_secs(3),
            quorum_timeout: Duration::from_millis(1000),
        }
    }
}

struct Pending {
    command: Command,
    /// Who asked: travels with a forwarded write so the leader checks it again.
    principal: Arc<Principal>,
    reply: oneshot::Sender<Result<Outcome, WriteError>>,
}

/// Handle to submit commands; clones share one queue.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    pool: Arc<PeerPool>,
    cfg: ProposerConfig,
    metrics: Option<NodeMetrics>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Proposer {
    /// Starts the proposer task.
    pub fn start(
        raft: Raft,
        pool: Arc<PeerPool>,
        cfg: ProposerConfig,
        metrics: Option<NodeMetrics>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let inner = Arc::new(Inner {
            raft,
            pool,
            cfg,
            metrics,
        });
        tokio::spawn(run(rx, inner.clone()));
        Self { tx, inner }
    }

    /// Submits one command on behalf of `principal` and waits for its outcome.
    pub async fn submit(
        &self,
        command: Command,
        principal: Arc<Principal>,
    ) -> Result<Outcome, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Pending {
                command,
                principal,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WriteError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => {
                    WriteError::Unavailable("proposer stopped".into())
                }
            })?;
        match tokio::time::timeout(
            self.inner.cfg.write_timeout + Duration::from_millis(500),
            rx,
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(WriteError::OutcomeUnknown),
            Err(_) => Err(WriteError::OutcomeUnknown),
        }
    }

    /// Proposes a batch on this node, which must be the leader (forwarded writes).
    pub async fn propose_local(&self, commands: Vec<Command>) -> Result<BatchOutcome, WriteError> {
        match self.inner.where_to() {
            Route::Here { quorum_stale } => {
                self.inner.propose_as_leader(commands, quorum_stale).await
            }
            Route::Forward { leader, .. } => Err(WriteError::NotLeader {
                leader: Some(leader),
            }),
            Route::NoLeader => Err(WriteError::NotLeader { leader: None }),
        }
    }
}

/// Where a batch goes, read from the Raft metrics without copying them (a
/// copy of the metrics allocates per batch: membership, replication maps).
enum Route {
    Here {
        quorum_stale: bool,
    },
    Forward {
        leader: NodeId,
        addr: Option<String>,
    },
    NoLeader,
}

/// Whether this node is the only voter (then it is its own quorum).
pub(crate) fn is_sole_voter(m: &openraft::RaftMetrics<crate::raft_types::TypeConfig>) -> bool {
    let mut voters = m.membership_config.membership().voter_ids();
    voters.next() == Some(m.id) && voters.next().is_none()
}

impl Inner {
    fn where_to(&self) -> Route {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        match m.current_leader {
            Some(l) if l == m.id => {
                // A sole voter is its own quorum. openraft sends it no
                // heartbeats, so its quorum-ack clock moves only on writes:
                // without this an idle one-node cluster would refuse every
                // order for ever once the clock went stale.
                let sole_voter = is_sole_voter(&m);
                Route::Here {
                    quorum_stale: !sole_voter
                        && m.last_quorum_acked
                            .as_ref()
                            .is_some_and(|acked| acked.elapsed() > self.cfg.quorum_timeout),
                }
            }
            Some(l) => Route::Forward {
                leader: l,
                addr: m
                    .membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.raft_addr.clone()),
            },
            None => Route::NoLeader,
        }
    }

    async fn route(
        &self,
        commands: Vec<Command>,
        principals: Vec<Arc<Principal>>,
    ) -> Result<BatchOutcome, WriteError> {
        match self.where_to() {
            Route::Here { quorum_stale } => self.propose_as_leader(commands, quorum_stale).await,
            Route::Forward { leader, addr } => {
                let addr = addr.ok_or(WriteError::NoLeader)?;
                let batch = crate::transport::ForwardBatch::new(commands, &principals);
                self.pool.forward(leader, &addr, batch).await
            }
            Route::NoLeader => Err(WriteError::NoLeader),
        }
    }

    async fn propose_as_leader(
        &self,
        commands: Vec<Command>,
        quorum_stale: bool,
    ) -> Result<BatchOutcome, WriteError> {
        if quorum_stale {
            return Err(WriteError::NoQuorum);
        }
        if let Some(metrics) = &self.metrics {
            metrics.write_batch_commands.observe(commands.len() as f64);
        }
        let write = self.raft.client_write(Batch {
            at_ms: now_ms(),
            commands,
        });
        match tokio::time::timeout(self.cfg.write_timeout, write).await {
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(WriteError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
                Err(WriteError::OutcomeUnknown)
            }
            Ok(Err(RaftError::APIError(e))) => Err(WriteError::Unavailable(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => Err(WriteError::Unavailable(e.to_string())),
            Err(_) => Err(WriteError::OutcomeUnknown),
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Pending>, inner: Arc<Inner>) {
    let slots = Arc::new(Semaphore::new(inner.cfg.max_inflight_entries));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        // Everything that queued while we waited for a slot rides in this entry.
        let mut commands = vec![first.command];
        let mut principals = vec![first.principal];
        let mut replies = vec![first.reply];
        while commands.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => {
                    commands.push(p.command);
                    principals.push(p.principal);
                    replies.push(p.reply);
                }
                Err(_) => break,
            }
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            let n = commands.len();
            match inner.route(commands, principals).await {
                Ok(out) if out.outcomes.len() == n => {
                    for (reply, outcome) in replies.into_iter().zip(out.outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Ok(out) => {
                    tracing::error!(
                        expected = n,
                        got = out.outcomes.len(),
                        "batch outcome count mismatch"
                    );
                    for reply in replies {
                        let _ = reply.send(Err(WriteError::OutcomeUnknown));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}
