//! The custom resources of group `roomkeeper.dev/v1alpha1`.
//!
//! The Rust types are the source of truth: `roomkeeper operator crds` renders
//! them into `crds/` and a test fails when that folder is out of date. Rules the
//! API server enforces are written here as CEL (`x-kubernetes-validations`) with
//! messages a user can act on; the operator checks the same rules again
//! (`validate_spec`) because a CRD installed from an older chart may lack them.

// kube's `printcolumn(name = …, type_ = …)` repeats key names by design.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "roomkeeper.dev";
pub const FINALIZER: &str = "roomkeeper.dev/cleanup";

/// A live-commerce order store replicated with Raft across regions.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "roomkeeper.dev",
    version = "v1alpha1",
    kind = "LiveRoomCluster",
    namespaced,
    shortname = "lrc",
    category = "roomkeeper",
    status = "LiveRoomClusterStatus",
    doc = "A live-commerce order store replicated with Raft across regions, kept selling by the operator.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.readyVoters",
        description = "ready voters / voters"
    ),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(name = "Term", type_ = "integer", json_path = ".status.term"),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.commitLag",
        description = "largest follower lag in log entries"
    ),
    printcolumn(name = "Tier", type_ = "string", json_path = ".status.activeTier"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.regions.map(r, r.voters).sum() >= 3").message("the cluster needs at least 3 voters in total (sum of regions[].voters)"),
    validation = Rule::new("self.regions.map(r, r.voters).sum() % 2 == 1").message("the total number of voters (sum of regions[].voters) must be odd: an even count adds no fault tolerance"),
    validation = Rule::new("!self.surviveRegionLoss || self.regions.all(r, 2 * r.voters < self.regions.map(x, x.voters).sum())").message("surviveRegionLoss is set but a region holds a majority of the voters: losing it would lose quorum; spread voters so that no region has more than half"),
    validation = Rule::new("!self.surviveRegionLoss || self.regions.filter(r, r.voters > 0).size() >= 3").message("surviveRegionLoss needs voters in at least 3 regions"),
    validation = Rule::new("self.regions.all(a, self.regions.exists_one(b, b.name == a.name))").message("region names must be unique")
)]
pub struct LiveRoomClusterSpec {
    /// The regions the cluster spans. Each region runs one StatefulSet of order-store nodes.
    /// Keyed by name, so that transition rules (immutable fields) can compare
    /// a region with its old self.
    #[schemars(length(min = 1, max = 7), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub regions: Vec<RegionSpec>,
    /// Container image of the order-store node (the `roomkeeper` binary).
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new("self != ''").message("image must not be empty"))]
    pub image: String,
    /// Settings of the order-store nodes.
    #[serde(default)]
    #[x_kube(
        validation = Rule::new("self.electionTimeoutMinMs < self.electionTimeoutMaxMs").message("orderStore.electionTimeoutMinMs must be below electionTimeoutMaxMs"),
        validation = Rule::new("self.heartbeatMs * 3 <= self.electionTimeoutMinMs").message("orderStore.heartbeatMs must be at most a third of electionTimeoutMinMs, or followers start elections between heartbeats")
    )]
    pub order_store: OrderStoreSpec,
    /// The FailoverPlaybook to run; without one the built-in default playbook runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook_ref: Option<PlaybookRef>,
    /// Service-level objectives the operator reports against.
    #[serde(default)]
    pub slo: SloSpec,
    /// Require that losing any one region keeps a quorum of voters.
    #[serde(default)]
    pub survive_region_loss: bool,
    /// Stop reconciling the cluster's members and stop playbook actions (objects are kept).
    #[serde(default)]
    pub paused: bool,
    /// Decide and record playbook actions without carrying them out.
    #[serde(default)]
    pub dry_run: bool,
    /// What deleting this object does to the data. `Retain` (default) keeps the volumes, the
    /// node-id map and the keys, so a cluster created again under the same name resumes the
    /// same Raft group with its orders; `Delete` removes them too, for good.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Who besides the cluster's own pods and the operator may reach the nodes
    /// (the cluster's NetworkPolicy).
    #[serde(default)]
    pub network: NetworkSpec,
}

/// Sources the cluster's NetworkPolicy admits besides its own pods (Raft) and
/// the operator (admin API).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkSpec {
    /// Namespaces whose pods may call the order API (the ingress controller's
    /// or the gateway's), besides every pod of the cluster's own namespace.
    /// Unset: the order API admits every source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_namespace_selector:
        Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// Namespaces whose Prometheus pods (label `app.kubernetes.io/name:
    /// prometheus`) may scrape `/metrics` on the admin port. Unset: Prometheus
    /// pods of every namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitoring_namespace_selector:
        Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

/// What happens to a deleted cluster's data.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Keep volumes, node ids and keys (delete them by label `roomkeeper.dev/cluster` to destroy the data).
    #[default]
    Retain,
    /// Delete volumes, node ids and keys with the cluster: the orders are gone.
    Delete,
}

/// One region of a LiveRoomCluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegionSpec {
    /// DNS-label name of the region (`us-east`), used in object names.
    #[schemars(length(min = 1, max = 30))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("region name must be a DNS label: lower-case letters, digits and '-', starting and ending with an alphanumeric"))]
    pub name: String,
    /// Secret holding a kubeconfig (key `kubeconfig`) of the Kubernetes cluster that runs this
    /// region; without it the region runs in the operator's own cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("kubeconfigSecretRef is immutable: a region cannot move to another Kubernetes cluster in place; add a new region and remove this one"))]
    pub kubeconfig_secret_ref: Option<SecretKeyRef>,
    /// Raft voters in this region.
    #[schemars(range(min = 0, max = 7))]
    pub voters: i32,
    /// Non-voting replicas (learners) in this region, for reads and fast replacement.
    #[serde(default)]
    #[schemars(range(min = 0, max = 5))]
    pub learners: i32,
    /// Persistent storage of each node.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Compute resources of each node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// Availability zones to spread this region's nodes over, round-robin by ordinal.
    #[serde(default)]
    #[schemars(length(max = 8), inner(length(min = 1, max = 63)))]
    #[x_kube(validation = Rule::new("self.all(z, self.exists_one(y, y == z))").message("zones must be unique within a region"))]
    pub zones: Vec<String>,
}

/// A key in a Secret.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret in the cluster's namespace.
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_kubeconfig_key")]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".to_string()
}

/// Storage of an order-store node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size of each node; can grow, never shrink.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("quantity(self).compareTo(quantity(oldSelf)) >= 0").message("storage.size cannot shrink: a smaller volume could not hold the Raft log already written"))]
    #[x_kube(validation = Rule::new("isQuantity(self)").message("storage.size must be a quantity such as 10Gi"))]
    pub size: String,
    /// StorageClass of the volumes; fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage.storageClassName is immutable: existing volumes cannot change class"))]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: "10Gi".to_string(),
            storage_class_name: None,
        }
    }
}

/// Settings of the order-store nodes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct OrderStoreSpec {
    /// Leader heartbeat interval. A heartbeat's answer counts only within
    /// one interval: keep it above the slowest round trip between regions,
    /// or an idle leader's lease lapses and it refuses writes until the
    /// link is faster (docs/decisions.md, D49).
    #[schemars(range(min = 10, max = 5000))]
    pub heartbeat_ms: i64,
    /// Lower bound of the randomized election timeout.
    #[schemars(range(min = 50, max = 60000))]
    pub election_timeout_min_ms: i64,
    /// Upper bound of the randomized election timeout.
    #[schemars(range(min = 50, max = 60000))]
    pub election_timeout_max_ms: i64,
    /// Take a snapshot after this many log entries.
    #[schemars(range(min = 100))]
    pub snapshot_every_entries: i64,
    /// Writes a node accepts in flight before answering 429.
    #[schemars(range(min = 1))]
    pub max_inflight_writes: i64,
    /// Start the nodes with their drill fault hooks on (`--enable-test-faults`):
    /// ChaosDrills of kind `diskStall` and `wanLatency` slow a node's fsync or
    /// its Raft links through them, and are refused against a cluster without
    /// them. Off by default: with them on, the admin token can slow a node.
    pub fault_hooks: bool,
    /// Also take orders over the framed protocol (`--framed-api-addr`, port
    /// 7501; docs/framed-api.md): orders pipelined over one TCP connection,
    /// with the client API's tokens, TLS, connection caps and NetworkPolicy,
    /// and a `framed` port on each region's client Service. Off by default:
    /// turning it on rolls the nodes once. Traffic weights move HTTP
    /// clients only (an HTTPRoute); framed clients pick a region's Service.
    pub framed_api: bool,
}

impl Default for OrderStoreSpec {
    fn default() -> Self {
        OrderStoreSpec {
            heartbeat_ms: 60,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            snapshot_every_entries: 10_000,
            max_inflight_writes: 4096,
            fault_hooks: false,
            framed_api: false,
        }
    }
}

/// Reference to a FailoverPlaybook in the same namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlaybookRef {
    /// Name of the FailoverPlaybook.
    pub name: String,
}

/// Service-level objectives.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct SloSpec {
    /// Target share of order attempts that succeed, in percent.
    #[schemars(range(min = 50.0, max = 100.0))]
    pub availability_percent: f64,
    /// Target p99 latency of placing an order, in milliseconds: one of the node latency
    /// histogram's bucket bounds (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000), so the
    /// latency alerts measure exactly this threshold.
    #[schemars(range(min = 1), extend("enum" = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000]))]
    pub p99_latency_ms: i64,
    /// Longest tolerated gap without accepted orders during a failover.
    #[schemars(range(min = 1))]
    pub rto_seconds: i64,
    /// Acknowledged orders that may be lost in a failover (0: none).
    #[schemars(range(min = 0, max = 0))]
    pub rpo_orders: i64,
}

impl Default for SloSpec {
    fn default() -> Self {
        SloSpec {
            availability_percent: 99.95,
            p99_latency_ms: 50,
            rto_seconds: 5,
            rpo_orders: 0,
        }
    }
}

/// What the operator last saw of the cluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LiveRoomClusterStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Available, Degraded, Progressing, PlaybookTier.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Creating, Bootstrapping, Running, Degraded, Invalid, Paused, Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `ready/desired` voters, e.g. `5/5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_voters: Option<String>,
    /// Pod of the Raft leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Raft node id of the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_id: Option<i64>,
    /// Current Raft term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<i64>,
    /// Leader's commit index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_index: Option<i64>,
    /// Largest follower lag behind the leader, in log entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_lag: Option<i64>,
    /// The leader's last log index (committed or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_log_index: Option<i64>,
    /// Orders at risk, in log entries: in the leader's log, not yet
    /// acknowledged by a quorum (their buyers have no answer yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncommitted_entries: Option<i64>,
    /// Orders at risk, in log entries: committed, but held in fewer than a
    /// majority of the regions (losing those regions together loses them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_below_region_majority: Option<i64>,
    /// The playbook tier in force (`T0 watch` when healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_tier: Option<String>,
    /// Per-region counts.
    #[serde(default)]
    pub regions: Vec<RegionStatus>,
    /// Raft members as the leader reports them.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// True once the Raft group was initialized; never goes back.
    #[serde(default)]
    pub bootstrapped: bool,
    /// Rooms on air now or within the next 30 minutes, as the nodes report
    /// them: the windows the playbook's `liveWindow` guard honours.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub live_windows: Vec<LiveWindowStatus>,
    /// The newest playbook decisions (taken, blocked, awaiting approval,
    /// dry-run), oldest first; every decision is also an Event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<crate::history::DecisionEntry>,
}

/// A room's live window, as the status shows it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LiveWindowStatus {
    pub room: String,
    /// The region the room sells from.
    pub home_region: String,
    /// RFC 3339, UTC.
    pub start: String,
    /// RFC 3339, UTC (exclusive).
    pub end: String,
    pub expected_peak_orders_per_s: i64,
}

/// Counts of one region.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegionStatus {
    pub name: String,
    /// Desired voters.
    pub voters: i32,
    /// Voters in the Raft membership whose pods are ready.
    pub ready_voters: i32,
    /// Learners in the Raft membership.
    pub learners: i32,
    /// Pods running with a pod IP.
    pub running_pods: i32,
    /// The region's weight for new buyers in the cluster's traffic router
    /// (the `<cluster>-buyers` HTTPRoute); 0 = drained. Absent without a router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_weight: Option<i32>,
    /// For a region in its own Kubernetes cluster (`kubeconfigSecretRef`):
    /// whether its API server answered the last reconcile (`Reachable`,
    /// `Unreachable`). Absent for regions in the operator's cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_api: Option<String>,
}

/// One Raft member.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub node_id: i64,
    pub pod: String,
    pub region: String,
    /// voter or learner.
    pub role: String,
    /// Entries behind the leader, as the leader sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// The highest log index the leader knows this node holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_index: Option<i64>,
    /// The leader heard from this node within the last 2 s (true for the
    /// leader itself). A yes/no rather than the milliseconds, so that an idle
    /// cluster's status does not change at every reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicating: Option<bool>,
}

/// A failover playbook: the tiers of the playbook engine, the same types the
/// local `roomkeeper demo --playbook FILE` reads.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "roomkeeper.dev",
    version = "v1alpha1",
    kind = "FailoverPlaybook",
    namespaced,
    shortname = "fpb",
    category = "roomkeeper",
    status = "FailoverPlaybookStatus",
    doc = "Tiered failover playbook run by the roomkeeper operator for the LiveRoomClusters that reference it.",
    printcolumn(name = "Tiers", type_ = "integer", json_path = ".status.tiers"),
    printcolumn(name = "Valid", type_ = "string", json_path = ".status.valid"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(transparent)]
pub struct FailoverPlaybookSpec(pub roomkeeper_playbook::Playbook);

/// Whether the playbook passed validation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverPlaybookStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `True` or `False`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<String>,
    /// Number of tiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The custom resource definitions of the operator, in install order.
pub fn all_crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    let mut crds = vec![
        LiveRoomCluster::crd(),
        FailoverPlaybook::crd(),
        crate::drill::ChaosDrill::crd(),
        crate::schedule::ChaosDrillSchedule::crd(),
        crate::approval::FailoverApproval::crd(),
        crate::switchover::Switchover::crd(),
        crate::switchover::Failover::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                drop_unsigned_formats(schema);
            }
        }
    }
    crds
}

/// Removes the `uint8` .. `uint64` formats schemars gives unsigned integers:
/// the API server does not know them and warns on every apply of the CRD
/// ("unrecognized format"); the `minimum: 0` schemars also gives them keeps
/// the meaning.
fn drop_unsigned_formats(
    schema: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    if schema
        .format
        .as_deref()
        .is_some_and(|f| f.starts_with("uint"))
    {
        schema.format = None;
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.all_of.iter_mut().flatten())
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten())
        .chain(schema.not.as_deref_mut());
    for child in children {
        drop_unsigned_formats(child);
    }
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    };
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(s)) => drop_unsigned_formats(s),
        Some(JSONSchemaPropsOrArray::Schemas(v)) => v.iter_mut().for_each(drop_unsigned_formats),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(s)) = schema.additional_properties.as_mut() {
        drop_unsigned_formats(s);
    }
}

/// Every CRD as `(file name, YAML)`, as `roomkeeper operator crds` writes them.
pub fn render_crds() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    all_crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let body = serde_yaml::to_string(&crd)?;
            Ok((
                format!("{name}.yaml"),
                format!("# Generated from operator/src/crd.rs by `roomkeeper operator crds`; do not edit.\n{body}"),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/` is what the types render; regenerate with
    /// `cargo run -p roomkeeper -- operator crds --out crds` (or
    /// `ROOMKEEPER_BLESS=1 cargo test -p roomkeeper-operator --lib crd::`).
    #[test]
    fn crds_folder_is_up_to_date() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        for (file, text) in render_crds().unwrap() {
            if std::env::var_os("ROOMKEEPER_BLESS").is_some() {
                std::fs::write(dir.join(&file), &text).unwrap();
            }
            let on_disk = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
            assert!(
                on_disk == text,
                "crds/{file} is out of date: run `cargo run -p roomkeeper -- operator crds --out crds`"
            );
        }
    }

    /// The API server accepts exactly the latency objectives the node's
    /// histogram has a bucket for.
    #[test]
    fn latency_objectives_are_the_histogram_options() {
        let crd =
            serde_json::to_value(<LiveRoomCluster as kube::CustomResourceExt>::crd()).unwrap();
        let p99 = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["slo"]["properties"]["p99LatencyMs"];
        let allowed: Vec<i64> = p99["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("no enum in {p99}"))
            .iter()
            .filter_map(serde_json::Value::as_i64)
            .collect();
        assert_eq!(allowed, roomkeeper_api::metrics::SLO_LATENCY_OPTIONS_MS);
        assert!(allowed.contains(&SloSpec::default().p99_latency_ms));
    }

    #[test]
    fn schemas_are_structural_enough_for_the_api_server() {
        for crd in all_crds() {
            let json = serde_json::to_string(&crd).unwrap();
            assert!(!json.contains("\"$ref\""), "{json}");
            assert!(!json.contains("\"oneOf\""), "{json}");
            // The API server warns on every apply about formats it does not know.
            assert!(!json.contains("\"format\":\"uint"), "{json}");
        }
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    fn example(file: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(file)
    }

    /// The default playbook example is the engine's built-in default, as a
    /// FailoverPlaybook. `ROOMKEEPER_BLESS=1 cargo test -p roomkeeper-operator`
    /// rewrites it.
    #[test]
    fn default_playbook_example_is_the_built_in_default() {
        let fpb = FailoverPlaybook::new(
            "default",
            FailoverPlaybookSpec(roomkeeper_playbook::default_playbook()),
        );
        let mut value = serde_json::to_value(&fpb).unwrap();
        value["metadata"] = serde_json::json!({"name": "default"});
        let text = format!(
            "# The built-in default playbook (tiers T0 watch .. T4 protect) as a FailoverPlaybook.\n# Generated by operator/src/crd.rs tests (ROOMKEEPER_BLESS=1 to rewrite).\n{}",
            serde_yaml::to_string(&value).unwrap()
        );
        let path = example("default-playbook.yaml");
        if std::env::var_os("ROOMKEEPER_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            on_disk, text,
            "examples/default-playbook.yaml differs from default_playbook()"
        );
        let back: FailoverPlaybook = serde_yaml::from_str(&on_disk).unwrap();
        assert_eq!(back.spec.0, roomkeeper_playbook::default_playbook());
    }

    #[test]
    fn three_region_example_is_valid() {
        let text = std::fs::read_to_string(example("three-region-cluster.yaml")).unwrap();
        let lrc: LiveRoomCluster = serde_yaml::from_str(&text).unwrap();
        crate::validate::validate_spec(&lrc.spec).unwrap();
        assert_eq!(lrc.spec.regions.len(), 3);
    }
}
