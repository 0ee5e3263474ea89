//! One order-store node: wires the log, state machine, Raft, transport,
//! proposer and the two HTTP listeners together, and keeps metrics current.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{Config, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admin::role_name;
use crate::auth::TokenTable;
use crate::contact::{ContactKeyring, ContactKeys};
use crate::dead_leader::{DeadLeader, Timings};
use crate::faults::Faults;
use crate::framed_api::FramedLimits;
use crate::http_server::HttpLimits;
use crate::http_tls::{Edge, HttpSecurity, HttpTls, HttpTlsError};
use crate::log_store::{FlushTotals, FsyncProbe, LogOpenError, LogStore};
use crate::metrics::{MetricsError, NodeMetrics};
use crate::proposer::{Proposer, ProposerConfig};
use crate::raft_tls::{RaftTls, RaftTlsError};
use crate::raft_types::{NodeId, NodeInfo, Raft};
use crate::rate_limit::{RateLimiter, RateLimits};
use crate::state_machine::{SnapshotError, StateMachine};
use crate::transport::{
    LeaderContact, ListenerLimits, Network, PeerPool, RaftServer, RaftServerParts,
};

/// Everything needed to start a node.
#[derive(Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub raft_addr: String,
    pub api_addr: String,
    pub admin_addr: String,
    /// A plain-HTTP listener serving only `/metrics`, `/healthz` and
    /// `/readyz` (nothing that changes the node), for scrapers and probes
    /// that cannot present the operator's certificate.
    pub metrics_addr: Option<String>,
    /// The framed order protocol's listener (docs/framed-api.md): orders
    /// pipelined over TCP, with the client API's tokens, TLS and caps.
    pub framed_api_addr: Option<String>,
    /// Deadlines and pipelining depth of framed connections.
    pub framed_limits: FramedLimits,
    pub region: String,
    pub zone: String,
    pub keyring: ContactKeyring,
    /// The file `keyring` came from: polled every `contact_key_reload` and
    /// put in use when it changes (None, or a zero interval: never reloaded).
    pub contact_key_file: Option<PathBuf>,
    pub contact_key_reload: Duration,
    /// The single all-scopes client token (named `client-token`).
    pub client_token: Option<String>,
    /// Scoped client tokens (`--client-tokens-file`, see `auth.rs`).
    pub client_tokens: Option<TokenTable>,
    /// Per-token and per-buyer rate limits of the client API.
    pub rate_limits: RateLimits,
    pub admin_token: Option<String>,
    /// `/metrics` answers only this bearer token (`--metrics-token`).
    pub metrics_token: Option<String>,
    pub test_faults_enabled: bool,
    /// This process found no data directory and started an empty one. Reported
    /// in status so a controller can tell a restarted member from a wiped one.
    pub fresh_data_dir: bool,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Take a snapshot after this many log entries.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind the newest snapshot (for lagging followers).
    pub keep_entries_after_snapshot: u64,
    /// Client writes in flight on this node beyond which requests get 429.
    pub max_inflight_writes: usize,
    /// Raft entries the proposer keeps in flight; commands that arrive while
    /// all are out wait and ride together in the next entry (D2).
    pub max_inflight_entries: usize,
    /// Connection caps and frame deadlines of the Raft listener.
    pub raft_limits: ListenerLimits,
    /// The cluster every Raft frame and certificate names.
    pub cluster_id: String,
    /// How peers are authenticated on the Raft transport.
    pub raft_security: RaftSecurity,
    /// Timeouts and connection caps of the client and admin listeners.
    pub http_limits: HttpLimits,
    /// TLS (or, explicitly, plaintext) on the client and admin listeners.
    pub http_security: HttpSecurity,
}

/// How peers are authenticated on the Raft transport.
#[derive(Debug, Clone)]
pub enum RaftSecurity {
    /// Mutual TLS with `ca.crt`, `tls.crt`, `tls.key` from this directory.
    Tls(PathBuf),
    /// No authentication, no encryption: anyone who reaches the Raft port
    /// can write. Only behind `--insecure-plaintext-raft`.
    InsecurePlaintext,
}

impl NodeConfig {
    /// Defaults for timing and snapshots; identity and addresses come from the caller.
    pub fn with_defaults(node_id: NodeId, data_dir: PathBuf, keyring: ContactKeyring) -> Self {
        Self {
            node_id,
            data_dir,
            raft_addr: "127.0.0.1:0".into(),
            api_addr: "127.0.0.1:0".into(),
            admin_addr: "127.0.0.1:0".into(),
            metrics_addr: None,
            framed_api_addr: None,
            framed_limits: FramedLimits::default(),
            region: "local".into(),
            zone: "local-a".into(),
            keyring,
            contact_key_file: None,
            contact_key_reload: Duration::from_secs(2),
            client_token: None,
            client_tokens: None,
            rate_limits: RateLimits::default(),
            admin_token: None,
            metrics_token: None,
            test_faults_enabled: false,
            fresh_data_dir: false,
            heartbeat_ms: 60,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            snapshot_every_entries: 10_000,
            keep_entries_after_snapshot: 2_000,
            max_inflight_writes: 4096,
            max_inflight_entries: ProposerConfig::default().max_inflight_entries,
            raft_limits: ListenerLimits::default(),
            cluster_id: "local".into(),
            raft_security: RaftSecurity::InsecurePlaintext,
            http_limits: HttpLimits::default(),
            http_security: HttpSecurity::InsecurePlaintext,
        }
    }
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Log(#[from] LogOpenError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("invalid Raft timing: {0}")]
    Config(String),
    #[error("cannot listen on {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("blocking task failed: {0}")]
    Join(String),
    #[error("raft TLS: {0}")]
    Tls(#[from] RaftTlsError),
    #[error("HTTP TLS: {0}")]
    HttpTls(#[from] HttpTlsError),
    #[error("client tokens: {0}")]
    Tokens(String),
}

/// Shared by every handler of the node.
pub struct NodeContext {
    pub node_id: NodeId,
    pub info: NodeInfo,
    pub raft: Raft,
    pub sm: StateMachine,
    pub proposer: Proposer,
    pub pool: Arc<PeerPool>,
    /// The contact keyring in use (reloaded when its file changes).
    pub keyring: Arc<ContactKeys>,
    pub metrics: NodeMetrics,
    pub contact: Arc<LeaderContact>,
    pub faults: Arc<Faults>,
    pub test_faults_enabled: bool,
    pub fresh_data_dir: bool,
    /// The bound address of the metrics-and-probes listener, if any.
    pub metrics_addr: Option<String>,
    /// The bound address of the framed order protocol's listener, if any.
    pub framed_api_addr: Option<String>,
    /// Client tokens and their scopes (open when none is configured).
    pub clients: Arc<TokenTable>,
    /// Per-token and per-buyer buckets.
    pub limiter: RateLimiter,
    pub admin_token: Option<String>,
    /// `/metrics` answers only requests bearing this token.
    pub metrics_token: Option<String>,
    /// Client writes in flight beyond this are refused with 429.
    pub write_slots: Semaphore,
    /// The node-local sales gate (`POST /admin/sales`): while set, orders
    /// are refused with `sales_paused` before any Raft work. Not persisted;
    /// the control loop sets it again while its pause lasts.
    pub edge_sales_paused: std::sync::atomic::AtomicBool,
    /// Fast elections when the leader's process is gone; the precheck's
    /// freshness rule (D49).
    pub dead_leader: Arc<DeadLeader>,
}

/// A running node.
pub struct NodeHandle {
    pub ctx: Arc<NodeContext>,
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
}

impl NodeHandle {
    /// Opens storage, starts Raft and every listener.
    pub async fn start(cfg: NodeConfig) -> Result<Self, NodeError> {
        let metrics = NodeMetrics::new(cfg.node_id, &cfg.region, &cfg.zone)?;
        let tls = match &cfg.raft_security {
            RaftSecurity::Tls(dir) => {
                Some(Arc::new(RaftTls::load(dir, &cfg.cluster_id, cfg.node_id)?))
            }
            RaftSecurity::InsecurePlaintext => {
                crate::raft_tls::check_cluster_id(&cfg.cluster_id).map_err(RaftTlsError::from)?;
                tracing::warn!(
                    "raft transport is PLAINTEXT and unauthenticated: anyone who reaches the raft port can write"
                );
                None
            }
        };
        let http_tls = match &cfg.http_security {
            HttpSecurity::Tls { dir, .. } => Some(HttpTls::load(dir, &cfg.cluster_id)?),
            HttpSecurity::InsecurePlaintext => {
                tracing::warn!(
                    "client and admin APIs are PLAINTEXT: tokens and buyer contacts cross the network readable"
                );
                None
            }
        };
        metrics
            .contact_sealing_key_id
            .set(i64::from(cfg.keyring.sealing_key_id()));
        let keyring = Arc::new(ContactKeys::new(cfg.keyring));
        let clients = match (cfg.client_tokens, cfg.client_token) {
            (None, None) => TokenTable::open(),
            (Some(t), None) => t,
            (t, Some(flag)) => t
                .unwrap_or_else(TokenTable::open)
                .with_flag_token(&flag)
                .map_err(NodeError::Tokens)?,
        };
        let clients = Arc::new(clients);
        let faults = Faults::new();
        let raft_listener = bind("raft", &cfg.raft_addr).await?;
        let api_listener = bind("client API", &cfg.api_addr).await?;
        let admin_listener = bind("admin API", &cfg.admin_addr).await?;
        let metrics_listener = match &cfg.metrics_addr {
            Some(addr) => Some(bind("metrics", addr).await?),
            None => None,
        };
        let framed_listener = match &cfg.framed_api_addr {
            Some(addr) => Some(bind("framed API", addr).await?),
            None => None,
        };
        let local = |l: &TcpListener, fallback: &str| {
            l.local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| fallback.to_string())
        };
        let info = NodeInfo {
            raft_addr: local(&raft_listener, &cfg.raft_addr),
            api_addr: local(&api_listener, &cfg.api_addr),
            admin_addr: local(&admin_listener, &cfg.admin_addr),
            region: cfg.region.clone(),
            zone: cfg.zone.clone(),
        };

        let probe = FsyncProbe {
            latency: Some(metrics.log_fsync_seconds.clone()),
            batch_entries: Some(metrics.log_fsync_batch_entries.clone()),
            faults: faults.clone(),
        };
        let log_dir = cfg.data_dir.join("log");
        let log_store = tokio::task::spawn_blocking(move || LogStore::open(&log_dir, probe))
            .await
            .map_err(|e| NodeError::Join(e.to_string()))??;
        let sm = StateMachine::open(&cfg.data_dir.join("state"), Some(metrics.clone()))?;

        let raft_config = Config {
            cluster_name: "roomkeeper".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every_entries),
            max_in_snapshot_log_to_keep: cfg.keep_entries_after_snapshot,
            purge_batch_size: 256,
            enable_pre_vote: Some(true),
            // A restarted node must win an election like anyone else: restoring
            // leadership from the persisted vote makes it claim a stale term.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;

        let pool = PeerPool::new(
            cfg.node_id,
            cfg.cluster_id.clone(),
            tls.clone(),
            faults.clone(),
        );
        let raft = Raft::new(
            cfg.node_id,
            Arc::new(raft_config),
            Network { pool: pool.clone() },
            log_store.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;

        let proposer_cfg = ProposerConfig {
            max_inflight_entries: cfg.max_inflight_entries.max(1),
            quorum_timeout: Duration::from_millis(cfg.election_timeout_max_ms.max(500) * 2),
            ..ProposerConfig::default()
        };
        let proposer = Proposer::start(
            raft.clone(),
            pool.clone(),
            proposer_cfg,
            Some(metrics.clone()),
        );
        let contact = LeaderContact::new();
        let dead_leader = DeadLeader::new(
            cfg.node_id,
            Timings::new(cfg.election_timeout_min_ms, cfg.heartbeat_ms),
            metrics.clone(),
        );

        let ctx = Arc::new(NodeContext {
            node_id: cfg.node_id,
            info: info.clone(),
            raft: raft.clone(),
            sm,
            proposer: proposer.clone(),
            pool,
            keyring: keyring.clone(),
            metrics: metrics.clone(),
            contact: contact.clone(),
            faults: faults.clone(),
            test_faults_enabled: cfg.test_faults_enabled,
            metrics_addr: metrics_listener
                .as_ref()
                .zip(cfg.metrics_addr.as_deref())
                .map(|(l, fallback)| local(l, fallback)),
            framed_api_addr: framed_listener
                .as_ref()
                .zip(cfg.framed_api_addr.as_deref())
                .map(|(l, fallback)| local(l, fallback)),
            fresh_data_dir: cfg.fresh_data_dir,
            limiter: RateLimiter::new(cfg.rate_limits, clients.names()),
            clients: clients.clone(),
            admin_token: cfg.admin_token,
            metrics_token: cfg.metrics_token,
            write_slots: Semaphore::new(cfg.max_inflight_writes.max(1)),
            edge_sales_paused: std::sync::atomic::AtomicBool::new(false),
            dead_leader: dead_leader.clone(),
        });

        let server = RaftServer::new(RaftServerParts {
            node_id: cfg.node_id,
            cluster: cfg.cluster_id.clone(),
            raft: raft.clone(),
            proposer,
            faults,
            contact,
            metrics: metrics.clone(),
            limits: cfg.raft_limits,
            tls,
            keyring,
            clients,
            sm: ctx.sm.clone(),
            dead_leader: dead_leader.clone(),
        });
        tokio::spawn(server.serve(raft_listener));
        let edges = metrics.http_edges.clone();
        if let (Some(t), HttpSecurity::Tls { reload_every, .. }) = (&http_tls, &cfg.http_security) {
            t.spawn_reloader(*reload_every, edges.tls_reloads_total.clone());
        }
        tokio::spawn(crate::http_server::serve(
            api_listener,
            "client",
            crate::api::router(ctx.clone()),
            cfg.http_limits.clone(),
            crate::api::MAX_BODY_BYTES,
            edges.clone(),
            http_tls.clone().map(|t| (t, Edge::Client)),
        ));
        if let Some(listener) = framed_listener {
            // The client API's caps and TLS: the same buyers, another framing.
            let server = crate::framed_api::FramedConnections {
                ctx: ctx.clone(),
                limits: cfg.framed_limits.clone(),
                errors: edges.connection_errors_total.clone(),
            };
            let limits = cfg.http_limits.clone();
            let edges = edges.clone();
            let tls = http_tls.clone().map(|t| (t, Edge::Client));
            tokio::spawn(async move {
                crate::http_server::accept_loop(
                    listener,
                    crate::framed_api::LISTENER,
                    &limits,
                    edges,
                    tls,
                    crate::framed_api::over_capacity_frame(),
                    server,
                )
                .await
            });
        }
        if let Some(listener) = metrics_listener {
            // Plain HTTP by design: read-only, no secrets, and reachable by
            // kubelet probes and Prometheus without a client certificate.
            tokio::spawn(crate::http_server::serve(
                listener,
                "metrics",
                crate::admin::probe_router(ctx.clone()),
                cfg.http_limits.clone(),
                crate::admin::MAX_BODY_BYTES,
                edges.clone(),
                None,
            ));
        }
        tokio::spawn(crate::http_server::serve(
            admin_listener,
            "admin",
            crate::admin::router(ctx.clone()),
            cfg.http_limits,
            crate::admin::MAX_BODY_BYTES,
            edges,
            http_tls.map(|t| (t, Edge::Admin)),
        ));
        tokio::spawn(dead_leader.run(raft.clone()));
        tokio::spawn(track_raft_metrics(raft, metrics, ctx.pool.clone()));
        tokio::spawn(audit_invariants(ctx.clone()));
        tokio::spawn(mirror_flush_totals(log_store, ctx.metrics.clone()));
        if let Some(path) = cfg
            .contact_key_file
            .filter(|_| !cfg.contact_key_reload.is_zero())
        {
            tokio::spawn(watch_contact_keys(
                ctx.clone(),
                path,
                cfg.contact_key_reload,
            ));
        }
        tracing::info!(
            node_id = cfg.node_id,
            region = %info.region,
            zone = %info.zone,
            raft = %info.raft_addr,
            api = %info.api_addr,
            admin = %info.admin_addr,
            metrics = ctx.metrics_addr.as_deref().unwrap_or("-"),
            framed = ctx.framed_api_addr.as_deref().unwrap_or("-"),
            "order-store node started"
        );
        Ok(Self { ctx })
    }

    /// Stops Raft cleanly (listeners stop with the process).
    pub async fn shutdown(&self) {
        if let Err(e) = self.ctx.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown reported an error");
        }
    }
}

/// How often the Raft log's flush totals are copied into the metrics.
const FLUSH_TOTALS_EVERY: Duration = Duration::from_secs(1);

/// Copies raft-log's flush thread totals (fsyncs, time in fsync) into their
/// counters, by difference, once a second.
async fn mirror_flush_totals(log: LogStore, metrics: NodeMetrics) {
    let mut every = tokio::time::interval(FLUSH_TOTALS_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = FlushTotals::default();
    loop {
        every.tick().await;
        let now = log.flush_totals().await;
        metrics
            .log_fsyncs_total
            .inc_by(now.fsyncs.saturating_sub(seen.fsyncs));
        metrics
            .log_fsync_busy_seconds_total
            .inc_by(now.fsync_us.saturating_sub(seen.fsync_us) as f64 / 1e6);
        seen = now;
    }
}

/// How often a node audits its state machine's invariants on its own (the
/// `roomkeeper_state_invariant_violated` alert reads the verdict). The audit
/// holds the state's read lock, so applying waits for it: a few milliseconds
/// per hundred thousand orders (`roomkeeper_state_invariant_audit_seconds`).
pub const INVARIANT_AUDIT_EVERY: Duration = Duration::from_secs(60);

async fn audit_invariants(ctx: Arc<NodeContext>) {
    let mut every = tokio::time::interval(INVARIANT_AUDIT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let audit_ctx = ctx.clone();
        // The audit walks every order: off the async workers.
        let joined =
            tokio::task::spawn_blocking(move || drop(audit_ctx.sm.audit(&audit_ctx.metrics))).await;
        if let Err(e) = joined {
            tracing::warn!(error = %e, "invariant audit task failed");
        }
    }
}

/// Polls the contact key file and puts a changed one in use (no restart). A
/// file that does not parse, or that drops a key stored contacts still use,
/// is refused: logged, counted (`roomkeeper_contact_key_reloads_total
/// {result="refused"}`), and the keyring in use is kept. Each distinct file
/// content is judged once.
async fn watch_contact_keys(ctx: Arc<NodeContext>, path: PathBuf, every: Duration) {
    let mut last = tokio::fs::read(&path).await.ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let text = match tokio::fs::read(&path).await {
            Ok(t) => t,
            Err(e) => {
                // A Secret volume swaps its files by symlink: a read can
                // miss once. Judged again at the next tick; counted once.
                if last.is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "contact key file unreadable; keeping the keys in use");
                    ctx.metrics
                        .contact_key_reloads_total
                        .with_label_values(&["refused"])
                        .inc();
                    last = None;
                }
                continue;
            }
        };
        if last.as_deref() == Some(&text[..]) {
            continue;
        }
        last = Some(text.clone());
        let judged = std::str::from_utf8(&text)
            .map_err(|_| crate::contact::ContactError::BadKeyLine {
                line: 0,
                reason: "the file is not UTF-8".into(),
            })
            .and_then(ContactKeyring::parse)
            .and_then(|ring| {
                let in_use = ctx.sm.read(|s| s.contact_key_counts());
                ring.check_replaces(&in_use).map(|()| ring)
            });
        match judged {
            Ok(ring) => {
                tracing::info!(
                    path = %path.display(),
                    keys = ?ring.key_infos(),
                    sealing_key_id = ring.sealing_key_id(),
                    "contact keys reloaded"
                );
                ctx.metrics
                    .contact_sealing_key_id
                    .set(i64::from(ring.sealing_key_id()));
                ctx.metrics
                    .contact_key_reloads_total
                    .with_label_values(&["ok"])
                    .inc();
                ctx.keyring.replace(ring);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "contact key file refused; keeping the keys in use");
                ctx.metrics
                    .contact_key_reloads_total
                    .with_label_values(&["refused"])
                    .inc();
            }
        }
    }
}

/// Mirrors Raft metrics into Prometheus gauges as they change.
async fn track_raft_metrics(raft: Raft, metrics: NodeMetrics, pool: Arc<PeerPool>) {
    let mut rx = raft.metrics();
    let mut last_leader = None;
    loop {
        let m = rx.borrow_watched().clone();
        pool.learn_addresses(
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.raft_addr.clone())),
        );
        metrics.raft_term.set(m.current_term as i64);
        metrics
            .raft_is_leader
            .set(i64::from(m.state == ServerState::Leader));
        for s in [
            ServerState::Leader,
            ServerState::Follower,
            ServerState::Candidate,
            ServerState::Learner,
            ServerState::Shutdown,
        ] {
            metrics
                .raft_state
                .with_label_values(&[role_name(s)])
                .set(i64::from(m.state == s));
        }
        let last = m.last_log_index.unwrap_or(0);
        metrics.raft_last_log_index.set(last as i64);
        metrics
            .raft_committed_index
            .set(m.local_committed.map_or(0, |l| l.index) as i64);
        metrics
            .raft_applied_index
            .set(m.last_applied.map_or(0, |l| l.index) as i64);
        metrics
            .raft_snapshot_index
            .set(m.snapshot.map_or(0, |l| l.index) as i64);
        metrics
            .raft_voters
            .set(m.membership_config.membership().voter_ids().count() as i64);
        metrics.raft_follower_lag_entries.reset();
        if let Some(rep) = &m.replication {
            for (id, matched) in rep.iter().filter(|(id, _)| **id != m.id) {
                let lag = last.saturating_sub(matched.as_ref().map_or(0, |l| l.index));
                metrics
                    .raft_follower_lag_entries
                    .with_label_values(&[&id.to_string()])
                    .set(lag as i64);
            }
        }
        if m.current_leader != last_leader {
            if last_leader.is_some() || m.current_leader.is_some() {
                metrics.raft_leader_changes_total.inc();
            }
            last_leader = m.current_leader;
        }
        if m.state == ServerState::Shutdown || rx.changed().await.is_err() {
            return;
        }
    }
}
