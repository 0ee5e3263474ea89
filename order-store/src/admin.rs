//! The admin API, on its own listener: health, readiness, metrics, Raft status,
//! bootstrap, membership changes, leader transfer, snapshots, an invariant audit,
//! and (only when the node was started for tests) fault injection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::async_runtime::WatchReceiver;
use openraft::Instant as _;
use openraft::{ChangeMembers, ServerState};
use serde::Deserialize;
use serde_json::json;

use roomkeeper_api::admin::{
    ContactKey, ContactKeysReport, ReplicatedGate, ResealReply, ResealRequest, SalesGate,
    SalesGateReply,
};
use roomkeeper_order_state::command::MAX_RESEAL_BATCH;
use roomkeeper_order_state::{contact_key_id, Command, Outcome, ResealedContact};

use crate::api::bearer_matches;
use crate::faults::FaultSettings;
use crate::node::NodeContext;
use crate::raft_types::{NodeId, NodeInfo};

/// Largest admin request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message.to_string()})),
    )
        .into_response()
}

fn bad_json(r: JsonRejection) -> Response {
    let code = match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "invalid_json",
    };
    error(r.status(), code, r.body_text())
}

/// A JSON body whose rejection is answered in the admin API's error format.
struct AdminJson<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S>
    for AdminJson<T>
{
    type Rejection = Response;

    async fn from_request(req: Request<axum::body::Body>, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(AdminJson(v)),
            Err(r) => Err(bad_json(r)),
        }
    }
}

pub use roomkeeper_api::admin::{NodeStatus, ReplicationProgress};

pub fn role_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Builds the status from Raft metrics and the state machine.
pub fn status(ctx: &NodeContext) -> NodeStatus {
    let m = ctx.raft.metrics().borrow_watched().clone();
    let last = m.last_log_index.unwrap_or(0);
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let learners: Vec<NodeId> = membership.learner_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, n)| (id.to_string(), n.clone()))
        .collect();
    let replication = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter(|(id, _)| **id != m.id)
                .map(|(id, matched)| {
                    let idx = matched.as_ref().map(|l| l.index);
                    let millis_since_ack = m
                        .heartbeat
                        .as_ref()
                        .and_then(|h| h.get(id))
                        .and_then(|t| t.as_ref())
                        .map(|t| t.elapsed().as_millis() as u64);
                    (
                        id.to_string(),
                        ReplicationProgress {
                            matched_index: idx,
                            lag: last.saturating_sub(idx.unwrap_or(0)),
                            millis_since_ack,
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (orders, sales_paused, live_windows) = ctx.sm.read(|s| {
        (
            s.order_count(),
            s.sales_paused(),
            s.live_windows_between(
                now_ms,
                now_ms.saturating_add(roomkeeper_api::admin::LIVE_WINDOW_HORIZON_MS),
            ),
        )
    });
    NodeStatus {
        node_id: m.id,
        region: ctx.info.region.clone(),
        zone: ctx.info.zone.clone(),
        role: role_name(m.state).to_string(),
        term: m.current_term,
        leader_id: m.current_leader,
        last_log_index: last,
        committed_index: m.local_committed.map_or(0, |l| l.index),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        snapshot_index: m.snapshot.map_or(0, |l| l.index),
        purged_index: m.purged.map_or(0, |l| l.index),
        // A sole voter leading is its own quorum at every instant (openraft
        // moves its quorum-ack clock only on writes).
        millis_since_quorum_ack: if m.current_leader == Some(m.id)
            && crate::proposer::is_sole_voter(&m)
        {
            Some(0)
        } else {
            m.last_quorum_acked
                .as_ref()
                .map(|t| t.elapsed().as_millis() as u64)
        },
        voters,
        learners,
        members,
        replication,
        orders,
        sales_paused,
        test_faults_enabled: ctx.test_faults_enabled,
        fresh_data_dir: ctx.fresh_data_dir,
        edge_sales_paused: ctx.edge_sales_paused.load(Ordering::Relaxed),
        live_windows,
        metrics_addr: ctx.metrics_addr.clone(),
        framed_api_addr: ctx.framed_api_addr.clone(),
    }
}

/// Builds the admin router.
pub fn router(ctx: Arc<NodeContext>) -> Router {
    let protected = Router::new()
        .route("/admin/status", get(get_status))
        .route("/admin/init", post(init))
        .route("/admin/learners", post(add_learner))
        .route("/admin/promote", post(promote))
        .route("/admin/addresses", post(update_addresses))
        .route("/admin/peer-addresses", post(seed_peer_addresses))
        .route("/admin/remove", post(remove))
        .route("/admin/voters", post(replace_voters))
        .route("/admin/transfer-leader", post(transfer_leader))
        .route("/admin/sales", post(sales_gate))
        .route("/admin/snapshot", post(snapshot))
        .route("/admin/invariants", get(invariants))
        .route("/admin/contact-keys", get(get_contact_keys))
        .route("/admin/contact-keys/reseal", post(reseal_contacts))
        .layer(middleware::from_fn_with_state(
            ctx.clone(),
            hold_while_paused,
        ))
        // Added after the hold: a paused node still takes the call that
        // lifts its pause.
        .route("/admin/faults", get(get_faults).post(set_faults))
        .layer(middleware::from_fn_with_state(ctx.clone(), authenticate));
    open_routes(&ctx)
        .merge(protected)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ctx)
}

/// What anyone who reaches the admin port may read without a token: health,
/// readiness, metrics.
fn open_routes(ctx: &Arc<NodeContext>) -> Router<Arc<NodeContext>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            ctx.clone(),
            hold_while_paused,
        ))
}

/// A paused node (the `paused` fault hook) answers nothing, as a frozen
/// process would: the request waits until the pause is lifted.
pub(crate) async fn hold_while_paused(
    State(ctx): State<Arc<NodeContext>>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    ctx.faults.wait_while_paused().await;
    next.run(req).await
}

/// The `--metrics-addr` listener: only the open routes, never a change.
pub fn probe_router(ctx: Arc<NodeContext>) -> Router {
    open_routes(&ctx)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ctx)
}

async fn authenticate(
    State(ctx): State<Arc<NodeContext>>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    if let Some(token) = &ctx.admin_token {
        if !bearer_matches(req.headers(), token) {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong admin bearer token",
            );
        }
    }
    next.run(req).await
}

async fn get_status(State(ctx): State<Arc<NodeContext>>) -> Json<NodeStatus> {
    Json(status(&ctx))
}

async fn readyz(State(ctx): State<Arc<NodeContext>>) -> Response {
    let s = status(&ctx);
    let reason = if s.voters.is_empty() && s.learners.is_empty() {
        Some("not initialized: no membership yet")
    } else if s.leader_id.is_none() {
        Some("no leader known")
    } else if s.applied_index + 1000 < s.committed_index {
        Some("applying a backlog of committed entries")
    } else {
        None
    };
    match reason {
        None => (StatusCode::OK, Json(json!({"ready": true}))).into_response(),
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": r})),
        )
            .into_response(),
    }
}

async fn metrics(State(ctx): State<Arc<NodeContext>>, headers: HeaderMap) -> Response {
    if let Some(token) = &ctx.metrics_token {
        if !crate::api::bearer_matches(&headers, token) {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "/metrics needs the metrics bearer token (--metrics-token)",
            );
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        ctx.metrics.render(),
    )
        .into_response()
}

/// Decodes `bytes` as every admin request body (the fuzz harness, `fuzzing.rs`).
#[doc(hidden)]
pub fn decode_every_body(bytes: &[u8]) {
    let _ = serde_json::from_slice::<InitBody>(bytes);
    let _ = serde_json::from_slice::<LearnerBody>(bytes);
    let _ = serde_json::from_slice::<PeerAddressesBody>(bytes);
    let _ = serde_json::from_slice::<NodeIdBody>(bytes);
    let _ = serde_json::from_slice::<VotersBody>(bytes);
    let _ = serde_json::from_slice::<TransferBody>(bytes);
    let _ = serde_json::from_slice::<FaultSettings>(bytes);
    let _ = serde_json::from_slice::<ResealRequest>(bytes);
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InitBody {
    members: BTreeMap<NodeId, NodeInfo>,
}

async fn init(State(ctx): State<Arc<NodeContext>>, AdminJson(b): AdminJson<InitBody>) -> Response {
    if !b.members.contains_key(&ctx.node_id) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "members must include the node receiving init",
        );
    }
    match ctx.raft.initialize(b.members).await {
        Ok(()) => (StatusCode::OK, Json(json!({"initialized": true}))).into_response(),
        Err(e) => error(StatusCode::CONFLICT, "init_refused", e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LearnerBody {
    node_id: NodeId,
    node: NodeInfo,
}

async fn add_learner(
    State(ctx): State<Arc<NodeContext>>,
    AdminJson(b): AdminJson<LearnerBody>,
) -> Response {
    membership_result(ctx.raft.add_learner(b.node_id, b.node, true).await)
}

/// Records new addresses for an existing member (its pod came back with
/// another IP). Only the member's own node may be named this way: pointing an
/// id at another node would let two nodes act as one member.
async fn update_addresses(
    State(ctx): State<Arc<NodeContext>>,
    AdminJson(b): AdminJson<LearnerBody>,
) -> Response {
    let m = ctx.raft.metrics().borrow_watched().clone();
    let membership = m.membership_config.membership();
    let Some(old) = membership.get_node(&b.node_id) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_a_member",
            format!("node {} is not a member; add it as a learner", b.node_id),
        );
    };
    if old == &b.node {
        return (StatusCode::OK, Json(json!({"changed": false}))).into_response();
    }
    if old.region != b.node.region {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "node {} is in region {}; a member cannot move to region {} (replace it instead)",
                b.node_id, old.region, b.node.region
            ),
        );
    }
    let change = ChangeMembers::SetNodes(BTreeMap::from([(b.node_id, b.node)]));
    match ctx.raft.change_membership(change, false).await {
        Ok(resp) => (
            StatusCode::OK,
            Json(json!({"changed": true, "log_index": resp.log_id.index})),
        )
            .into_response(),
        Err(e) => error(StatusCode::CONFLICT, "membership_change_refused", e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerAddressesBody {
    /// Member id → Raft address.
    raft_addrs: BTreeMap<NodeId, String>,
}

/// Tells this node (only) where members are now, without Raft: for a group
/// whose members all moved, no leader can be elected to record the new
/// addresses. Only current members, only addresses that parse.
async fn seed_peer_addresses(
    State(ctx): State<Arc<NodeContext>>,
    AdminJson(b): AdminJson<PeerAddressesBody>,
) -> Response {
    let m = ctx.raft.metrics().borrow_watched().clone();
    let membership = m.membership_config.membership();
    for (id, addr) in &b.raft_addrs {
        if membership.get_node(id).is_none() {
            return error(
                StatusCode::NOT_FOUND,
                "not_a_member",
                format!("node {id} is not a member"),
            );
        }
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("node {id}: {addr:?} is not an ip:port address"),
            );
        }
    }
    let changed = ctx.pool.seed_addresses(b.raft_addrs.into_iter().collect());
    (StatusCode::OK, Json(json!({"changed": changed}))).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeIdBody {
    node_id: NodeId,
}

async fn promote(
    State(ctx): State<Arc<NodeContext>>,
    AdminJson(b): AdminJson<NodeIdBody>,
) -> Response {
    let change = ChangeMembers::AddVoterIds(BTreeSet::from([b.node_id]));
    membership_result(ctx.raft.change_membership(change, false).await)
}

async fn remove(
    State(ctx): State<Arc<NodeContext>>,
    AdminJson(b): AdminJson<NodeIdBody>,
) -> Response {
    let s = status(&ctx);
    if s.voters.contains(&b.node_id) {
        if s.voters.len() <= 1 {
            return error(
                StatusCode::CONFLICT,
                "refused",
                "cannot remove the last voter",
            );
        }
        let change = ChangeMembers::RemoveVoters(BTreeSet::from([b.node_id]));
        if let Err(e) = ctx.raft.change_membership(change, false).await {
            return error(StatusCode::CONFLICT, "membership_change_refused", e);
        }
        return (StatusCode::OK, Json(status(&ctx))).into_response();
    }
    let change = ChangeMembers::RemoveNodes(BTreeSet::from([b.node_id]));
    membership_result(ctx.raft.change_membership(change, false).await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VotersBody {
    voters: BTreeSet<NodeId>,
}

async fn replace_voters(
    State(ctx): State<Arc<NodeContext>>,
    AdminJson(b): AdminJson<VotersBody>,
) -> Response {
    if b.voters.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "voters must not be empty",
        );
    }
    membership_result(ctx.raft.change_membership(b.voters, false).await)
}

fn membership_result<E: std::fmt::Display>(
    r: Result<openraft::raft::ClientWriteResponse<crate::raft_types::TypeConfig>, E>,
) -> Response {
    match r {
        Ok(resp) => (
            StatusCode::OK,
            Json(json!({"log_index": resp.log_id.index})),
        )
            .into_response(),
        Err(e) => error(StatusCode::CONFLICT, "membership_change_refused", e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    to: NodeId,
}

async fn transfer_leader(
    State(ctx): State<Arc<NodeContext>>,
    AdminJson(b): AdminJson<TransferBody>,
) -> Response {
    let s = status(&ctx);
    if s.leader_id != Some(ctx.node_id) {
        return error(
            StatusCode::CONFLICT,
            "not_leader",
            format!(
                "leader transfer must be asked of the leader ({:?})",
                s.leader_id
            ),
        );
    }
    if !s.voters.contains(&b.to) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("node {} is not a voter", b.to),
        );
    }
    match ctx.raft.trigger().transfer_leader(b.to).await {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({"transferring_to": b.to}))).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

/// How long a leader waits for the replicated pause to commit; past it the
/// edge gate alone holds (quorum is likely lost, which is when T4 pauses).
const GATE_COMMIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes or opens the node's sales gate (D-number in docs/decisions.md:
/// "Sales pause at the edge"): the edge flag at once, and on the leader the
/// replicated `SetSalesPaused` too, bounded by [`GATE_COMMIT_TIMEOUT`].
async fn sales_gate(
    State(ctx): State<Arc<NodeContext>>,
    AdminJson(b): AdminJson<SalesGate>,
) -> Response {
    if let Err(e) = (Command::SetSalesPaused {
        paused: b.paused,
        reason: b.reason.clone(),
    })
    .validate()
    {
        return error(StatusCode::BAD_REQUEST, "invalid_request", e);
    }
    ctx.edge_sales_paused.store(b.paused, Ordering::Relaxed);
    tracing::info!(paused = b.paused, reason = %b.reason, "sales gate set at the edge");
    let leader = ctx.raft.metrics().borrow_watched().current_leader;
    let replicated = if leader != Some(ctx.node_id) {
        ReplicatedGate::NotLeader { leader }
    } else {
        let cmd = Command::SetSalesPaused {
            paused: b.paused,
            reason: b.reason,
        };
        // The admin token's caller: on the leader the command is proposed
        // locally; were it forwarded, the leader would refuse it (no client
        // verb covers pausing sales).
        let operator = Arc::new(crate::auth::Principal {
            name: "admin".into(),
            scope: crate::auth::Scope::all(),
        });
        match tokio::time::timeout(GATE_COMMIT_TIMEOUT, ctx.proposer.submit(cmd, operator)).await {
            Ok(Ok(Outcome::Rejected { code, .. })) => ReplicatedGate::Failed {
                message: code.to_string(),
            },
            Ok(Ok(_)) => ReplicatedGate::Committed,
            Ok(Err(e)) => ReplicatedGate::Failed {
                message: e.to_string(),
            },
            Err(_) => ReplicatedGate::Failed {
                message: format!(
                    "not committed within {} ms",
                    GATE_COMMIT_TIMEOUT.as_millis()
                ),
            },
        }
    };
    Json(SalesGateReply {
        node_id: ctx.node_id,
        edge_paused: b.paused,
        replicated,
    })
    .into_response()
}

async fn snapshot(State(ctx): State<Arc<NodeContext>>) -> Response {
    match ctx.raft.trigger().snapshot().await {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({"snapshot": "triggered"}))).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

async fn invariants(State(ctx): State<Arc<NodeContext>>) -> Response {
    let applied = ctx.sm.applied_index();
    let (result, summary) = ctx.sm.audit(&ctx.metrics);
    let body = match result {
        Ok(()) => json!({"ok": true, "applied_index": applied, "summary": summary}),
        Err(v) => {
            json!({"ok": false, "violation": v.to_string(), "applied_index": applied, "summary": summary})
        }
    };
    (StatusCode::OK, Json(body)).into_response()
}

async fn get_faults(State(ctx): State<Arc<NodeContext>>) -> Response {
    if !ctx.test_faults_enabled {
        return error(
            StatusCode::NOT_FOUND,
            "faults_disabled",
            "fault hooks are off (start the node with --enable-test-faults)",
        );
    }
    (StatusCode::OK, Json(ctx.faults.get())).into_response()
}

async fn set_faults(
    State(ctx): State<Arc<NodeContext>>,
    AdminJson(b): AdminJson<FaultSettings>,
) -> Response {
    if !ctx.test_faults_enabled {
        return error(
            StatusCode::NOT_FOUND,
            "faults_disabled",
            "fault hooks are off (start the node with --enable-test-faults)",
        );
    }
    tracing::warn!(?b, "fault injection changed");
    ctx.faults.set(&b);
    // Frozen: no election or heartbeat timer fires while paused.
    ctx.raft.runtime_config().tick(!b.paused);
    (StatusCode::OK, Json(ctx.faults.get())).into_response()
}

/// Which contact keys this node holds and how many of its stored contacts
/// each key id seals (`roomkeeper contact-keys check`).
pub fn contact_keys_report(ctx: &NodeContext) -> ContactKeysReport {
    let ring = ctx.keyring.get();
    let applied_index = ctx.sm.applied_index();
    let counts = ctx.sm.read(|s| s.contact_key_counts());
    let count_where = |f: &dyn Fn(u8) -> bool| -> u64 {
        counts
            .iter()
            .filter(|(id, _)| f(**id))
            .map(|(_, n)| *n)
            .sum()
    };
    let under_retired_keys = count_where(&|id| ring.is_retired(id));
    let under_unknown_keys = count_where(&|id| !ring.holds(id));
    ContactKeysReport {
        node_id: ctx.node_id,
        applied_index,
        sealing_key_id: ring.sealing_key_id(),
        keys: ring
            .key_infos()
            .into_iter()
            .map(|k| ContactKey {
                id: k.id,
                retired: k.retired,
                staged: k.staged,
            })
            .collect(),
        records: counts.iter().map(|(id, n)| (id.to_string(), *n)).collect(),
        under_retired_keys,
        under_unknown_keys,
        ok: under_retired_keys == 0 && under_unknown_keys == 0,
    }
}

async fn get_contact_keys(State(ctx): State<Arc<NodeContext>>) -> Json<ContactKeysReport> {
    Json(contact_keys_report(&ctx))
}

/// Re-seals every stored contact that is not under the sealing key: the
/// leader opens each with its keyring, seals it under the newest key and
/// proposes the ciphertexts in `ResealContacts` entries of at most `batch`
/// contacts, one entry at a time, so orders keep committing between them.
/// Each entry replaces a contact only while it is still under the key it was
/// read under: running it again, or after an interruption, is safe and goes
/// on where it stopped.
async fn reseal_contacts(
    State(ctx): State<Arc<NodeContext>>,
    AdminJson(b): AdminJson<ResealRequest>,
) -> Response {
    let batch = b.batch.map_or(MAX_RESEAL_BATCH, |n| n as usize);
    if batch == 0 || batch > MAX_RESEAL_BATCH {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("batch must be between 1 and {MAX_RESEAL_BATCH}"),
        );
    }
    let operator = Arc::new(crate::auth::Principal {
        name: "admin".into(),
        scope: crate::auth::Scope::all(),
    });
    let ring = ctx.keyring.get();
    let keep = ring.sealing_key_id();
    let mut reply = ResealReply {
        node_id: ctx.node_id,
        sealing_key_id: keep,
        resealed: 0,
        skipped: 0,
        batches: 0,
        unreadable: 0,
    };
    let mut after = 0;
    loop {
        let leader = ctx.raft.metrics().borrow_watched().current_leader;
        if leader != Some(ctx.node_id) {
            return error(
                StatusCode::CONFLICT,
                "not_leader",
                format!(
                    "re-seal must be asked of the leader ({leader:?}); {} contacts re-sealed before this node stopped leading: run it again there",
                    reply.resealed
                ),
            );
        }
        let todo = ctx.sm.read(|s| s.contacts_not_under(keep, after, batch));
        let Some(&(last, _)) = todo.last() else {
            break;
        };
        after = last;
        let mut contacts = Vec::with_capacity(todo.len());
        for (order_id, sealed) in todo {
            let Some(from_key) = contact_key_id(&sealed) else {
                continue;
            };
            match ring.reseal(&sealed) {
                Ok(contact) => contacts.push(ResealedContact {
                    order_id,
                    from_key,
                    contact,
                }),
                Err(e) => {
                    reply.unreadable += 1;
                    tracing::warn!(order_id, from_key, error = %e, "contact cannot be re-sealed here; left as it is");
                }
            }
        }
        if contacts.is_empty() {
            continue;
        }
        reply.batches += 1;
        match ctx
            .proposer
            .submit(Command::ResealContacts { contacts }, operator.clone())
            .await
        {
            Ok(Outcome::Resealed { resealed, skipped }) => {
                reply.resealed += u64::from(resealed);
                reply.skipped += u64::from(skipped);
                ctx.metrics
                    .contacts_resealed_total
                    .inc_by(u64::from(resealed));
            }
            Ok(other) => {
                return error(
                    StatusCode::CONFLICT,
                    "reseal_refused",
                    format!(
                        "a re-seal entry was refused ({}) after {} contacts re-sealed",
                        other.label(),
                        reply.resealed
                    ),
                )
            }
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!(
                        "{e}; {} contacts re-sealed so far: run it again to go on",
                        reply.resealed
                    ),
                )
            }
        }
    }
    tracing::info!(
        sealing_key_id = keep,
        resealed = reply.resealed,
        skipped = reply.skipped,
        batches = reply.batches,
        unreadable = reply.unreadable,
        "contact re-seal finished"
    );
    Json(reply).into_response()
}
