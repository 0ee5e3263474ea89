//! The Kubernetes objects a LiveRoomCluster owns, built as pure functions of its
//! spec (and the node ids already assigned), so they can be tested without an
//! API server and compared by hash to skip writes that change nothing.

use std::collections::{BTreeMap, BTreeSet};

use roomkeeper_api::admin::parse_joined_ids;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use crate::crd::{LiveRoomCluster, NetworkSpec, RegionSpec};

pub const RAFT_PORT: i32 = 7101;
pub const API_PORT: i32 = 7201;
pub const ADMIN_PORT: i32 = 7301;
/// The plain, read-only listener (`--metrics-addr`): `/metrics`, `/healthz`,
/// `/readyz` for Prometheus and the kubelet's probes, which cannot present
/// the operator's certificate the TLS admin API requires (D41).
pub const METRICS_PORT: i32 = 7401;
/// The framed order protocol's listener (`--framed-api-addr`), with
/// `spec.orderStore.framedApi`.
pub const FRAMED_PORT: i32 = 7501;
pub const HASH_ANNOTATION: &str = "roomkeeper.dev/spec-hash";
pub const CLUSTER_LABEL: &str = "roomkeeper.dev/cluster";
pub const REGION_LABEL: &str = "roomkeeper.dev/region";
pub const OPERATOR_APP: &str = "roomkeeper-operator";
const IDENTITY_DIR: &str = "/etc/roomkeeper/identity";
const CONTACT_DIR: &str = "/etc/roomkeeper/contact";
/// Where a node finds its region's Raft certificates (`--raft-tls-dir`).
pub const RAFT_TLS_DIR: &str = "/etc/roomkeeper/raft-tls";
/// Where a node finds its bearer tokens (`--client-token-file`,
/// `--admin-token-file`): the cluster's tokens Secret, mounted.
pub const TOKENS_DIR: &str = "/etc/roomkeeper/tokens";
/// Where a node finds its region's API server certificate (`--http-tls-dir`).
pub const API_TLS_DIR: &str = "/etc/roomkeeper/api-tls";
/// The cluster id the operator's pods run with (`--cluster-id`), and so the
/// one their certificates name (`node-<id>.local.raft.roomkeeper`): the
/// node's default, which every pod ran with before. Each cluster has its own
/// CA, and that is what keeps clusters apart on the Raft port.
pub const NODE_CLUSTER_ID: &str = "local";
const DATA_DIR: &str = "/var/lib/roomkeeper";

/// Names of everything a cluster owns, in one place.
pub struct Names<'a> {
    pub cluster: &'a str,
}

impl Names<'_> {
    pub fn statefulset(&self, region: &str) -> String {
        format!("{}-{region}", self.cluster)
    }
    pub fn pod(&self, region: &str, ordinal: i32) -> String {
        format!("{}-{region}-{ordinal}", self.cluster)
    }
    pub fn peers_service(&self, region: &str) -> String {
        format!("{}-{region}-peers", self.cluster)
    }
    pub fn client_service(&self, region: &str) -> String {
        format!("{}-{region}", self.cluster)
    }
    pub fn identities(&self) -> String {
        format!("{}-identities", self.cluster)
    }
    pub fn tokens(&self) -> String {
        format!("{}-tokens", self.cluster)
    }
    pub fn contact_keys(&self) -> String {
        format!("{}-contact-keys", self.cluster)
    }
    /// The cluster's Raft CA (`ca.crt`, `ca.key`).
    pub fn raft_ca(&self) -> String {
        format!("{}-raft-ca", self.cluster)
    }
    /// A region's Raft certificates: `ca.crt`, `node-<id>.crt`, `node-<id>.key`.
    pub fn raft_certs(&self, region: &str) -> String {
        format!("{}-{region}-raft-certs", self.cluster)
    }
    /// The cluster CA's certificate (`ca.crt`) for gateways that verify the
    /// nodes' API (the BackendTLSPolicy's `caCertificateRefs`).
    pub fn api_ca(&self) -> String {
        format!("{}-api-ca", self.cluster)
    }
    /// A region's API server certificate (`ca.crt`, `tls.crt`, `tls.key`).
    pub fn api_certs(&self, region: &str) -> String {
        format!("{}-{region}-api-tls", self.cluster)
    }
    pub fn network_policy(&self) -> String {
        format!("{}-peers-only", self.cluster)
    }
}

/// Labels on every object and pod of a cluster (and a region, when given).
pub fn labels(cluster: &str, region: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "roomkeeper-node".to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            cluster.to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            OPERATOR_APP.to_string(),
        ),
        (CLUSTER_LABEL.to_string(), cluster.to_string()),
    ]);
    if let Some(r) = region {
        l.insert(REGION_LABEL.to_string(), r.to_string());
    }
    l
}

fn selector(cluster: &str, region: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([(CLUSTER_LABEL.to_string(), cluster.to_string())]);
    if let Some(r) = region {
        l.insert(REGION_LABEL.to_string(), r.to_string());
    }
    l
}

fn owner_ref(lrc: &LiveRoomCluster) -> Option<OwnerReference> {
    lrc.controller_owner_ref(&())
}

fn meta(lrc: &LiveRoomCluster, name: String, region: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: lrc.metadata.namespace.clone(),
        labels: Some(labels(&cluster_name(lrc), region)),
        owner_references: owner_ref(lrc).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The cluster's name (always set on objects read from the API server).
pub fn cluster_name(lrc: &LiveRoomCluster) -> String {
    lrc.metadata.name.clone().unwrap_or_default()
}

/// One node slot of the cluster: a pod of a region's StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub pod: String,
    pub region: String,
    pub ordinal: i32,
    /// Ordinals below the region's voter count are voters; the rest learners.
    pub voter: bool,
    pub zone: Option<String>,
}

/// Every pod slot the spec asks for, in region order.
pub fn slots(lrc: &LiveRoomCluster) -> Vec<Slot> {
    let cluster = cluster_name(lrc);
    let names = Names { cluster: &cluster };
    let mut out = Vec::new();
    for r in &lrc.spec.regions {
        for ordinal in 0..(r.voters + r.learners).max(0) {
            let zone = if r.zones.is_empty() {
                None
            } else {
                usize::try_from(ordinal)
                    .ok()
                    .map(|o| r.zones[o % r.zones.len()].clone())
            };
            out.push(Slot {
                pod: names.pod(&r.name, ordinal),
                region: r.name.clone(),
                ordinal,
                voter: ordinal < r.voters,
                zone,
            });
        }
    }
    out
}

/// The identity map: pod name → (node id, zone). Ids are only ever appended:
/// a pod keeps its id, a new pod gets `next_id`, an id is never given twice.
/// `joined` lists the ids that have been Raft members: a node whose id is
/// listed but whose volume is empty stays out of Raft (D11).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identities {
    pub by_pod: BTreeMap<String, (u64, Option<String>)>,
    /// The next id to hand out; above every id ever assigned.
    pub next_id: u64,
    /// Ids of pods in `by_pod` that have been Raft members.
    pub joined: BTreeSet<u64>,
}

/// Why the identity map ConfigMap cannot be read. The reconcile stops on it:
/// guessing ids would hand a volume another node's identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("nodes line {line}: expected `<pod> <id> [zone]`")]
    MalformedLine { line: usize },
    #[error("nodes line {line}: id {id:?} is not a number")]
    BadId { line: usize, id: String },
    #[error("next-id {0:?} is not a number")]
    BadNextId(String),
    #[error("joined {0}")]
    BadJoined(#[from] roomkeeper_api::admin::BadJoinedId),
}

impl Identities {
    /// Parses the ConfigMap's `nodes` and `next-id` keys.
    pub fn parse(cm: Option<&ConfigMap>) -> Result<Identities, IdentityError> {
        let mut ids = Identities {
            by_pod: BTreeMap::new(),
            next_id: 1,
            joined: BTreeSet::new(),
        };
        let Some(data) = cm.and_then(|c| c.data.as_ref()) else {
            return Ok(ids);
        };
        if let Some(nodes) = data.get("nodes") {
            for (n, line) in nodes.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (Some(pod), Some(id)) = (parts.next(), parts.next()) else {
                    return Err(IdentityError::MalformedLine { line: n + 1 });
                };
                let id: u64 = id.parse().map_err(|_| IdentityError::BadId {
                    line: n + 1,
                    id: id.to_string(),
                })?;
                ids.next_id = ids.next_id.max(id + 1);
                ids.by_pod
                    .insert(pod.to_string(), (id, parts.next().map(str::to_string)));
            }
        }
        if let Some(next) = data.get("next-id") {
            let next: u64 = next
                .trim()
                .parse()
                .map_err(|_| IdentityError::BadNextId(next.clone()))?;
            ids.next_id = ids.next_id.max(next);
        }
        if let Some(joined) = data.get("joined") {
            ids.joined = parse_joined_ids(joined)?;
        }
        Ok(ids)
    }

    /// Gives every slot without an id a fresh one; keeps ids of pods no longer
    /// wanted (their members may still need removing). Returns whether it changed.
    pub fn assign(&mut self, slots: &[Slot], floor: u64) -> bool {
        self.next_id = self.next_id.max(floor);
        let mut changed = false;
        for s in slots {
            if !self.by_pod.contains_key(&s.pod) {
                self.by_pod
                    .insert(s.pod.clone(), (self.next_id, s.zone.clone()));
                self.next_id += 1;
                changed = true;
            }
        }
        changed
    }

    /// Retires a pod's id (its volume was wiped or it left): the pod gets a new
    /// id next time it is assigned; the old one is never handed out again.
    pub fn retire(&mut self, pod: &str) -> bool {
        match self.by_pod.remove(pod) {
            Some((id, _)) => {
                self.joined.remove(&id);
                true
            }
            None => false,
        }
    }

    /// Records that `members` are (or were) Raft members; ids no pod holds are
    /// ignored (they were retired). Returns whether anything was new.
    pub fn mark_joined(&mut self, members: impl IntoIterator<Item = u64>) -> bool {
        let mut changed = false;
        for id in members {
            if self.by_pod.values().any(|(i, _)| *i == id) {
                changed |= self.joined.insert(id);
            }
        }
        changed
    }

    pub fn id_of(&self, pod: &str) -> Option<u64> {
        self.by_pod.get(pod).map(|(id, _)| *id)
    }

    pub fn pod_of(&self, id: u64) -> Option<&str> {
        self.by_pod
            .iter()
            .find(|(_, (i, _))| *i == id)
            .map(|(p, _)| p.as_str())
    }

    fn render(&self) -> BTreeMap<String, String> {
        let mut nodes = String::from("# <pod> <raft node id> [zone] -- written by roomkeeper-operator; ids are never reused\n");
        for (pod, (id, zone)) in &self.by_pod {
            nodes.push_str(pod);
            nodes.push(' ');
            nodes.push_str(&id.to_string());
            if let Some(z) = zone {
                nodes.push(' ');
                nodes.push_str(z);
            }
            nodes.push('\n');
        }
        let mut joined = String::from(
            "# raft node ids that have been members: one of these on an empty volume stays out of Raft\n",
        );
        for id in &self.joined {
            joined.push_str(&id.to_string());
            joined.push('\n');
        }
        BTreeMap::from([
            ("nodes".to_string(), nodes),
            ("next-id".to_string(), self.next_id.to_string()),
            ("joined".to_string(), joined),
        ])
    }
}

/// The identity map has no owner reference: like the volumes it names, it
/// survives the deletion of the cluster object (D18).
/// The cluster CA's certificate as a ConfigMap (`ca.crt`): public, what a
/// gateway's BackendTLSPolicy names to verify the nodes' API. Owned by the
/// cluster: it is derived from the CA Secret and written again if lost.
pub fn api_ca_configmap(lrc: &LiveRoomCluster, ca_pem: &str) -> ConfigMap {
    let cluster = cluster_name(lrc);
    ConfigMap {
        metadata: meta(lrc, Names { cluster: &cluster }.api_ca(), None),
        data: Some(BTreeMap::from([("ca.crt".to_string(), ca_pem.to_string())])),
        ..ConfigMap::default()
    }
}

pub fn identities_configmap(lrc: &LiveRoomCluster, ids: &Identities) -> ConfigMap {
    let cluster = cluster_name(lrc);
    let mut metadata = meta(lrc, Names { cluster: &cluster }.identities(), None);
    metadata.owner_references = None;
    ConfigMap {
        metadata,
        data: Some(ids.render()),
        ..ConfigMap::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("metrics".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn port(name: &str, p: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: p,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

/// The StatefulSet of one region. Pods start in parallel (a Raft group needs
/// its peers up before any is "ready"), and are replaced only when the
/// operator deletes them (`OnDelete`), so it can move leadership first.
/// How a cluster's nodes talk Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftTransport {
    /// Mutual TLS with the operator's certificates (D45).
    MutualTls,
    /// A cluster created before the operator issued certificates, still
    /// running `--insecure-plaintext-raft`: its template keeps that, because
    /// a pod restarted onto TLS cannot reach its plaintext peers (a rolling
    /// restart would stall with one member down). It moves to TLS only all at
    /// once, when a person asks (`RAFT_TLS_ANNOTATION`; runbooks/raft-tls-upgrade.md).
    LegacyPlaintext,
}

/// Set to `enable` on a LiveRoomCluster whose pods still run plaintext Raft
/// to have the operator write the TLS template; the person then restarts
/// every pod at once (runbooks/raft-tls-upgrade.md).
pub const RAFT_TLS_ANNOTATION: &str = "roomkeeper.dev/raft-tls";

/// Whether any of these pods runs the node with plaintext Raft.
pub fn pods_run_plaintext_raft(pods: &[k8s_openapi::api::core::v1::Pod]) -> bool {
    pods.iter().any(|p| {
        p.spec.as_ref().is_some_and(|s| {
            s.containers.iter().any(|c| {
                c.args
                    .as_ref()
                    .is_some_and(|a| a.iter().any(|a| a == "--insecure-plaintext-raft"))
            })
        })
    })
}

/// The transport a cluster's template should carry, given its pods.
pub fn raft_transport(
    lrc: &LiveRoomCluster,
    pods: &[k8s_openapi::api::core::v1::Pod],
) -> RaftTransport {
    let asked = lrc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RAFT_TLS_ANNOTATION))
        .is_some_and(|v| v == "enable");
    if pods_run_plaintext_raft(pods) && !asked {
        RaftTransport::LegacyPlaintext
    } else {
        RaftTransport::MutualTls
    }
}

/// Volumes the legacy template never had.
const LEGACY_ABSENT_VOLUMES: [&str; 3] = ["raft-tls", "api-tls", "tokens"];

/// [`statefulset`] for a transport: the legacy template is exactly the one
/// such a cluster was created with (no certificate volume, no `--cluster-id`),
/// so keeping it restarts nothing.
pub fn statefulset_for(
    lrc: &LiveRoomCluster,
    region: &RegionSpec,
    raft: RaftTransport,
) -> StatefulSet {
    let mut sts = statefulset(lrc, region);
    if raft == RaftTransport::LegacyPlaintext {
        if let Some(pod) = sts.spec.template.spec.as_mut() {
            for c in &mut pod.containers {
                if let Some(args) = c.args.as_mut() {
                    let mut out = Vec::with_capacity(args.len());
                    let mut it = args.drain(..);
                    while let Some(a) = it.next() {
                        match a.as_str() {
                            "--cluster-id" => {
                                it.next();
                            }
                            "--raft-tls-dir" => {
                                it.next();
                                out.push("--insecure-plaintext-raft".to_string());
                            }
                            "--http-tls-dir" => {
                                it.next();
                                out.push("--insecure-plaintext-http".to_string());
                            }
                            "--metrics-addr"
                            | "--client-token-file"
                            | "--admin-token-file"
                            | "--framed-api-addr" => {
                                it.next();
                            }
                            _ => out.push(a),
                        }
                    }
                    drop(it);
                    *args = out;
                }
                if let Some(m) = c.volume_mounts.as_mut() {
                    m.retain(|m| !LEGACY_ABSENT_VOLUMES.contains(&m.name.as_str()));
                }
                // Such a cluster took its tokens from the environment.
                let names = Names {
                    cluster: &cluster_name(lrc),
                };
                c.env.get_or_insert_with(Vec::new).extend([
                    env_secret("ROOMKEEPER_CLIENT_TOKEN", &names.tokens(), "client-token"),
                    env_secret("ROOMKEEPER_ADMIN_TOKEN", &names.tokens(), "admin-token"),
                ]);
                if let Some(p) = c.ports.as_mut() {
                    p.retain(|p| !matches!(p.name.as_deref(), Some("metrics" | "framed")));
                }
                for probe in [c.readiness_probe.as_mut(), c.liveness_probe.as_mut()]
                    .into_iter()
                    .flatten()
                {
                    if let Some(get) = probe.http_get.as_mut() {
                        get.port = IntOrString::String("admin".to_string());
                    }
                }
            }
            if let Some(v) = pod.volumes.as_mut() {
                v.retain(|v| !LEGACY_ABSENT_VOLUMES.contains(&v.name.as_str()));
            }
        }
    }
    sts
}

pub fn statefulset(lrc: &LiveRoomCluster, region: &RegionSpec) -> StatefulSet {
    let cluster = cluster_name(lrc);
    let names = Names { cluster: &cluster };
    let os = &lrc.spec.order_store;
    let args: Vec<String> = [
        "node",
        "--identity-file",
        &format!("{IDENTITY_DIR}/nodes"),
        "--pod-name",
        "$(POD_NAME)",
        "--joined-ids-file",
        &format!("{IDENTITY_DIR}/joined"),
        "--data-dir",
        DATA_DIR,
        "--raft-addr",
        &format!("$(POD_IP):{RAFT_PORT}"),
        "--api-addr",
        &format!("$(POD_IP):{API_PORT}"),
        "--admin-addr",
        &format!("$(POD_IP):{ADMIN_PORT}"),
        "--region",
        &region.name,
        "--contact-key-file",
        &format!("{CONTACT_DIR}/keys"),
        "--heartbeat-ms",
        &os.heartbeat_ms.to_string(),
        "--election-timeout-min-ms",
        &os.election_timeout_min_ms.to_string(),
        "--election-timeout-max-ms",
        &os.election_timeout_max_ms.to_string(),
        "--snapshot-every-entries",
        &os.snapshot_every_entries.to_string(),
        "--max-inflight-writes",
        &os.max_inflight_writes.to_string(),
        // Mutual TLS between nodes: the region's certificate Secret holds a
        // pair per node id; the node loads its own (raft_certs.rs, D45).
        "--cluster-id",
        NODE_CLUSTER_ID,
        "--raft-tls-dir",
        RAFT_TLS_DIR,
        // TLS on the client and admin APIs: the region's API certificate
        // (api_tls.rs, D46); the admin API takes only the operator's
        // certificate, so probes and scrapes use the plain, read-only
        // metrics listener.
        "--http-tls-dir",
        API_TLS_DIR,
        // Tokens as files from the mounted Secret: in no process listing
        // and no environment (issue 16).
        "--client-token-file",
        &format!("{TOKENS_DIR}/client-token"),
        "--admin-token-file",
        &format!("{TOKENS_DIR}/admin-token"),
        "--metrics-addr",
        &format!("$(POD_IP):{METRICS_PORT}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(os.fault_hooks.then(|| "--enable-test-faults".to_string()))
    .chain(
        os.framed_api
            .then(|| {
                [
                    "--framed-api-addr".to_string(),
                    format!("$(POD_IP):{FRAMED_PORT}"),
                ]
            })
            .into_iter()
            .flatten(),
    )
    .collect();
    let container = Container {
        name: "node".to_string(),
        image: Some(lrc.spec.image.clone()),
        command: Some(vec!["roomkeeper".to_string()]),
        args: Some(args),
        env: Some(vec![
            env_field("POD_NAME", "metadata.name"),
            env_field("POD_IP", "status.podIP"),
        ]),
        ports: Some(
            [
                port("raft", RAFT_PORT),
                port("api", API_PORT),
                port("admin", ADMIN_PORT),
                port("metrics", METRICS_PORT),
            ]
            .into_iter()
            .chain(os.framed_api.then(|| port("framed", FRAMED_PORT)))
            .collect(),
        ),
        readiness_probe: Some(http_probe("/readyz", 2, 2)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        resources: region.resources.clone(),
        security_context: Some(node_container_security()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".to_string(),
                mount_path: DATA_DIR.to_string(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "identity".to_string(),
                mount_path: IDENTITY_DIR.to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "contact-keys".to_string(),
                mount_path: CONTACT_DIR.to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "raft-tls".to_string(),
                mount_path: RAFT_TLS_DIR.to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "api-tls".to_string(),
                mount_path: API_TLS_DIR.to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tokens".to_string(),
                mount_path: TOKENS_DIR.to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let pod_labels = labels(&cluster, Some(&region.name));
    let pvc = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".to_string()),
            labels: Some(pod_labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: region.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(region.storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    StatefulSet {
        metadata: meta(lrc, names.statefulset(&region.name), Some(&region.name)),
        spec: StatefulSetSpec {
            replicas: Some(region.voters + region.learners),
            service_name: Some(names.peers_service(&region.name)),
            pod_management_policy: Some("Parallel".to_string()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_string()),
                ..StatefulSetUpdateStrategy::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector(&cluster, Some(&region.name))),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(node_pod_security()),
                    termination_grace_period_seconds: Some(30),
                    enable_service_links: Some(false),
                    automount_service_account_token: Some(false),
                    topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "topology.kubernetes.io/zone".to_string(),
                        when_unsatisfiable: "ScheduleAnyway".to_string(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector(&cluster, Some(&region.name))),
                            ..LabelSelector::default()
                        }),
                        ..TopologySpreadConstraint::default()
                    }]),
                    volumes: Some(vec![
                        Volume {
                            name: "identity".to_string(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: names.identities(),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "contact-keys".to_string(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(names.contact_keys()),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "raft-tls".to_string(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(names.raft_certs(&region.name)),
                                // Private keys: owner and the pod's fsGroup
                                // (the node's group) only.
                                default_mode: Some(0o440),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "api-tls".to_string(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(names.api_certs(&region.name)),
                                default_mode: Some(0o440),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "tokens".to_string(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(names.tokens()),
                                default_mode: Some(0o440),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![pvc]),
            // Scaled-away pods leave the group first (the operator removes them
            // from the membership before shrinking the set); their volumes go
            // with them, so a later pod of that name starts clean under a new
            // node id. Deleting the cluster keeps the volumes.
            persistent_volume_claim_retention_policy: Some(
                k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_scaled: Some("Delete".to_string()),
                    when_deleted: Some("Retain".to_string()),
                },
            ),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

/// The uid and gid node containers run as: not root, and the group that owns
/// the data volume (`fsGroup`), so the node can write its Raft log there.
pub const NODE_UID: i64 = 65532;

/// Pod-level hardening of a node pod (the Kubernetes "restricted" Pod
/// Security Standard): not root, the runtime's default seccomp profile, the
/// data volume group-owned by the node's group.
fn node_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NODE_UID),
        run_as_group: Some(NODE_UID),
        fs_group: Some(NODE_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// Container-level hardening of a node: a read-only root filesystem (the node
/// writes only to its data volume), no capabilities, no privilege escalation.
fn node_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

fn service_ports() -> Vec<ServicePort> {
    [
        ("raft", RAFT_PORT),
        ("api", API_PORT),
        ("admin", ADMIN_PORT),
    ]
    .iter()
    .map(|(n, p)| ServicePort {
        name: Some(n.to_string()),
        port: *p,
        target_port: Some(IntOrString::Int(*p)),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    })
    .collect()
}

/// Headless Service giving each node a stable DNS name; publishes pods before
/// they are ready, since peers must reach each other to become ready.
pub fn peers_service(lrc: &LiveRoomCluster, region: &RegionSpec) -> Service {
    let cluster = cluster_name(lrc);
    let names = Names { cluster: &cluster };
    Service {
        metadata: meta(lrc, names.peers_service(&region.name), Some(&region.name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector(&cluster, Some(&region.name))),
            ports: Some(service_ports()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Client Service of a region: the order API of its ready nodes.
pub fn client_service(lrc: &LiveRoomCluster, region: &RegionSpec) -> Service {
    let cluster = cluster_name(lrc);
    let names = Names { cluster: &cluster };
    Service {
        metadata: meta(lrc, names.client_service(&region.name), Some(&region.name)),
        spec: Some(ServiceSpec {
            selector: Some(selector(&cluster, Some(&region.name))),
            ports: Some(
                std::iter::once(("api", API_PORT))
                    .chain(
                        lrc.spec
                            .order_store
                            .framed_api
                            .then_some(("framed", FRAMED_PORT)),
                    )
                    .map(|(name, port)| ServicePort {
                        name: Some(name.to_string()),
                        port,
                        target_port: Some(IntOrString::Int(port)),
                        protocol: Some("TCP".to_string()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// At most one node of a region down for voluntary disruptions (drains).
pub fn pdb(lrc: &LiveRoomCluster, region: &RegionSpec) -> PodDisruptionBudget {
    let cluster = cluster_name(lrc);
    let names = Names { cluster: &cluster };
    PodDisruptionBudget {
        metadata: meta(lrc, names.statefulset(&region.name), Some(&region.name)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(&cluster, Some(&region.name))),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// Label a chaos drill puts on pods it cuts off: pods with the same value form
/// one side of a partition (D22).
pub const PARTITION_LABEL: &str = "roomkeeper.dev/partition";

/// A selector of the cluster's pods: outside any partition, or in `group`.
fn side(cluster: &str, group: Option<&str>) -> LabelSelector {
    match group {
        None => LabelSelector {
            match_labels: Some(selector(cluster, None)),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: PARTITION_LABEL.to_string(),
                operator: "DoesNotExist".to_string(),
                values: None,
            }]),
        },
        Some(g) => {
            let mut l = selector(cluster, None);
            l.insert(PARTITION_LABEL.to_string(), g.to_string());
            LabelSelector {
                match_labels: Some(l),
                match_expressions: None,
            }
        }
    }
}

/// The label prometheus-operator (and the Prometheus Helm charts) put on
/// Prometheus server pods: the scrapers the metrics port admits.
pub const PROMETHEUS_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "prometheus");

/// The ingress rules of node pods on one side: Raft only from the same side,
/// the admin port only from the operator, the order API from the clients,
/// the metrics port only from Prometheus.
fn node_ingress(
    metadata: ObjectMeta,
    cluster: &str,
    group: Option<&str>,
    network: &NetworkSpec,
) -> NetworkPolicy {
    let tcp = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".to_string()),
        ..NetworkPolicyPort::default()
    };
    let pods_labelled = |key: &str, value: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
        ..LabelSelector::default()
    };
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(pods_labelled("app.kubernetes.io/name", OPERATOR_APP)),
        ..NetworkPolicyPeer::default()
    };
    let prometheus = NetworkPolicyPeer {
        namespace_selector: Some(
            network
                .monitoring_namespace_selector
                .clone()
                .unwrap_or_default(),
        ),
        pod_selector: Some(pods_labelled(
            PROMETHEUS_POD_LABEL.0,
            PROMETHEUS_POD_LABEL.1,
        )),
        ..NetworkPolicyPeer::default()
    };
    // The order API: every pod of this namespace and the ingress's or
    // gateway's namespaces when they are named; else every source.
    let clients = network.client_namespace_selector.as_ref().map(|sel| {
        vec![
            NetworkPolicyPeer {
                pod_selector: Some(LabelSelector::default()),
                ..NetworkPolicyPeer::default()
            },
            NetworkPolicyPeer {
                namespace_selector: Some(sel.clone()),
                ..NetworkPolicyPeer::default()
            },
        ]
    });
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(side(cluster, group)),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(side(cluster, group)),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![tcp(RAFT_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![operator]),
                    ports: Some(vec![tcp(ADMIN_PORT)]),
                },
                // Both order APIs (HTTP, and the framed one when a cluster
                // turns it on; nothing listens on its port otherwise).
                NetworkPolicyIngressRule {
                    from: clients,
                    ports: Some(vec![tcp(API_PORT), tcp(FRAMED_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![prometheus]),
                    ports: Some(vec![tcp(METRICS_PORT)]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// Raft only between the cluster's own nodes (every region); the admin port
/// only from the operator's pods (and its TLS handshake only with the
/// operator's certificate); the plain metrics port (`/metrics`, `/healthz`,
/// `/readyz`) only from Prometheus pods; the order API from the
/// cluster's namespace and `spec.network.clientNamespaceSelector` (from
/// anywhere when unset). Pods a drill partitioned off are neither selected
/// nor admitted here (their side's policy is).
pub fn network_policy(lrc: &LiveRoomCluster) -> NetworkPolicy {
    let cluster = cluster_name(lrc);
    let names = Names { cluster: &cluster };
    node_ingress(
        meta(lrc, names.network_policy(), None),
        &cluster,
        None,
        &lrc.spec.network,
    )
}

/// [`network_policy`] for the Kubernetes cluster of some of the regions
/// when others run elsewhere (D57): a label selector matches only this
/// cluster's pods, so the other regions' nodes are admitted to the Raft port
/// by address (`/32` each, refreshed every reconcile), and the operator's
/// pod, when it runs in another cluster, to the admin port.
pub fn network_policy_across_clusters(
    lrc: &LiveRoomCluster,
    other_nodes: &[String],
    operator: Option<std::net::IpAddr>,
) -> NetworkPolicy {
    let mut policy = network_policy(lrc);
    let block = |ip: &str| NetworkPolicyPeer {
        ip_block: Some(k8s_openapi::api::networking::v1::IPBlock {
            cidr: if ip.contains(':') {
                format!("{ip}/128")
            } else {
                format!("{ip}/32")
            },
            except: None,
        }),
        ..NetworkPolicyPeer::default()
    };
    let mut nodes: Vec<&String> = other_nodes.iter().collect();
    nodes.sort();
    nodes.dedup();
    if let Some(rules) = policy.spec.as_mut().and_then(|s| s.ingress.as_mut()) {
        if let Some(from) = rules.get_mut(0).and_then(|r| r.from.as_mut()) {
            from.extend(nodes.iter().map(|ip| block(ip)));
        }
        if let (Some(ip), Some(from)) = (operator, rules.get_mut(1).and_then(|r| r.from.as_mut())) {
            from.push(block(&ip.to_string()));
        }
    }
    policy
}

/// The policy of one side of a drill's partition: its pods take Raft traffic
/// only from each other. `group` is the partition label value; the policy is
/// labelled with `run` so a drill (or its clean-up after a crash) finds it.
pub fn partition_policy(
    cluster: &str,
    namespace: &str,
    group: &str,
    run: &str,
    owner: Option<OwnerReference>,
) -> NetworkPolicy {
    let mut labels = labels(cluster, None);
    labels.insert(PARTITION_RUN_LABEL.to_string(), run.to_string());
    node_ingress(
        ObjectMeta {
            name: Some(format!("{cluster}-partition-{group}")),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        cluster,
        Some(group),
        &NetworkSpec::default(),
    )
}

/// Label on a drill's partition policies: the run they belong to.
pub const PARTITION_RUN_LABEL: &str = "roomkeeper.dev/partition-run";

/// A stable hash of an object's desired form, stored in an annotation so an
/// unchanged object is not written again.
pub fn desired_hash<T: serde::Serialize>(obj: &T) -> String {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    format!("{:08x}", crc32fast::hash(&bytes))
}

/// Stamps the hash annotation onto the object's metadata.
pub fn with_hash<T: Resource + serde::Serialize>(mut obj: T) -> (T, String) {
    let h = desired_hash(&obj);
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_ANNOTATION.to_string(), h.clone());
    (obj, h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DeletionPolicy, LiveRoomClusterSpec, OrderStoreSpec, SloSpec, StorageSpec};

    fn pod_with_args(args: &[&str]) -> k8s_openapi::api::core::v1::Pod {
        k8s_openapi::api::core::v1::Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "node".into(),
                    args: Some(args.iter().map(|a| a.to_string()).collect()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_cluster_whose_pods_run_plaintext_raft_keeps_its_old_template_until_asked() {
        let mut lrc = cluster(&[("a", 3, 0)]);
        let region = lrc.spec.regions[0].clone();
        let old = pod_with_args(&["node", "--insecure-plaintext-raft"]);
        let new = pod_with_args(&["node", "--raft-tls-dir", RAFT_TLS_DIR]);
        assert_eq!(raft_transport(&lrc, &[]), RaftTransport::MutualTls);
        assert_eq!(
            raft_transport(&lrc, std::slice::from_ref(&new)),
            RaftTransport::MutualTls
        );
        assert_eq!(
            raft_transport(&lrc, &[new, old.clone()]),
            RaftTransport::LegacyPlaintext,
            "one plaintext pod is enough: a TLS pod could not reach it"
        );
        let legacy = statefulset_for(&lrc, &region, RaftTransport::LegacyPlaintext);
        let spec = legacy.spec.template.spec.as_ref().expect("pod spec");
        let args = spec.containers[0].args.clone().unwrap_or_default();
        assert!(
            args.contains(&"--insecure-plaintext-raft".to_string()),
            "{args:?}"
        );
        assert!(
            !args.iter().any(|a| a == "--raft-tls-dir"
                || a == "--cluster-id"
                || a == RAFT_TLS_DIR
                || a == NODE_CLUSTER_ID),
            "{args:?}"
        );
        assert!(spec.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != "raft-tls" && m.name != "api-tls"));
        assert!(spec
            .volumes
            .iter()
            .flatten()
            .all(|v| v.name != "raft-tls" && v.name != "api-tls"));
        // Its tokens from the environment, as it was created.
        let env: Vec<&str> = spec.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert!(
            env.contains(&"ROOMKEEPER_CLIENT_TOKEN") && env.contains(&"ROOMKEEPER_ADMIN_TOKEN"),
            "{env:?}"
        );
        // The HTTP edges as such a cluster had them: plaintext, probed on the
        // admin port, no metrics listener.
        assert!(args.contains(&"--insecure-plaintext-http".to_string()));
        assert!(!args
            .iter()
            .any(|a| a == "--http-tls-dir" || a == "--metrics-addr"));
        let c = &spec.containers[0];
        assert!(c
            .ports
            .iter()
            .flatten()
            .all(|p| p.name.as_deref() != Some("metrics")));
        for probe in [&c.readiness_probe, &c.liveness_probe] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .expect("httpGet");
            assert_eq!(get.port, IntOrString::String("admin".into()));
        }
        // Everything else is the TLS template's, in the same order.
        let tls = statefulset_for(&lrc, &region, RaftTransport::MutualTls);
        let tls_args = tls
            .spec
            .template
            .spec
            .as_ref()
            .expect("pod spec")
            .containers[0]
            .args
            .clone()
            .unwrap_or_default();
        let strip = |a: &[String]| -> Vec<String> {
            a.iter()
                .filter(|a| {
                    ![
                        "--insecure-plaintext-raft",
                        "--raft-tls-dir",
                        "--cluster-id",
                        RAFT_TLS_DIR,
                        NODE_CLUSTER_ID,
                        "--insecure-plaintext-http",
                        "--http-tls-dir",
                        API_TLS_DIR,
                        "--metrics-addr",
                        &format!("$(POD_IP):{METRICS_PORT}"),
                        "--client-token-file",
                        &format!("{TOKENS_DIR}/client-token"),
                        "--admin-token-file",
                        &format!("{TOKENS_DIR}/admin-token"),
                    ]
                    .contains(&a.as_str())
                })
                .cloned()
                .collect()
        };
        assert_eq!(strip(&args), strip(&tls_args));
        assert_eq!(
            tls_args,
            statefulset(&lrc, &region)
                .spec
                .template
                .spec
                .unwrap()
                .containers[0]
                .args
                .clone()
                .unwrap_or_default()
        );
        // The person's switch: the annotation makes the template TLS.
        lrc.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(RAFT_TLS_ANNOTATION.into(), "enable".into());
        assert_eq!(raft_transport(&lrc, &[old]), RaftTransport::MutualTls);
    }

    fn cluster(regions: &[(&str, i32, i32)]) -> LiveRoomCluster {
        let mut lrc = LiveRoomCluster::new(
            "shop",
            LiveRoomClusterSpec {
                regions: regions
                    .iter()
                    .map(|(n, v, l)| RegionSpec {
                        name: n.to_string(),
                        kubeconfig_secret_ref: None,
                        voters: *v,
                        learners: *l,
                        storage: StorageSpec::default(),
                        resources: None,
                        zones: vec!["a".into(), "b".into()],
                    })
                    .collect(),
                image: "roomkeeper:test".into(),
                order_store: OrderStoreSpec::default(),
                playbook_ref: None,
                slo: SloSpec::default(),
                survive_region_loss: true,
                paused: false,
                dry_run: false,
                deletion_policy: DeletionPolicy::Retain,
                network: Default::default(),
            },
        );
        lrc.metadata.namespace = Some("ns".into());
        lrc.metadata.uid = Some("uid-1".into());
        lrc
    }

    #[test]
    fn a_policy_across_clusters_admits_the_other_nodes_to_raft_and_the_operator_to_admin() {
        let lrc = cluster(&[("us", 2, 0), ("eu", 2, 0), ("ap", 1, 0)]);
        let nodes = vec!["10.1.0.2".to_string(), "10.1.0.1".into(), "10.1.0.2".into()];
        let op: std::net::IpAddr = "10.9.0.7".parse().expect("ip");
        let policy = network_policy_across_clusters(&lrc, &nodes, Some(op));
        let rules = policy.spec.and_then(|s| s.ingress).expect("ingress");
        let blocks = |i: usize| -> Vec<String> {
            rules[i]
                .from
                .iter()
                .flatten()
                .filter_map(|p| Some(p.ip_block.as_ref()?.cidr.clone()))
                .collect()
        };
        // Raft: this cluster's pods by label, the others' by address, each once.
        assert_eq!(blocks(0), ["10.1.0.1/32", "10.1.0.2/32"]);
        assert!(rules[0]
            .from
            .iter()
            .flatten()
            .any(|p| p.pod_selector.is_some()));
        // Admin: the operator's pods by label, and the operator's address.
        assert_eq!(blocks(1), ["10.9.0.7/32"]);
        // The order and metrics ports are unchanged.
        let plain = network_policy(&lrc)
            .spec
            .and_then(|s| s.ingress)
            .expect("ingress");
        assert_eq!(rules[2], plain[2]);
        assert_eq!(rules[3], plain[3]);
        // Without other clusters it is the plain policy.
        assert_eq!(
            network_policy_across_clusters(&lrc, &[], None),
            network_policy(&lrc)
        );
    }

    #[test]
    fn node_pods_meet_the_restricted_pod_security_standard() {
        let lrc = cluster(&[("east", 3, 0)]);
        let sts = statefulset(&lrc, &lrc.spec.regions[0]);
        let pod = sts.spec.template.spec.expect("pod spec");
        // Nodes never call the Kubernetes API: no token in the pod.
        assert_eq!(pod.automount_service_account_token, Some(false));
        let ps = pod.security_context.expect("pod security context");
        assert_eq!(ps.run_as_non_root, Some(true));
        assert!(ps.run_as_user.is_some_and(|u| u != 0), "not root");
        assert_eq!(ps.fs_group, ps.run_as_group, "the data volume is writable");
        assert_eq!(
            ps.seccomp_profile.map(|p| p.type_).as_deref(),
            Some("RuntimeDefault")
        );
        for c in &pod.containers {
            let cs = c
                .security_context
                .clone()
                .expect("container security context");
            assert_eq!(cs.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(cs.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(
                cs.capabilities.and_then(|c| c.drop),
                Some(vec!["ALL".to_string()]),
                "{}",
                c.name
            );
            // The only writable mount is the data volume.
            let writable: Vec<&str> = c
                .volume_mounts
                .iter()
                .flatten()
                .filter(|m| m.read_only != Some(true))
                .map(|m| m.mount_path.as_str())
                .collect();
            assert_eq!(writable, vec![DATA_DIR], "{}", c.name);
        }
    }

    #[test]
    fn nodes_read_their_tokens_from_the_mounted_secret_not_the_environment() {
        let lrc = cluster(&[("east", 3, 0)]);
        let sts = statefulset(&lrc, &lrc.spec.regions[0]);
        let pod = sts.spec.template.spec.unwrap();
        let node = &pod.containers[0];
        let args = node.args.clone().unwrap_or_default();
        let after = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        assert_eq!(
            after("--client-token-file"),
            Some(format!("{TOKENS_DIR}/client-token"))
        );
        assert_eq!(
            after("--admin-token-file"),
            Some(format!("{TOKENS_DIR}/admin-token"))
        );
        assert!(
            node.env.iter().flatten().all(|e| !e.name.contains("TOKEN")
                && e.value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .is_none()),
            "no token in the environment: {:?}",
            node.env
        );
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "tokens")
            .expect("the tokens volume");
        let secret = volume.secret.as_ref().expect("a Secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("shop-tokens"));
        assert_eq!(secret.default_mode, Some(0o440));
        assert!(node
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "tokens"
                && m.mount_path == TOKENS_DIR
                && m.read_only == Some(true)));
    }

    #[test]
    fn the_framed_api_is_served_exposed_and_admitted_only_when_asked_for() {
        let mut lrc = cluster(&[("east", 3, 0)]);
        let region = lrc.spec.regions[0].clone();
        let framed_parts = |lrc: &LiveRoomCluster| {
            let sts = statefulset(lrc, &region);
            let node = sts.spec.template.spec.expect("pod spec").containers[0].clone();
            let args = node.args.expect("args");
            let arg = args
                .iter()
                .position(|a| a == "--framed-api-addr")
                .and_then(|i| args.get(i + 1).cloned());
            let container_port =
                node.ports.iter().flatten().any(|p| {
                    p.name.as_deref() == Some("framed") && p.container_port == FRAMED_PORT
                });
            let service_port = client_service(lrc, &region)
                .spec
                .and_then(|s| s.ports)
                .iter()
                .flatten()
                .any(|p| p.name.as_deref() == Some("framed") && p.port == FRAMED_PORT);
            (arg, container_port, service_port)
        };
        assert_eq!(framed_parts(&lrc), (None, false, false));
        lrc.spec.order_store.framed_api = true;
        let addr = format!("$(POD_IP):{FRAMED_PORT}");
        assert_eq!(framed_parts(&lrc), (Some(addr), true, true));
        // The clients that reach the HTTP API reach the framed one.
        let policy = network_policy(&lrc).spec.expect("spec");
        let order_rule = policy
            .ingress
            .iter()
            .flatten()
            .find(|r| {
                r.ports
                    .iter()
                    .flatten()
                    .any(|p| p.port == Some(IntOrString::Int(API_PORT)))
            })
            .expect("the order API's rule");
        assert!(order_rule
            .ports
            .iter()
            .flatten()
            .any(|p| p.port == Some(IntOrString::Int(FRAMED_PORT))));
        // A cluster held on its plaintext template keeps that template.
        let held = statefulset_for(&lrc, &region, RaftTransport::LegacyPlaintext);
        let node = held.spec.template.spec.expect("pod").containers[0].clone();
        assert!(!node.args.iter().flatten().any(|a| a.contains("framed")));
        assert!(!node
            .ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some("framed")));
    }

    #[test]
    fn nodes_run_mutual_tls_on_raft_from_their_regions_certificate_secret() {
        let lrc = cluster(&[("east", 3, 0), ("west", 2, 1)]);
        for region in &lrc.spec.regions {
            let sts = statefulset(&lrc, region);
            let pod = sts.spec.template.spec.expect("pod spec");
            let node = &pod.containers[0];
            let args = node.args.clone().expect("args");
            let after = |flag: &str| {
                args.iter()
                    .position(|a| a == flag)
                    .and_then(|i| args.get(i + 1))
                    .map(String::as_str)
            };
            assert!(
                !args.iter().any(|a| a == "--insecure-plaintext-raft"),
                "{args:?}"
            );
            assert_eq!(after("--raft-tls-dir"), Some(RAFT_TLS_DIR));
            assert_eq!(after("--cluster-id"), Some(NODE_CLUSTER_ID));
            // The client and admin APIs are TLS from the region's API
            // certificate; probes and scrapes use the plain metrics listener.
            assert!(!args.iter().any(|a| a == "--insecure-plaintext-http"));
            assert_eq!(after("--http-tls-dir"), Some(API_TLS_DIR));
            let metrics_addr = format!("$(POD_IP):{METRICS_PORT}");
            assert_eq!(after("--metrics-addr"), Some(metrics_addr.as_str()));
            for probe in [&node.readiness_probe, &node.liveness_probe] {
                let get = probe
                    .as_ref()
                    .and_then(|p| p.http_get.as_ref())
                    .expect("httpGet");
                assert_eq!(get.port, IntOrString::String("metrics".into()));
            }
            let api_mount = node
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path == API_TLS_DIR)
                .expect("the API certificate is mounted at --http-tls-dir");
            assert_eq!(api_mount.read_only, Some(true));
            let mount = node
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path == RAFT_TLS_DIR)
                .expect("the certificates are mounted at --raft-tls-dir");
            assert_eq!(mount.read_only, Some(true));
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .expect("the mount's volume");
            let secret = volume.secret.as_ref().expect("a Secret volume");
            assert_eq!(
                secret.secret_name.as_deref(),
                Some(format!("shop-{}-raft-certs", region.name).as_str())
            );
            assert_eq!(secret.default_mode, Some(0o440), "keys not world-readable");
            assert_eq!(
                secret.optional, None,
                "a pod without its certificates does not start"
            );
        }
        let names = Names { cluster: "shop" };
        assert_eq!(names.raft_ca(), "shop-raft-ca");
        assert_eq!(names.raft_certs("east"), "shop-east-raft-certs");
    }

    #[test]
    fn slots_follow_voters_then_learners_per_region() {
        let lrc = cluster(&[("east", 2, 1), ("west", 1, 0)]);
        let s = slots(&lrc);
        let pods: Vec<_> = s.iter().map(|s| (s.pod.as_str(), s.voter)).collect();
        assert_eq!(
            pods,
            vec![
                ("shop-east-0", true),
                ("shop-east-1", true),
                ("shop-east-2", false),
                ("shop-west-0", true)
            ]
        );
        assert_eq!(s[1].zone.as_deref(), Some("b"));
    }

    #[test]
    fn ids_are_never_reused_even_after_a_pod_is_retired() {
        let lrc = cluster(&[("east", 3, 0)]);
        let mut ids = Identities::parse(None).unwrap();
        assert!(ids.assign(&slots(&lrc), 1));
        assert_eq!(ids.id_of("shop-east-0"), Some(1));
        assert!(
            !ids.assign(&slots(&lrc), 1),
            "assigning again changes nothing"
        );
        // Members are recorded; unknown ids are not.
        assert!(ids.mark_joined([1, 2, 99]));
        assert!(!ids.mark_joined([2]), "marking again changes nothing");
        assert_eq!(ids.joined.iter().copied().collect::<Vec<_>>(), vec![1, 2]);
        // A wiped volume: the pod gets a fresh id, 1 is never handed out again.
        assert!(ids.retire("shop-east-0"));
        assert!(
            !ids.joined.contains(&1),
            "a retired id is no member to guard"
        );
        ids.assign(&slots(&lrc), 1);
        assert_eq!(ids.id_of("shop-east-0"), Some(4));
        // The rendered ConfigMap round-trips, including next-id.
        let cm = identities_configmap(&lrc, &ids);
        let back = Identities::parse(Some(&cm)).unwrap();
        assert_eq!(back, ids);
        // Ids seen in the Raft membership raise the floor too.
        let mut fresh = Identities::parse(None).unwrap();
        fresh.assign(&slots(&lrc), 10);
        assert_eq!(fresh.id_of("shop-east-0"), Some(10));
    }

    #[test]
    fn malformed_identity_maps_are_reported_not_guessed() {
        let cm = ConfigMap {
            data: Some(BTreeMap::from([(
                "nodes".into(),
                "shop-east-0 one\n".into(),
            )])),
            ..ConfigMap::default()
        };
        assert!(Identities::parse(Some(&cm))
            .unwrap_err()
            .to_string()
            .contains("not a number"));
        let cm = ConfigMap {
            data: Some(BTreeMap::from([("joined".into(), "1\n2 x\n".into())])),
            ..ConfigMap::default()
        };
        let err = Identities::parse(Some(&cm)).unwrap_err();
        assert!(matches!(err, IdentityError::BadJoined(_)), "{err:?}");
        assert!(err.to_string().contains("joined line 2"), "{err}");
    }

    #[test]
    fn owned_objects_carry_owner_references_and_labels() {
        let lrc = cluster(&[("east", 3, 0)]);
        let sts = statefulset(&lrc, &lrc.spec.regions[0]);
        let owners = sts.metadata.owner_references.clone().unwrap();
        assert_eq!(owners[0].kind, "LiveRoomCluster");
        assert_eq!(owners[0].controller, Some(true));
        let spec = sts.spec;
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let args = spec.template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert!(args.contains(&"$(POD_IP):7101".to_string()), "{args:?}");
        let np = network_policy(&lrc).spec.unwrap();
        assert_eq!(np.ingress.unwrap().len(), 4);
    }

    #[test]
    fn the_network_policy_admits_only_the_flows_that_exist() {
        let labels = |k: &str, v: &str| LabelSelector {
            match_labels: Some(BTreeMap::from([(k.to_string(), v.to_string())])),
            ..LabelSelector::default()
        };
        let port_of =
            |r: &NetworkPolicyIngressRule| r.ports.as_ref().unwrap()[0].port.clone().unwrap();
        // Defaults: Raft from the cluster's pods only; admin from the
        // operator's pods of any namespace; the API from anyone; metrics from
        // Prometheus pods of any namespace.
        let mut lrc = cluster(&[("east", 3, 0)]);
        let rules = network_policy(&lrc).spec.unwrap().ingress.unwrap();
        assert_eq!(rules.len(), 4);
        assert_eq!(port_of(&rules[0]), IntOrString::Int(RAFT_PORT));
        let raft_from = rules[0].from.as_ref().unwrap();
        assert_eq!(raft_from.len(), 1);
        assert!(
            raft_from[0].namespace_selector.is_none(),
            "same namespace only"
        );
        assert_eq!(
            raft_from[0]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[CLUSTER_LABEL],
            "shop"
        );
        assert_eq!(port_of(&rules[1]), IntOrString::Int(ADMIN_PORT));
        let admin_from = rules[1].from.as_ref().unwrap();
        let any_ns = Some(LabelSelector::default());
        assert_eq!(
            admin_from,
            &vec![NetworkPolicyPeer {
                namespace_selector: any_ns.clone(),
                pod_selector: Some(labels("app.kubernetes.io/name", OPERATOR_APP)),
                ..NetworkPolicyPeer::default()
            }]
        );
        assert_eq!(port_of(&rules[3]), IntOrString::Int(METRICS_PORT));
        assert_eq!(
            rules[3].from.as_ref().unwrap(),
            &vec![NetworkPolicyPeer {
                namespace_selector: any_ns,
                pod_selector: Some(labels("app.kubernetes.io/name", "prometheus")),
                ..NetworkPolicyPeer::default()
            }]
        );
        assert_eq!(port_of(&rules[2]), IntOrString::Int(API_PORT));
        assert!(rules[2].from.is_none(), "no client selector: every source");

        // Named namespaces: the API from this namespace and the ingress's;
        // /metrics from the monitoring namespace's Prometheus only.
        lrc.spec.network = NetworkSpec {
            client_namespace_selector: Some(labels("kubernetes.io/metadata.name", "ingress")),
            monitoring_namespace_selector: Some(labels(
                "kubernetes.io/metadata.name",
                "monitoring",
            )),
        };
        let rules = network_policy(&lrc).spec.unwrap().ingress.unwrap();
        let prom = &rules[3].from.as_ref().unwrap()[0];
        assert_eq!(
            prom.namespace_selector,
            Some(labels("kubernetes.io/metadata.name", "monitoring"))
        );
        assert_eq!(
            rules[2].from.as_ref().unwrap(),
            &vec![
                NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector::default()),
                    ..NetworkPolicyPeer::default()
                },
                NetworkPolicyPeer {
                    namespace_selector: Some(labels("kubernetes.io/metadata.name", "ingress")),
                    ..NetworkPolicyPeer::default()
                },
            ]
        );
        // The spec field round-trips under its documented names.
        let v = serde_json::to_value(&lrc.spec).unwrap();
        assert_eq!(
            v["network"]["clientNamespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "ingress"
        );
    }

    #[test]
    fn partitioned_pods_take_raft_only_from_their_own_side() {
        let lrc = cluster(&[("east", 3, 0)]);
        let main = network_policy(&lrc).spec.unwrap();
        let excluded = |sel: &LabelSelector| {
            sel.match_expressions.as_ref().is_some_and(|e| {
                e.iter()
                    .any(|r| r.key == PARTITION_LABEL && r.operator == "DoesNotExist")
            })
        };
        assert!(excluded(main.pod_selector.as_ref().unwrap()));
        let raft_from = main.ingress.as_ref().unwrap()[0].from.as_ref().unwrap()[0]
            .pod_selector
            .as_ref()
            .unwrap();
        assert!(
            excluded(raft_from),
            "partitioned pods may not reach the others"
        );

        let side = partition_policy("shop", "ns", "run1-0", "run1", None);
        assert_eq!(side.metadata.name.as_deref(), Some("shop-partition-run1-0"));
        assert_eq!(
            side.metadata.labels.as_ref().unwrap()[PARTITION_RUN_LABEL],
            "run1"
        );
        let spec = side.spec.unwrap();
        let want = Some(&"run1-0".to_string());
        let selected = spec.pod_selector.as_ref().unwrap();
        assert_eq!(
            selected.match_labels.as_ref().unwrap().get(PARTITION_LABEL),
            want
        );
        let rules = spec.ingress.unwrap();
        let from = rules[0].from.as_ref().unwrap()[0]
            .pod_selector
            .as_ref()
            .unwrap();
        assert_eq!(
            from.match_labels.as_ref().unwrap().get(PARTITION_LABEL),
            want
        );
        assert_eq!(
            rules[2].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(API_PORT)),
            "clients still reach a partitioned node's API"
        );
    }

    #[test]
    fn the_hash_changes_with_the_spec_and_only_then() {
        let a = cluster(&[("east", 3, 0)]);
        let mut b = a.clone();
        let (_, h1) = with_hash(statefulset(&a, &a.spec.regions[0]));
        let (_, h2) = with_hash(statefulset(&b, &b.spec.regions[0]));
        assert_eq!(h1, h2);
        b.spec.regions[0].voters = 5;
        let (_, h3) = with_hash(statefulset(&b, &b.spec.regions[0]));
        assert_ne!(h1, h3);
    }
}
