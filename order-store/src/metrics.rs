//! Prometheus metrics of one order-store node. Names are defined here once,
//! prefixed `roomkeeper_`, with units in the name. Every series carries the
//! node's `node_id`, `region` and `zone` as constant labels.

use std::collections::HashMap;

use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Errors while building the metric registry (a programming error if it happens).
#[derive(Debug, thiserror::Error)]
#[error("metrics registry: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// All metrics of a node.
#[derive(Clone)]
pub struct NodeMetrics {
    registry: Registry,
    pub raft_term: IntGauge,
    pub raft_is_leader: IntGauge,
    pub raft_state: IntGaugeVec,
    pub raft_last_log_index: IntGauge,
    pub raft_committed_index: IntGauge,
    pub raft_applied_index: IntGauge,
    pub raft_snapshot_index: IntGauge,
    pub raft_follower_lag_entries: IntGaugeVec,
    pub raft_voters: IntGauge,
    pub raft_leader_changes_total: IntCounter,
    /// Elections started and votes vouched for because the leader's Raft port refused connections.
    pub raft_dead_leader_total: IntCounterVec,
    pub log_fsync_seconds: Histogram,
    pub log_fsync_batch_entries: Histogram,
    /// fsyncs of the Raft log (each serves every request queued before it).
    pub log_fsyncs_total: IntCounter,
    /// Time the Raft log's flush thread spent inside fsync.
    pub log_fsync_busy_seconds_total: Counter,
    pub apply_seconds: Histogram,
    pub orders_total: IntCounterVec,
    /// Orders the leader refused from its applied state before any Raft work.
    pub order_early_refusals_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    /// The framed order protocol's requests (framed_api.rs).
    pub framed_request_duration_seconds: HistogramVec,
    pub http_overload_rejections_total: IntCounterVec,
    pub http_inflight_requests: IntGauge,
    pub write_batch_commands: Histogram,
    pub state_orders: IntGauge,
    pub sales_paused: IntGauge,
    pub state_invariant_violated: IntGauge,
    pub state_invariant_audit_seconds: Histogram,
    pub raft_connections_open: IntGauge,
    pub raft_connections_refused_total: IntCounterVec,
    pub raft_requests_refused_total: IntCounterVec,
    /// Client requests refused 429 `rate_limited`, by limit (`token`, `buyer`).
    pub rate_limited_requests_total: IntCounterVec,
    /// Contact key file reloads, by result (`ok`, `refused`).
    pub contact_key_reloads_total: IntCounterVec,
    /// The key id new contacts are sealed under.
    pub contact_sealing_key_id: IntGauge,
    /// Contacts this node re-sealed under the newest key (as leader).
    pub contacts_resealed_total: IntCounter,
    /// Connections, caps and timeouts of the client and admin listeners.
    pub http_edges: crate::http_server::EdgeMetrics,
}

use roomkeeper_api::metrics::LATENCY_BUCKETS_SECONDS as LATENCY_BUCKETS;

impl NodeMetrics {
    pub fn new(node_id: u64, region: &str, zone: &str) -> Result<Self, MetricsError> {
        let labels = HashMap::from([
            ("node_id".to_string(), node_id.to_string()),
            ("region".to_string(), region.to_string()),
            ("zone".to_string(), zone.to_string()),
        ]);
        let registry = Registry::new_custom(None, Some(labels))?;
        let m = Self {
            raft_term: IntGauge::new(
                "roomkeeper_raft_term",
                "Current Raft term seen by this node",
            )?,
            raft_is_leader: IntGauge::new(
                "roomkeeper_raft_is_leader",
                "1 when this node is the Raft leader",
            )?,
            raft_state: IntGaugeVec::new(
                Opts::new(
                    "roomkeeper_raft_state",
                    "1 for the node's current Raft state",
                ),
                &["state"],
            )?,
            raft_last_log_index: IntGauge::new(
                "roomkeeper_raft_last_log_index",
                "Index of the last entry in the local log",
            )?,
            raft_committed_index: IntGauge::new(
                "roomkeeper_raft_committed_index",
                "Highest log index known committed",
            )?,
            raft_applied_index: IntGauge::new(
                "roomkeeper_raft_applied_index",
                "Highest log index applied to the state machine",
            )?,
            raft_snapshot_index: IntGauge::new(
                "roomkeeper_raft_snapshot_index",
                "Last log index covered by the newest snapshot",
            )?,
            raft_follower_lag_entries: IntGaugeVec::new(
                Opts::new(
                    "roomkeeper_raft_follower_lag_entries",
                    "Entries a follower is behind the leader's last log index (leader only)",
                ),
                &["follower"],
            )?,
            raft_voters: IntGauge::new(
                "roomkeeper_raft_voters",
                "Number of voters in the current membership",
            )?,
            raft_leader_changes_total: IntCounter::new(
                "roomkeeper_raft_leader_changes_total",
                "Times this node saw the leader change",
            )?,
            raft_dead_leader_total: IntCounterVec::new(
                Opts::new(
                    "roomkeeper_raft_dead_leader_total",
                    "Elections this node started (election_started) and votes it granted under a \
                     lifted lease (vote_vouched) because its leader's Raft port refused connections",
                ),
                &["event"],
            )?,
            log_fsync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "roomkeeper_log_fsync_seconds",
                    "Time from a log append to its fsync completing",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            log_fsyncs_total: IntCounter::new(
                "roomkeeper_log_fsyncs_total",
                "fsyncs of the Raft log; each makes every request queued before it durable",
            )?,
            log_fsync_busy_seconds_total: Counter::new(
                "roomkeeper_log_fsync_busy_seconds_total",
                "Time the Raft log's flush thread spent inside fsync (1.0 per second: the disk is the limit)",
            )?,
            log_fsync_batch_entries: Histogram::with_opts(
                HistogramOpts::new(
                    "roomkeeper_log_fsync_batch_entries",
                    "Log entries per append (one flush request; requests queued while an fsync \
                     runs share the next one: roomkeeper_log_fsyncs_total counts those)",
                )
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
                ]),
            )?,
            apply_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "roomkeeper_apply_seconds",
                    "Time to apply one batch of committed entries",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            orders_total: IntCounterVec::new(
                Opts::new(
                    "roomkeeper_orders_total",
                    "Orders applied by this node's state machine, by outcome",
                ),
                &["outcome"],
            )?,
            order_early_refusals_total: IntCounterVec::new(
                Opts::new(
                    "roomkeeper_order_early_refusals_total",
                    "Orders the leader refused from its applied state under its lease, \
                     before any Raft work (not in roomkeeper_orders_total), by code",
                ),
                &["code"],
            )?,
            http_request_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "roomkeeper_http_request_duration_seconds",
                    "Client API latency by route and status class",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route", "status"],
            )?,
            framed_request_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "roomkeeper_framed_request_duration_seconds",
                    "Framed order protocol latency by request kind and status class",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["kind", "status"],
            )?,
            http_overload_rejections_total: IntCounterVec::new(
                Opts::new(
                    "roomkeeper_http_overload_rejections_total",
                    "Requests refused fast (429/503) by reason",
                ),
                &["reason"],
            )?,
            rate_limited_requests_total: IntCounterVec::new(
                Opts::new(
                    "roomkeeper_rate_limited_requests_total",
                    "Client requests refused 429 rate_limited, by the limit they hit (token, buyer)",
                ),
                &["limit"],
            )?,
            http_inflight_requests: IntGauge::new(
                "roomkeeper_http_inflight_requests",
                "Client write requests in flight",
            )?,
            write_batch_commands: Histogram::with_opts(
                HistogramOpts::new(
                    "roomkeeper_write_batch_commands",
                    "Client commands carried by one Raft log entry",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )?,
            state_orders: IntGauge::new(
                "roomkeeper_state_orders",
                "Orders held in the state machine",
            )?,
            sales_paused: IntGauge::new(
                "roomkeeper_sales_paused",
                "1 when sales are paused on this shard",
            )?,
            state_invariant_violated: IntGauge::new(
                "roomkeeper_state_invariant_violated",
                "1 when the last audit of the state machine found an invariant broken (oversell, stock or per-buyer counters off)",
            )?,
            state_invariant_audit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "roomkeeper_state_invariant_audit_seconds",
                    "Time one invariant audit of the state machine held its read lock",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            raft_connections_open: IntGauge::new(
                "roomkeeper_raft_connections_open",
                "Peer connections open on the Raft listener",
            )?,
            raft_connections_refused_total: IntCounterVec::new(
                Opts::new(
                    "roomkeeper_raft_connections_refused_total",
                    "Raft listener connections closed before serving anything, by reason",
                ),
                &["reason"],
            )?,
            raft_requests_refused_total: IntCounterVec::new(
                Opts::new(
                    "roomkeeper_raft_requests_refused_total",
                    "Raft frames refused (and their connection closed), by reason",
                ),
                &["reason"],
            )?,
            contact_key_reloads_total: IntCounterVec::new(
                Opts::new(
                    "roomkeeper_contact_key_reloads_total",
                    "Changes of the contact key file judged, by result (ok, refused)",
                ),
                &["result"],
            )?,
            contact_sealing_key_id: IntGauge::new(
                "roomkeeper_contact_sealing_key_id",
                "The contact key id new orders are sealed under",
            )?,
            contacts_resealed_total: IntCounter::new(
                "roomkeeper_contacts_resealed_total",
                "Contacts re-sealed under the newest key by this node's re-seal runs",
            )?,
            http_edges: crate::http_server::EdgeMetrics::new(&registry)?,
            registry,
        };
        m.register_all()?;
        Ok(m)
    }

    fn register_all(&self) -> Result<(), MetricsError> {
        let r = &self.registry;
        r.register(Box::new(self.raft_term.clone()))?;
        r.register(Box::new(self.raft_is_leader.clone()))?;
        r.register(Box::new(self.raft_state.clone()))?;
        r.register(Box::new(self.raft_last_log_index.clone()))?;
        r.register(Box::new(self.raft_committed_index.clone()))?;
        r.register(Box::new(self.raft_applied_index.clone()))?;
        r.register(Box::new(self.raft_snapshot_index.clone()))?;
        r.register(Box::new(self.raft_follower_lag_entries.clone()))?;
        r.register(Box::new(self.raft_voters.clone()))?;
        r.register(Box::new(self.raft_leader_changes_total.clone()))?;
        r.register(Box::new(self.raft_dead_leader_total.clone()))?;
        r.register(Box::new(self.log_fsync_seconds.clone()))?;
        r.register(Box::new(self.log_fsync_batch_entries.clone()))?;
        r.register(Box::new(self.log_fsyncs_total.clone()))?;
        r.register(Box::new(self.log_fsync_busy_seconds_total.clone()))?;
        r.register(Box::new(self.apply_seconds.clone()))?;
        r.register(Box::new(self.orders_total.clone()))?;
        r.register(Box::new(self.order_early_refusals_total.clone()))?;
        r.register(Box::new(self.http_request_duration_seconds.clone()))?;
        r.register(Box::new(self.framed_request_duration_seconds.clone()))?;
        r.register(Box::new(self.http_overload_rejections_total.clone()))?;
        r.register(Box::new(self.http_inflight_requests.clone()))?;
        r.register(Box::new(self.write_batch_commands.clone()))?;
        r.register(Box::new(self.state_orders.clone()))?;
        r.register(Box::new(self.sales_paused.clone()))?;
        r.register(Box::new(self.state_invariant_violated.clone()))?;
        r.register(Box::new(self.state_invariant_audit_seconds.clone()))?;
        r.register(Box::new(self.raft_connections_open.clone()))?;
        r.register(Box::new(self.raft_connections_refused_total.clone()))?;
        r.register(Box::new(self.raft_requests_refused_total.clone()))?;
        r.register(Box::new(self.rate_limited_requests_total.clone()))?;
        r.register(Box::new(self.contact_key_reloads_total.clone()))?;
        r.register(Box::new(self.contact_sealing_key_id.clone()))?;
        r.register(Box::new(self.contacts_resealed_total.clone()))?;
        Ok(())
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
