//! Reconcile scenarios against a mocked API server (the kube-rs/controller-rs
//! `ApiServerVerifier` pattern): `tower_test::mock::pair` feeds a
//! `kube::Client`, a small in-memory API server answers each request, and
//! every test asserts the exact API calls one reconcile makes, in order, and
//! that it makes no other. The nodes' admin APIs are tiny axum servers on
//! loopback addresses (127.77.<scenario>.<ordinal + 1>, the admin port), each
//! answering `/admin/status` from the scenario and recording membership calls
//! with their bodies. A scenario of several reconciles moves the nodes on
//! between them ([`FakeNodes::set`]) and carries the API server's objects
//! over, or starts each stage from its own world.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use serde_json::{json, Value};

use super::{reconcile, Context};
use crate::crd::{
    DeletionPolicy, LiveRoomCluster, LiveRoomClusterSpec, OrderStoreSpec, RegionSpec, SloSpec,
    StorageSpec, FINALIZER,
};
use crate::resources::{self, Identities, ADMIN_PORT, CLUSTER_LABEL, REGION_LABEL};

const NS: &str = "shop-ns";
const CLUSTER: &str = "shop";
const REGION: &str = "r";

/// What the cluster looks like before the reconcile.
#[derive(Clone, Default)]
struct Scenario {
    /// Distinguishes the loopback addresses of concurrently running tests.
    net: u8,
    /// Voters the spec asks for.
    want_voters: i32,
    /// Pods running (ordinals 0..pods), with node ids 1..=pods unless
    /// `renumbered` says otherwise.
    pods: u8,
    /// The leader's node id, if a group exists.
    leader: Option<u64>,
    voters: Vec<u64>,
    learners: Vec<u64>,
    /// Ids already recorded as joined in the identity map.
    joined: Vec<u64>,
    /// The cluster's status says the group was bootstrapped.
    bootstrapped: bool,
    /// Ordinals whose pod came back on a new IP: the group still records
    /// them at their old one (`old_ip`).
    moved: Vec<u8>,
    /// Ordinals whose node lost its volume: it answers every admin call with
    /// 409 `wiped_volume` under its old id.
    wiped: Vec<u8>,
    /// Ordinals whose pod runs the previous template.
    outdated: Vec<u8>,
    /// Ordinals whose pod is not Ready.
    not_ready: Vec<u8>,
    /// Ordinals whose pod is being deleted.
    deleting: Vec<u8>,
    /// Ordinals whose pod holds another id than `ordinal + 1` (given after a
    /// wipe retired the old one).
    renumbered: Vec<(u8, u64)>,
    /// `spec.paused`.
    paused: bool,
    /// The cluster object is being deleted under this policy.
    deleted: Option<DeletionPolicy>,
}

/// The StatefulSet's update revision; pods not `outdated` run it.
const NEW_REVISION: &str = "rev-2";

impl Scenario {
    fn ip(&self, ordinal: u8) -> String {
        format!("127.77.{}.{}", self.net, ordinal + 1)
    }

    /// Where the group recorded a moved pod's node before it moved.
    fn old_ip(&self, ordinal: u8) -> String {
        format!("127.77.{}.{}", self.net, ordinal + 101)
    }

    fn id(&self, ordinal: u8) -> u64 {
        self.renumbered
            .iter()
            .find(|(o, _)| *o == ordinal)
            .map_or(u64::from(ordinal) + 1, |(_, id)| *id)
    }

    fn ordinal_of(&self, id: u64) -> Option<u8> {
        (0..self.pods).find(|o| self.id(*o) == id)
    }

    fn lrc(&self) -> LiveRoomCluster {
        let mut lrc = LiveRoomCluster::new(
            CLUSTER,
            LiveRoomClusterSpec {
                regions: vec![RegionSpec {
                    name: REGION.into(),
                    kubeconfig_secret_ref: None,
                    voters: self.want_voters,
                    learners: 0,
                    storage: StorageSpec::default(),
                    resources: None,
                    zones: vec![],
                }],
                image: "roomkeeper:test".into(),
                order_store: OrderStoreSpec::default(),
                playbook_ref: None,
                slo: SloSpec::default(),
                survive_region_loss: false,
                paused: self.paused,
                dry_run: false,
                deletion_policy: self.deleted.unwrap_or(DeletionPolicy::Retain),
                network: Default::default(),
            },
        );
        lrc.metadata.namespace = Some(NS.into());
        lrc.metadata.uid = Some("uid-1".into());
        lrc.metadata.generation = Some(1);
        lrc.metadata.resource_version = Some("1".into());
        // The finalizer is in place: the reconcile goes straight to apply
        // (or, once the object is being deleted, to cleanup).
        lrc.metadata.finalizers = Some(vec![FINALIZER.into()]);
        if self.deleted.is_some() {
            lrc.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
        }
        if self.bootstrapped {
            lrc.status = Some(crate::crd::LiveRoomClusterStatus {
                bootstrapped: true,
                ..Default::default()
            });
        }
        lrc
    }

    /// The identity map as the API server holds it.
    fn identities(&self, lrc: &LiveRoomCluster) -> Identities {
        let mut ids = Identities::parse(None).unwrap();
        for o in 0..self.pods {
            ids.by_pod
                .insert(format!("{CLUSTER}-{REGION}-{o}"), (self.id(o), None));
        }
        ids.next_id = (0..self.pods).map(|o| self.id(o)).max().unwrap_or(0) + 1;
        ids.assign(&resources::slots(lrc), 1);
        ids.joined = self.joined.iter().copied().collect();
        ids
    }

    /// What the node of pod `ordinal` answers to `GET /admin/status`: the
    /// code and the body.
    fn node_reply(&self, ordinal: u8) -> (u16, Value) {
        let id = self.id(ordinal);
        if self.wiped.contains(&ordinal) {
            return (
                409,
                json!({"code": roomkeeper_api::admin::WIPED_VOLUME, "node_id": id,
                       "message": "this node id has been a member and its volume is empty"}),
            );
        }
        let is_leader = self.leader == Some(id);
        let replication: BTreeMap<String, Value> = if is_leader {
            self.voters
                .iter()
                .chain(self.learners.iter())
                .filter(|v| **v != id)
                .map(|v| {
                    (
                        v.to_string(),
                        json!({"matched_index": 50, "lag": 0, "millis_since_ack": 10}),
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let member = self.voters.contains(&id) || self.learners.contains(&id);
        // Where the group records each member: where its pod was when it
        // joined (before a move), in a zone of its own.
        let members: BTreeMap<String, Value> = if member {
            self.voters
                .iter()
                .chain(self.learners.iter())
                .filter_map(|m| {
                    let o = self.ordinal_of(*m)?;
                    let ip = if self.moved.contains(&o) {
                        self.old_ip(o)
                    } else {
                        self.ip(o)
                    };
                    let info = crate::nodes::node_info(&ip, REGION, &format!("zone-{m}"));
                    Some((m.to_string(), serde_json::to_value(info).unwrap()))
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let status = json!({
            "node_id": id, "region": REGION, "zone": REGION,
            "role": if is_leader { "leader" } else { "follower" },
            "term": if self.bootstrapped || self.leader.is_some() { 3 } else { 0 },
            "leader_id": if member { self.leader } else { None },
            "last_log_index": 50, "committed_index": 50, "applied_index": 50,
            "snapshot_index": 0, "purged_index": 0, "millis_since_quorum_ack": 5,
            "voters": if member { self.voters.clone() } else { vec![] },
            "learners": if member { self.learners.clone() } else { vec![] },
            "members": members, "replication": replication, "orders": 0,
            "sales_paused": false, "test_faults_enabled": false,
            "fresh_data_dir": !member
        });
        (200, status)
    }

    fn pod(&self, ordinal: u8) -> Value {
        let revision = if self.outdated.contains(&ordinal) {
            "rev-1"
        } else {
            NEW_REVISION
        };
        let ready = if self.not_ready.contains(&ordinal) {
            "False"
        } else {
            "True"
        };
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("{CLUSTER}-{REGION}-{ordinal}"), "namespace": NS,
                "labels": {
                    CLUSTER_LABEL: CLUSTER, REGION_LABEL: REGION,
                    "controller-revision-hash": revision
                }
            },
            "status": {
                "podIP": self.ip(ordinal),
                "conditions": [{"type": "Ready", "status": ready}]
            }
        });
        if self.deleting.contains(&ordinal) {
            pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        pod
    }

    /// Every object the API server holds, by path.
    fn world(&self) -> BTreeMap<String, Value> {
        let lrc = self.lrc();
        let region = &lrc.spec.regions[0];
        let mut world = BTreeMap::new();
        let mut put = |path: String, v: Value| {
            world.insert(path, v);
        };
        let secret = |name: &str, data: Value| {
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": name, "namespace": NS}, "data": data})
        };
        put(
            format!("/api/v1/namespaces/{NS}/secrets/{CLUSTER}-tokens"),
            secret(
                &format!("{CLUSTER}-tokens"),
                json!({"admin-token": "YWRtaW4=", "client-token": "Y2xpZW50"}),
            ),
        );
        put(
            format!("/api/v1/namespaces/{NS}/secrets/{CLUSTER}-contact-keys"),
            secret(
                &format!("{CLUSTER}-contact-keys"),
                json!({"keys": "MSBhYmM="}),
            ),
        );
        // The Raft CA, and the region's certificates for every id in the map.
        let ca = test_ca();
        put(
            format!("/api/v1/namespaces/{NS}/secrets/{CLUSTER}-raft-ca"),
            secret(
                &format!("{CLUSTER}-raft-ca"),
                json!({"ca.crt": b64(&ca.cert_pem), "ca.key": b64(&ca.key_pem)}),
            ),
        );
        let want = crate::raft_certs::region_ids(&self.identities(&lrc), CLUSTER, REGION);
        let certs = crate::raft_certs::plan_region(ca, &BTreeMap::new(), &want)
            .unwrap()
            .unwrap();
        let mut certs =
            serde_json::to_value(crate::raft_certs::region_secret(&lrc, REGION, certs.data))
                .unwrap();
        certs["metadata"]["namespace"] = json!(NS);
        put(
            format!("/api/v1/namespaces/{NS}/secrets/{CLUSTER}-{REGION}-raft-certs"),
            certs,
        );
        let (api_ca, _) =
            crate::resources::with_hash(crate::resources::api_ca_configmap(&lrc, &ca.cert_pem));
        let mut api_ca = serde_json::to_value(api_ca).unwrap();
        api_ca["metadata"]["namespace"] = json!(NS);
        put(
            format!("/api/v1/namespaces/{NS}/configmaps/{CLUSTER}-api-ca"),
            api_ca,
        );
        // The region's API server certificate, for the names it should carry.
        let names = crate::api_tls::api_names(CLUSTER, REGION, NS);
        let data = crate::api_tls::plan_api_secret(ca, &BTreeMap::new(), None, &names)
            .unwrap()
            .unwrap();
        let mut api =
            serde_json::to_value(crate::api_tls::api_secret(&lrc, REGION, &names, data)).unwrap();
        api["metadata"]["namespace"] = json!(NS);
        put(
            format!("/api/v1/namespaces/{NS}/secrets/{CLUSTER}-{REGION}-api-tls"),
            api,
        );
        put(
            format!("/api/v1/namespaces/{NS}/pods"),
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                   "items": (0..self.pods).map(|o| self.pod(o)).collect::<Vec<_>>()}),
        );
        for o in 0..self.pods {
            put(
                format!("/api/v1/namespaces/{NS}/pods/{CLUSTER}-{REGION}-{o}"),
                self.pod(o),
            );
        }
        put(
            format!("/api/v1/namespaces/{NS}/persistentvolumeclaims"),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList", "metadata": {},
                   "items": (0..self.pods).map(|o| json!({
                       "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                       "metadata": {"name": format!("data-{CLUSTER}-{REGION}-{o}"),
                                    "namespace": NS,
                                    "labels": {CLUSTER_LABEL: CLUSTER}}
                   })).collect::<Vec<_>>()}),
        );
        let cm = resources::with_hash(resources::identities_configmap(
            &lrc,
            &self.identities(&lrc),
        ))
        .0;
        put(
            format!("/api/v1/namespaces/{NS}/configmaps/{CLUSTER}-identities"),
            serde_json::to_value(cm).unwrap(),
        );
        // The workload as the last reconcile applied it.
        let mut sts = resources::statefulset(&lrc, region);
        sts.spec.replicas = Some(
            self.want_voters.max(
                i32::from(self.pods)
                    .min(i32::try_from(self.voters.len() + self.learners.len()).unwrap_or(0)),
            ),
        );
        let (mut sts, _) = resources::with_hash(sts);
        sts.status = Some(k8s_openapi::api::apps::v1::StatefulSetStatus {
            update_revision: Some(NEW_REVISION.into()),
            ..Default::default()
        });
        let sts_name = sts.metadata.name.clone().unwrap();
        put(
            format!("/apis/apps/v1/namespaces/{NS}/statefulsets/{sts_name}"),
            serde_json::to_value(&sts).unwrap(),
        );
        put(
            format!("/apis/apps/v1/namespaces/{NS}/statefulsets"),
            json!({"apiVersion": "apps/v1", "kind": "StatefulSetList", "metadata": {},
                   "items": [sts]}),
        );
        let svc = |s: k8s_openapi::api::core::v1::Service| {
            let (s, _) = resources::with_hash(s);
            let name = s.metadata.name.clone().unwrap();
            (
                format!("/api/v1/namespaces/{NS}/services/{name}"),
                serde_json::to_value(s).unwrap(),
            )
        };
        let (p, v) = svc(resources::peers_service(&lrc, region));
        put(p, v);
        let (p, v) = svc(resources::client_service(&lrc, region));
        put(p, v);
        let (pdb, _) = resources::with_hash(resources::pdb(&lrc, region));
        put(
            format!(
                "/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/{}",
                pdb.metadata.name.clone().unwrap()
            ),
            serde_json::to_value(pdb).unwrap(),
        );
        let (np, _) = resources::with_hash(resources::network_policy(&lrc));
        put(
            format!(
                "/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/{}",
                np.metadata.name.clone().unwrap()
            ),
            serde_json::to_value(np).unwrap(),
        );
        put(lrc_path(), serde_json::to_value(&lrc).unwrap());
        world
    }
}

/// One CA for every scenario (issuing is the slow part of a world).
fn test_ca() -> &'static roomkeeper_api::raft_identity::ClusterCa {
    static CA: std::sync::OnceLock<roomkeeper_api::raft_identity::ClusterCa> =
        std::sync::OnceLock::new();
    CA.get_or_init(|| {
        roomkeeper_api::raft_identity::ClusterCa::generate(resources::NODE_CLUSTER_ID).unwrap()
    })
}

/// Base64 of a Secret value, as the API server serves it.
fn b64(text: &str) -> String {
    serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn lrc_path() -> String {
    format!("/apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/liveroomclusters/{CLUSTER}")
}

/// A request as the tests name it: method, path, and for events the reason.
fn describe(method: &str, path: &str, body: &Value) -> String {
    if path.ends_with("/events") {
        return format!(
            "{method} {path} {}",
            body.get("reason").and_then(Value::as_str).unwrap_or("?")
        );
    }
    format!("{method} {path}")
}

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

/// One request the API server received.
#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    path: String,
    /// The query, percent-decoded.
    query: String,
    body: Value,
}

/// Answers every request from `world`, recording each, and applies the
/// writes to it (server-side apply stores the object, a status patch merges
/// into the stored status, a JSON patch is applied to the stored object, a
/// delete removes it); ends when the client side is dropped and returns the
/// requests and the world as the reconcile left it.
async fn api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    mut world: BTreeMap<String, Value>,
) -> (Vec<Recorded>, BTreeMap<String, Value>) {
    let mut requests = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req
            .uri()
            .query()
            .unwrap_or("")
            .trim_start_matches('&')
            .replace("%2F", "/")
            .replace("%3D", "=");
        let json_patch = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|c| c == "application/json-patch+json");
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        requests.push(Recorded {
            method: method.to_string(),
            path: path.clone(),
            query,
            body: body.clone(),
        });
        let (code, reply) = match method.as_str() {
            "GET" => world
                .get(&path)
                .cloned()
                .map_or_else(not_found, |v| (200, v)),
            "POST" => (201, body.clone()),
            "PATCH" => match path.strip_suffix("/status") {
                Some(target) => {
                    let live = world.get_mut(target).expect("status of a stored object");
                    live["status"] = body["status"].clone();
                    (200, live.clone())
                }
                None if json_patch => {
                    let live = world
                        .get_mut(&path)
                        .expect("a JSON patch of a stored object");
                    let ops: json_patch::Patch = serde_json::from_value(body.clone()).unwrap();
                    match json_patch::patch(live, &ops.0) {
                        Ok(()) => (200, live.clone()),
                        Err(e) => (
                            422,
                            json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                   "status": "Failure", "message": e.to_string(),
                                   "reason": "Invalid", "code": 422}),
                        ),
                    }
                }
                None => {
                    world.insert(path.clone(), body.clone());
                    (200, body.clone())
                }
            },
            "DELETE" => world.remove(&path).map_or_else(not_found, |v| (200, v)),
            _ => not_found(),
        };
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    }
    (requests, world)
}

/// Fake order-store nodes on the scenario's pod IPs: `/admin/status` answers
/// what the current scenario says (tests move the scenario on between
/// reconciles with [`FakeNodes::set`]); every other admin call is recorded
/// as `<METHOD> <ip> <path>` with its body and answered 200 (the peer
/// addresses call with every id it was given as changed).
struct FakeNodes {
    replies: Arc<Mutex<BTreeMap<String, (u16, Value)>>>,
    log: Arc<Mutex<Vec<(String, Value)>>>,
}

/// The node admin calls one reconcile made (status probes left out).
#[derive(Debug)]
struct AdminCalls {
    calls: Vec<String>,
    bodies: Vec<Value>,
}

impl FakeNodes {
    async fn start(scenario: &Scenario) -> FakeNodes {
        let nodes = FakeNodes {
            replies: Arc::new(Mutex::new(BTreeMap::new())),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        nodes.set(scenario);
        for o in 0..scenario.pods {
            let ip = scenario.ip(o);
            let replies = nodes.replies.clone();
            let log = nodes.log.clone();
            let listener = tokio::net::TcpListener::bind(format!("{ip}:{ADMIN_PORT}"))
                .await
                .unwrap_or_else(|e| panic!("binding the fake node at {ip}:{ADMIN_PORT}: {e}"));
            let app = axum::Router::new().fallback(
                move |method: http::Method, uri: http::Uri, body: axum::body::Bytes| {
                    let replies = replies.clone();
                    let log = log.clone();
                    let ip = ip.clone();
                    async move {
                        let (code, status) = replies.lock().unwrap()[&ip].clone();
                        let code = http::StatusCode::from_u16(code).unwrap();
                        if uri.path() == "/admin/status" || code != http::StatusCode::OK {
                            return (code, axum::Json(status));
                        }
                        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        log.lock()
                            .unwrap()
                            .push((format!("{method} {ip} {}", uri.path()), body.clone()));
                        let reply = if uri.path() == "/admin/peer-addresses" {
                            let changed: Vec<u64> = body["raft_addrs"]
                                .as_object()
                                .map(|m| m.keys().filter_map(|k| k.parse().ok()).collect())
                                .unwrap_or_default();
                            json!({ "changed": changed })
                        } else {
                            json!({})
                        };
                        (code, axum::Json(reply))
                    }
                },
            );
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        nodes
    }

    /// From now on the nodes answer as `scenario` says (same pods).
    fn set(&self, scenario: &Scenario) {
        let mut replies = self.replies.lock().unwrap();
        for o in 0..scenario.pods {
            replies.insert(scenario.ip(o), scenario.node_reply(o));
        }
    }

    /// The calls recorded since the last take.
    fn take(&self) -> AdminCalls {
        let (calls, bodies) = std::mem::take(&mut *self.log.lock().unwrap())
            .into_iter()
            .unzip();
        AdminCalls { calls, bodies }
    }
}

/// What one reconcile did.
struct Reconciled {
    /// The API calls, in order, as [`describe`] names them.
    calls: Vec<String>,
    /// The same requests with their queries and bodies.
    requests: Vec<Recorded>,
    /// The API server's objects afterwards.
    world: BTreeMap<String, Value>,
    action: Action,
}

impl Reconciled {
    /// The body of the only request `<method> <path>` (an event: `POST
    /// <path> <reason>`).
    fn body(&self, call: &str) -> &Value {
        let call = p(call);
        let mut found = self
            .requests
            .iter()
            .zip(&self.calls)
            .filter(|(_, c)| **c == call)
            .map(|(r, _)| &r.body);
        let body = found.next().unwrap_or_else(|| panic!("no call {call}"));
        assert!(found.next().is_none(), "more than one call {call}");
        body
    }

    /// The status the reconcile left on the cluster object.
    fn status(&self) -> &Value {
        &self.world[&lrc_path()]["status"]
    }

    /// The cluster object as the reconcile left it, for the next reconcile.
    fn lrc(&self) -> LiveRoomCluster {
        serde_json::from_value(self.world[&lrc_path()].clone()).unwrap()
    }
}

/// One condition of a status, by type.
fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no condition {type_} in {status}"))
}

/// One reconcile of `lrc` against an API server holding `world`.
async fn reconcile_once(lrc: LiveRoomCluster, world: BTreeMap<String, Value>) -> Reconciled {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(api_server(handle, world));
    let ctx = Arc::new(Context {
        client: Client::new(service, NS),
        http: roomkeeper_control::http::JsonClient::new(),
        nodes: crate::api_tls::NodeRoutes::default(),
        metrics: crate::metrics::OperatorMetrics::new().unwrap(),
        reporter: kube::runtime::events::Reporter {
            controller: "roomkeeper-operator".into(),
            instance: Some("test".into()),
        },
        playbooks: crate::tier::PlaybookStates::default(),
        kubeconfigs: crate::regions::KubeconfigClients::default(),
        operator_ip: None,
        backoff: crate::backoff::Backoff::default(),
    });
    let action = tokio::time::timeout(
        Duration::from_secs(10),
        reconcile(Arc::new(lrc), ctx.clone()),
    )
    .await
    .expect("the reconcile finishes")
    .unwrap_or_else(|e| panic!("the reconcile fails: {e}"));
    drop(ctx);
    let (requests, world) = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("every client handle is dropped")
        .unwrap();
    Reconciled {
        calls: requests
            .iter()
            .map(|r| describe(&r.method, &r.path, &r.body))
            .collect(),
        requests,
        world,
        action,
    }
}

/// The scenario's nodes up, then one reconcile: also returns the node admin
/// calls it made.
async fn reconcile_scenario(s: &Scenario) -> (Reconciled, AdminCalls) {
    let nodes = FakeNodes::start(s).await;
    let done = reconcile_once(s.lrc(), s.world()).await;
    (done, nodes.take())
}

/// The nodes moved on to `s`, then one reconcile of `s`'s cluster and world.
async fn reconcile_stage(nodes: &FakeNodes, s: &Scenario) -> (Reconciled, AdminCalls) {
    nodes.set(s);
    let done = reconcile_once(s.lrc(), s.world()).await;
    (done, nodes.take())
}

fn p(s: &str) -> String {
    s.replace("{NS}", NS)
}

/// The reads every reconcile of this one-region cluster starts with.
fn reads_before_the_step() -> Vec<String> {
    [
        "GET /api/v1/namespaces/{NS}/configmaps/shop-voter-moves",
        "GET /api/v1/namespaces/{NS}/secrets/shop-tokens",
        "GET /api/v1/namespaces/{NS}/secrets/shop-contact-keys",
        "GET /api/v1/namespaces/{NS}/secrets/shop-raft-ca",
        "GET /api/v1/namespaces/{NS}/configmaps/shop-api-ca",
        "GET /api/v1/namespaces/{NS}/secrets/shop-r-api-tls",
        "GET /api/v1/namespaces/{NS}/pods",
        "GET /api/v1/namespaces/{NS}/configmaps/shop-identities",
        "GET /api/v1/namespaces/{NS}/configmaps/shop-identities",
        "GET /api/v1/namespaces/{NS}/secrets/shop-r-raft-certs",
        "GET /apis/apps/v1/namespaces/{NS}/statefulsets/shop-r",
        "GET /api/v1/namespaces/{NS}/services/shop-r-peers",
        "GET /api/v1/namespaces/{NS}/services/shop-r",
        "GET /apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/shop-r",
        "GET /apis/apps/v1/namespaces/{NS}/statefulsets",
        "GET /apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/shop-peers-only",
    ]
    .iter()
    .map(|s| p(s))
    .collect()
}

fn with(mut calls: Vec<String>, more: &[&str]) -> Vec<String> {
    calls.extend(more.iter().map(|s| p(s)));
    calls
}

fn requeue(secs: u64) -> Action {
    Action::requeue(Duration::from_secs(secs))
}

const STATUS_PATCH: &str =
    "PATCH /apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/liveroomclusters/shop/status";

/// A converged three-voter group led by node 1 on `net`.
fn three_voters(net: u8) -> Scenario {
    Scenario {
        net,
        want_voters: 3,
        pods: 3,
        leader: Some(1),
        voters: vec![1, 2, 3],
        joined: vec![1, 2, 3],
        bootstrapped: true,
        ..Scenario::default()
    }
}

#[tokio::test]
async fn bootstrap_initializes_the_group_on_the_lowest_id_once_every_voter_answers() {
    let s = Scenario {
        net: 1,
        want_voters: 3,
        pods: 3,
        leader: None,
        voters: vec![],
        learners: vec![],
        joined: vec![],
        bootstrapped: false,
        ..Scenario::default()
    };
    let (done, admin) = reconcile_scenario(&s).await;
    assert_eq!(
        done.calls,
        with(
            reads_before_the_step(),
            &[
                // The voters are recorded as joined before they can vote.
                "GET /api/v1/namespaces/{NS}/configmaps/shop-identities",
                "PATCH /api/v1/namespaces/{NS}/configmaps/shop-identities",
                "POST /apis/events.k8s.io/v1/namespaces/{NS}/events Bootstrapped",
                "PATCH /apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/liveroomclusters/shop/status",
            ]
        )
    );
    assert_eq!(admin.calls, vec!["POST 127.77.1.1 /admin/init"]);
    assert_eq!(done.action, requeue(2), "a step was taken: look again soon");
    let cm = &done.world[&p("/api/v1/namespaces/{NS}/configmaps/shop-identities")];
    assert!(
        cm["data"]["joined"].as_str().unwrap_or("").contains('3'),
        "every voter is recorded as joined: {cm}"
    );
}

#[tokio::test]
async fn a_pod_outside_the_group_is_added_as_a_learner_through_the_leader() {
    let s = Scenario {
        net: 2,
        want_voters: 3,
        pods: 3,
        leader: Some(1),
        voters: vec![1, 2],
        learners: vec![],
        joined: vec![1, 2],
        bootstrapped: true,
        ..Scenario::default()
    };
    let (done, admin) = reconcile_scenario(&s).await;
    assert_eq!(
        done.calls,
        with(
            reads_before_the_step(),
            &[
                // Node 3 is recorded as joined before it joins.
                "GET /api/v1/namespaces/{NS}/configmaps/shop-identities",
                "PATCH /api/v1/namespaces/{NS}/configmaps/shop-identities",
                "POST /apis/events.k8s.io/v1/namespaces/{NS}/events LearnerAdded",
                "PATCH /apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/liveroomclusters/shop/status",
            ]
        )
    );
    assert_eq!(admin.calls, vec!["POST 127.77.2.1 /admin/learners"]);
    assert_eq!(done.action, requeue(2));
}

#[tokio::test]
async fn a_caught_up_learner_that_should_vote_is_promoted() {
    let s = Scenario {
        net: 3,
        want_voters: 3,
        pods: 3,
        leader: Some(1),
        voters: vec![1, 2],
        learners: vec![3],
        joined: vec![1, 2, 3],
        bootstrapped: true,
        ..Scenario::default()
    };
    let (done, admin) = reconcile_scenario(&s).await;
    assert_eq!(
        done.calls,
        with(
            reads_before_the_step(),
            &[
                "POST /apis/events.k8s.io/v1/namespaces/{NS}/events VoterPromoted",
                "PATCH /apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/liveroomclusters/shop/status",
            ]
        )
    );
    assert_eq!(admin.calls, vec!["POST 127.77.3.1 /admin/promote"]);
    assert_eq!(done.action, requeue(2));
}

#[tokio::test]
async fn a_voter_the_spec_no_longer_wants_is_removed_and_gives_up_its_id() {
    let s = Scenario {
        net: 4,
        want_voters: 3,
        pods: 4,
        leader: Some(1),
        voters: vec![1, 2, 3, 4],
        learners: vec![],
        joined: vec![1, 2, 3, 4],
        bootstrapped: true,
        ..Scenario::default()
    };
    let (done, admin) = reconcile_scenario(&s).await;
    assert_eq!(
        done.calls,
        with(
            reads_before_the_step(),
            &[
                // shop-r-3 left the slots: its id is retired in the map.
                "GET /api/v1/namespaces/{NS}/configmaps/shop-identities",
                "PATCH /api/v1/namespaces/{NS}/configmaps/shop-identities",
                "POST /apis/events.k8s.io/v1/namespaces/{NS}/events MemberRemoved",
                "PATCH /apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/liveroomclusters/shop/status",
            ]
        )
    );
    assert_eq!(admin.calls, vec!["POST 127.77.4.1 /admin/remove"]);
    assert_eq!(done.action, requeue(2));
    let cm = &done.world[&p("/api/v1/namespaces/{NS}/configmaps/shop-identities")];
    assert!(
        !cm["data"]["nodes"]
            .as_str()
            .unwrap_or("")
            .contains("shop-r-3"),
        "the removed pod's id is retired: {cm}"
    );
}

#[tokio::test]
async fn a_converged_cluster_is_left_alone_and_a_second_reconcile_writes_nothing() {
    let s = Scenario {
        net: 5,
        want_voters: 3,
        pods: 3,
        leader: Some(1),
        voters: vec![1, 2, 3],
        learners: vec![],
        joined: vec![1, 2, 3],
        bootstrapped: true,
        ..Scenario::default()
    };
    let nodes = FakeNodes::start(&s).await;
    let lrc_path = p("/apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/liveroomclusters/shop");
    // The first reconcile only reports what it sees.
    let first = reconcile_once(s.lrc(), s.world()).await;
    assert_eq!(
        first.calls,
        with(
            reads_before_the_step(),
            &["PATCH /apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/liveroomclusters/shop/status"]
        )
    );
    let status = &first.world[&lrc_path]["status"];
    assert_eq!(status["phase"], "Running", "{status}");
    assert_eq!(status["readyVoters"], "3/3", "{status}");
    // The playbook is consulted on a converged cluster; the default one
    // needs two regions to act, so on this one-region cluster it says so
    // (and makes no API call: its memory ConfigMap is not read or written).
    let playbook = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PlaybookReady")
        .cloned()
        .unwrap_or_default();
    assert_eq!(playbook["reason"], "PlaybookInvalid", "{status}");
    assert!(
        playbook["message"]
            .as_str()
            .unwrap_or("")
            .contains("minRegionsVisibleToAct"),
        "{status}"
    );
    // The next one, on the status it wrote, makes the same reads and no write.
    let lrc: LiveRoomCluster = serde_json::from_value(first.world[&lrc_path].clone()).unwrap();
    let second = reconcile_once(lrc, first.world.clone()).await;
    assert_eq!(second.calls, reads_before_the_step());
    assert_eq!(
        nodes.take().calls,
        Vec::<String>::new(),
        "no membership call on a converged cluster"
    );
    assert_eq!(first.action, requeue(15), "nothing to do: the slow resync");
    assert_eq!(second.action, requeue(15));
}

#[tokio::test]
async fn the_raft_ca_and_each_ids_certificate_exist_before_the_workload_and_stay_put() {
    // A cluster whose Raft CA and certificates are not there yet (the
    // operator issued none before).
    let s = three_voters(16);
    let nodes = FakeNodes::start(&s).await;
    let ca_path = p("/api/v1/namespaces/{NS}/secrets/shop-raft-ca");
    let certs_path = p("/api/v1/namespaces/{NS}/secrets/shop-r-raft-certs");
    let api_path = p("/api/v1/namespaces/{NS}/secrets/shop-r-api-tls");
    let mut world = s.world();
    world.remove(&ca_path);
    world.remove(&certs_path);
    world.remove(&api_path);
    let first = reconcile_once(s.lrc(), world).await;
    let at = |call: &str| {
        first
            .calls
            .iter()
            .position(|c| *c == p(call))
            .unwrap_or_else(|| panic!("no {call} in {:#?}", first.calls))
    };
    let ca_created = at("POST /api/v1/namespaces/{NS}/secrets");
    let certs_written = at("PATCH /api/v1/namespaces/{NS}/secrets/shop-r-raft-certs");
    let workload = at("GET /apis/apps/v1/namespaces/{NS}/statefulsets/shop-r");
    let api_written = at("PATCH /api/v1/namespaces/{NS}/secrets/shop-r-api-tls");
    assert!(
        ca_created < certs_written && certs_written < workload,
        "the CA, then the certificates, then the StatefulSet: {:#?}",
        first.calls
    );
    assert!(
        ca_created < api_written && api_written < workload,
        "the API certificate from the new CA before the StatefulSet: {:#?}",
        first.calls
    );
    let api = first.body("PATCH /api/v1/namespaces/{NS}/secrets/shop-r-api-tls");
    assert_eq!(api["type"], "kubernetes.io/tls");
    assert_eq!(
        api["metadata"]["annotations"][crate::api_tls::NAMES_ANNOTATION],
        crate::api_tls::api_names(CLUSTER, REGION, NS).join(",")
    );
    let created = first.body("POST /api/v1/namespaces/{NS}/secrets");
    assert_eq!(created["metadata"]["name"], "shop-raft-ca");
    assert_eq!(created["metadata"]["labels"][CLUSTER_LABEL], CLUSTER);
    assert!(
        created["metadata"]["ownerReferences"].is_null(),
        "kept like the other keys"
    );
    let ca: k8s_openapi::api::core::v1::Secret = serde_json::from_value(created.clone()).unwrap();
    let ca = crate::raft_certs::ca_from_secret(&ca).expect("a CA with its key");
    let certs = first.body("PATCH /api/v1/namespaces/{NS}/secrets/shop-r-raft-certs");
    assert_eq!(certs["metadata"]["labels"][REGION_LABEL], REGION);
    let data = &certs["data"];
    assert_eq!(
        data["ca.crt"],
        b64(&ca.cert_pem),
        "the new CA's certificate"
    );
    for id in 1..=3 {
        assert!(
            data[format!("node-{id}.crt")].is_string()
                && data[format!("node-{id}.key")].is_string(),
            "node {id}'s pair: {data}"
        );
    }
    // The API server holds what was sent (the mock stores a POST's body only
    // as the reply): a second reconcile reads both and writes neither.
    let mut world = first.world.clone();
    world.insert(ca_path.clone(), created.clone());
    let second = reconcile_once(first.lrc(), world).await;
    assert!(
        !second
            .calls
            .iter()
            .any(|c| c.contains("/secrets") && !c.starts_with("GET ")),
        "the CA is never rewritten and the certificates are kept: {:#?}",
        second.calls
    );
    assert_eq!(second.world[&ca_path], *created);
    assert_eq!(second.world[&certs_path], first.world[&certs_path]);
    assert_eq!(nodes.take().calls, Vec::<String>::new());
}

#[tokio::test]
async fn a_member_back_on_a_new_ip_gets_its_addresses_recorded_through_the_leader() {
    // shop-r-2 (node 3) was recreated and got another IP; the group still
    // records it at the old one.
    let s = Scenario {
        moved: vec![2],
        ..three_voters(6)
    };
    let (done, admin) = reconcile_scenario(&s).await;
    assert_eq!(
        done.calls,
        with(
            reads_before_the_step(),
            &[
                "POST /apis/events.k8s.io/v1/namespaces/{NS}/events AddressesUpdated",
                STATUS_PATCH,
            ]
        )
    );
    assert_eq!(admin.calls, vec!["POST 127.77.6.1 /admin/addresses"]);
    let body = &admin.bodies[0];
    assert_eq!(body["node_id"], 3, "{body}");
    assert_eq!(body["node"]["raft_addr"], "127.77.6.3:7101", "{body}");
    assert_eq!(body["node"]["api_addr"], "127.77.6.3:7201", "{body}");
    assert_eq!(body["node"]["admin_addr"], "127.77.6.3:7301", "{body}");
    assert_eq!(
        body["node"]["zone"], "zone-3",
        "region and zone stay as the group recorded them: {body}"
    );
    let event = done.body("POST /apis/events.k8s.io/v1/namespaces/{NS}/events AddressesUpdated");
    assert!(
        event["note"]
            .as_str()
            .unwrap_or("")
            .contains("node 3 (shop-r-2) came back at 127.77.6.3:7101"),
        "{event}"
    );
    let status = done.status();
    assert_eq!(status["phase"], "Progressing", "{status}");
    assert_eq!(
        condition(status, "Progressing")["status"],
        "True",
        "{status}"
    );
    assert_eq!(done.action, requeue(2));
}

#[tokio::test]
async fn a_leaderless_group_whose_members_all_moved_is_told_where_they_are_on_every_node() {
    // Every pod came back on a new IP; nobody can reach anybody at the
    // recorded addresses, so no leader is elected.
    let s = Scenario {
        leader: None,
        moved: vec![0, 1, 2],
        ..three_voters(7)
    };
    let (done, admin) = reconcile_scenario(&s).await;
    assert_eq!(
        done.calls,
        with(
            reads_before_the_step(),
            &[
                "POST /apis/events.k8s.io/v1/namespaces/{NS}/events PeerAddressesSeeded",
                STATUS_PATCH,
            ]
        )
    );
    // Node-local, no Raft: each node is told, not the (missing) leader.
    assert_eq!(
        admin.calls,
        vec![
            "POST 127.77.7.1 /admin/peer-addresses",
            "POST 127.77.7.2 /admin/peer-addresses",
            "POST 127.77.7.3 /admin/peer-addresses",
        ]
    );
    let want = json!({"1": "127.77.7.1:7101", "2": "127.77.7.2:7101", "3": "127.77.7.3:7101"});
    for body in &admin.bodies {
        assert_eq!(body["raft_addrs"], want, "every node hears every member");
    }
    let status = done.status();
    assert_eq!(status["phase"], "Degraded", "{status}");
    assert_eq!(
        condition(status, "Available")["reason"],
        "NoLeader",
        "{status}"
    );
    assert_eq!(done.action, requeue(2));
}

#[tokio::test]
async fn a_wiped_member_is_removed_retired_and_rejoins_under_a_new_id_never_its_old_one() {
    // Node 3's volume was wiped: it stays out of Raft and answers 409.
    let s1 = Scenario {
        wiped: vec![2],
        ..three_voters(8)
    };
    let nodes = FakeNodes::start(&s1).await;
    let cm_path = p("/api/v1/namespaces/{NS}/configmaps/shop-identities");

    // 1. Its id leaves the group, through the leader.
    let (first, admin) = reconcile_stage(&nodes, &s1).await;
    assert_eq!(
        first.calls,
        with(
            reads_before_the_step(),
            &[
                "POST /apis/events.k8s.io/v1/namespaces/{NS}/events WipedVolume",
                STATUS_PATCH,
            ]
        )
    );
    assert_eq!(admin.calls, vec!["POST 127.77.8.1 /admin/remove"]);
    assert_eq!(admin.bodies[0]["node_id"], 3);
    let event = first.body("POST /apis/events.k8s.io/v1/namespaces/{NS}/events WipedVolume");
    assert_eq!(event["type"], "Warning", "{event}");

    // 2. Out of the group: the id is retired, the pod gets the next id and
    //    is restarted; nothing is asked of any node.
    let s2 = Scenario {
        voters: vec![1, 2],
        ..s1.clone()
    };
    nodes.set(&s2);
    let second = reconcile_once(first.lrc(), first.world.clone()).await;
    assert_eq!(
        second.calls,
        with(
            reads_before_the_step(),
            &[
                "GET /api/v1/namespaces/{NS}/configmaps/shop-identities",
                "PATCH /api/v1/namespaces/{NS}/configmaps/shop-identities",
                // The new id's certificate, before the pod restarts to use it.
                "GET /api/v1/namespaces/{NS}/secrets/shop-r-raft-certs",
                "PATCH /api/v1/namespaces/{NS}/secrets/shop-r-raft-certs",
                "POST /apis/events.k8s.io/v1/namespaces/{NS}/events RaftCertificatesIssued",
                "POST /apis/events.k8s.io/v1/namespaces/{NS}/events NodeIdRetired",
                "DELETE /api/v1/namespaces/{NS}/pods/shop-r-2",
                "POST /apis/events.k8s.io/v1/namespaces/{NS}/events WipedPodRestarted",
                STATUS_PATCH,
            ]
        )
    );
    assert_eq!(nodes.take().calls, Vec::<String>::new());
    let cm = &second.world[&cm_path]["data"];
    let nodes_line = cm["nodes"].as_str().unwrap_or("");
    assert!(nodes_line.contains("shop-r-2 4\n"), "a new id: {cm}");
    assert!(!nodes_line.contains(" 3\n"), "id 3 is held by no pod: {cm}");
    assert_eq!(cm["next-id"], "5", "id 3 is never handed out again: {cm}");
    let joined = roomkeeper_api::admin::parse_joined_ids(cm["joined"].as_str().unwrap()).unwrap();
    assert_eq!(
        joined.into_iter().collect::<Vec<_>>(),
        vec![1, 2],
        "the new id has not joined yet: {cm}"
    );
    assert!(!second
        .world
        .contains_key(&p("/api/v1/namespaces/{NS}/pods/shop-r-2")));
    let note = second.body("POST /apis/events.k8s.io/v1/namespaces/{NS}/events NodeIdRetired")
        ["note"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        note.contains("retired node 3") && note.contains("new id is 4"),
        "{note}"
    );
    let certs_path = p("/api/v1/namespaces/{NS}/secrets/shop-r-raft-certs");
    let before = &first.world[&certs_path]["data"];
    let after = &second.world[&certs_path]["data"];
    let keys: Vec<&str> = after
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        [
            "ca.crt",
            "node-1.crt",
            "node-1.key",
            "node-2.crt",
            "node-2.key",
            "node-4.crt",
            "node-4.key"
        ],
        "node 4 has its pair, retired node 3 none"
    );
    assert_eq!(
        before["node-1.key"], after["node-1.key"],
        "a running node's pair is kept"
    );
    let note = second
        .body("POST /apis/events.k8s.io/v1/namespaces/{NS}/events RaftCertificatesIssued")["note"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        note.contains("issued for nodes [4]") && note.contains("dropped nodes [3]"),
        "{note}"
    );

    // 3. The pod is back on an empty volume as node 4: it joins as a
    //    learner under that id, recorded as joined first.
    let s3 = Scenario {
        wiped: vec![],
        renumbered: vec![(2, 4)],
        ..s2.clone()
    };
    nodes.set(&s3);
    let third = reconcile_once(second.lrc(), second.world.clone()).await;
    assert_eq!(
        third.calls,
        with(
            reads_before_the_step(),
            &[
                "GET /api/v1/namespaces/{NS}/configmaps/shop-identities",
                "PATCH /api/v1/namespaces/{NS}/configmaps/shop-identities",
                "POST /apis/events.k8s.io/v1/namespaces/{NS}/events LearnerAdded",
                STATUS_PATCH,
            ]
        )
    );
    let admin = nodes.take();
    assert_eq!(admin.calls, vec!["POST 127.77.8.1 /admin/learners"]);
    assert_eq!(admin.bodies[0]["node_id"], 4, "never re-added as 3");
    assert_eq!(admin.bodies[0]["node"]["raft_addr"], "127.77.8.3:7101");
    let joined = third.world[&cm_path]["data"]["joined"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        roomkeeper_api::admin::parse_joined_ids(&joined)
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![1, 2, 4]
    );
}

#[tokio::test]
async fn a_leader_the_spec_no_longer_wants_hands_leadership_over_before_it_is_removed() {
    // Four voters, the spec wants three: node 4 on shop-r-3 leaves, and it leads.
    let s = Scenario {
        net: 9,
        want_voters: 3,
        pods: 4,
        leader: Some(4),
        voters: vec![1, 2, 3, 4],
        joined: vec![1, 2, 3, 4],
        bootstrapped: true,
        ..Scenario::default()
    };
    let (done, admin) = reconcile_scenario(&s).await;
    assert_eq!(
        done.calls,
        with(
            reads_before_the_step(),
            &[
                "POST /apis/events.k8s.io/v1/namespaces/{NS}/events LeadershipTransferred",
                STATUS_PATCH,
            ]
        )
    );
    // Asked of the leader, to a wanted voter; no removal yet.
    assert_eq!(admin.calls, vec!["POST 127.77.9.4 /admin/transfer-leader"]);
    assert_eq!(admin.bodies[0]["to"], 1);
    let note = done
        .body("POST /apis/events.k8s.io/v1/namespaces/{NS}/events LeadershipTransferred")["note"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(note.contains("leader 4 is leaving the voters"), "{note}");
    assert_eq!(done.action, requeue(2));
}

#[tokio::test]
async fn a_rolling_restart_takes_one_pod_at_a_time_waits_for_health_and_the_leader_last() {
    // Every pod runs the previous template; node 1 on shop-r-0 leads.
    let outdated = Scenario {
        outdated: vec![0, 1, 2],
        ..three_voters(10)
    };
    let nodes = FakeNodes::start(&outdated).await;
    let restart = |pod: &str| {
        with(
            reads_before_the_step(),
            &[
                format!("DELETE /api/v1/namespaces/{{NS}}/pods/{pod}").as_str(),
                "POST /apis/events.k8s.io/v1/namespaces/{NS}/events RollingRestart",
                STATUS_PATCH,
            ],
        )
    };
    let waits = with(reads_before_the_step(), &[STATUS_PATCH]);

    // A follower first, one pod only.
    let (done, admin) = reconcile_stage(&nodes, &outdated).await;
    assert_eq!(done.calls, restart("shop-r-1"));
    assert_eq!(
        done.body("DELETE /api/v1/namespaces/{NS}/pods/shop-r-1")["propagationPolicy"],
        Value::Null,
        "a plain delete: the StatefulSet recreates the pod"
    );
    assert!(admin.calls.is_empty(), "{admin:?}");
    assert_eq!(done.action, requeue(2));

    // While it terminates, nothing else restarts.
    let terminating = Scenario {
        deleting: vec![1],
        ..outdated.clone()
    };
    let (done, admin) = reconcile_stage(&nodes, &terminating).await;
    assert_eq!(done.calls, waits);
    assert!(admin.calls.is_empty(), "{admin:?}");
    let progressing = condition(done.status(), "Progressing");
    assert_eq!(
        progressing["message"], "a pod is restarting",
        "{progressing}"
    );

    // Back on the new template but not Ready yet: still waiting.
    let unready = Scenario {
        outdated: vec![0, 2],
        not_ready: vec![1],
        ..outdated.clone()
    };
    let (done, admin) = reconcile_stage(&nodes, &unready).await;
    assert_eq!(done.calls, waits);
    assert!(admin.calls.is_empty(), "{admin:?}");
    let progressing = condition(done.status(), "Progressing");
    assert!(
        progressing["message"]
            .as_str()
            .unwrap_or("")
            .contains("until shop-r-1 is ready again"),
        "{progressing}"
    );
    assert_eq!(done.status()["phase"], "Progressing");

    // Ready: the next follower.
    let next = Scenario {
        outdated: vec![0, 2],
        ..outdated.clone()
    };
    let (done, _) = reconcile_stage(&nodes, &next).await;
    assert_eq!(done.calls, restart("shop-r-2"));

    // Only the leader is left: leadership moves first, nothing is deleted.
    let leader_left = Scenario {
        outdated: vec![0],
        ..outdated.clone()
    };
    let (done, admin) = reconcile_stage(&nodes, &leader_left).await;
    assert_eq!(
        done.calls,
        with(
            reads_before_the_step(),
            &[
                "POST /apis/events.k8s.io/v1/namespaces/{NS}/events LeadershipTransferred",
                STATUS_PATCH,
            ]
        )
    );
    assert_eq!(admin.calls, vec!["POST 127.77.10.1 /admin/transfer-leader"]);
    assert_eq!(admin.bodies[0]["to"], 2);

    // Node 2 leads now: the former leader's pod restarts.
    let moved_on = Scenario {
        leader: Some(2),
        ..leader_left.clone()
    };
    let (done, admin) = reconcile_stage(&nodes, &moved_on).await;
    assert_eq!(done.calls, restart("shop-r-0"));
    assert!(admin.calls.is_empty(), "{admin:?}");
}

#[tokio::test]
async fn a_paused_cluster_gets_its_status_and_no_membership_change() {
    // The same cluster as the add-learner scenario (node 3 outside the
    // group), paused.
    let s = Scenario {
        net: 11,
        want_voters: 3,
        pods: 3,
        leader: Some(1),
        voters: vec![1, 2],
        joined: vec![1, 2],
        bootstrapped: true,
        paused: true,
        ..Scenario::default()
    };
    let (done, admin) = reconcile_scenario(&s).await;
    // Reads, then the status: no identity write, no event, no pod deleted,
    // no playbook memory.
    assert_eq!(done.calls, with(reads_before_the_step(), &[STATUS_PATCH]));
    assert_eq!(admin.calls, Vec::<String>::new(), "no node admin call");
    let status = done.status();
    assert_eq!(status["phase"], "Paused", "{status}");
    let progressing = condition(status, "Progressing");
    assert_eq!(progressing["status"], "False", "{progressing}");
    assert_eq!(progressing["reason"], "Paused", "{progressing}");
    assert_eq!(
        status["readyVoters"], "2/3",
        "what is observed is still reported"
    );
    assert_eq!(done.action, requeue(15));
    // Paused again on the status it wrote: reads only.
    let second = reconcile_once(done.lrc(), done.world.clone()).await;
    assert_eq!(second.calls, reads_before_the_step());
}

#[tokio::test]
async fn an_invalid_spec_is_reported_once_and_nothing_is_created() {
    // Four voters: no odd majority.
    let s = Scenario {
        net: 12,
        want_voters: 4,
        ..Scenario::default()
    };
    let world = BTreeMap::from([(lrc_path(), serde_json::to_value(s.lrc()).unwrap())]);
    let first = reconcile_once(s.lrc(), world).await;
    assert_eq!(
        first.calls,
        vec![
            p("POST /apis/events.k8s.io/v1/namespaces/{NS}/events InvalidSpec"),
            p(STATUS_PATCH),
        ],
        "no Secret, workload or node is touched"
    );
    let event = first.body("POST /apis/events.k8s.io/v1/namespaces/{NS}/events InvalidSpec");
    assert_eq!(event["type"], "Warning", "{event}");
    let status = first.status();
    assert_eq!(status["phase"], "Invalid", "{status}");
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "False", "{ready}");
    assert_eq!(ready["reason"], "InvalidSpec", "{ready}");
    assert_eq!(
        ready["message"], "spec.regions: the total number of voters must be odd, is 4",
        "the field and the rule are named: {ready}"
    );
    assert_eq!(condition(status, "Degraded")["status"], "True", "{status}");
    assert_eq!(first.action, Action::await_change(), "no retry loop");
    assert_eq!(first.world.len(), 1, "nothing was created");
    // The same spec again: already said, nothing to write.
    let second = reconcile_once(first.lrc(), first.world.clone()).await;
    assert_eq!(second.calls, Vec::<String>::new());
}

/// What deleting the cluster object under `policy` deletes, in order.
async fn delete_cluster(net: u8, policy: DeletionPolicy) -> Reconciled {
    let s = Scenario {
        deleted: Some(policy),
        ..three_voters(net)
    };
    let done = reconcile_once(s.lrc(), s.world()).await;
    assert_eq!(done.action, Action::await_change());
    // The finalizer goes last, by a JSON patch that tests it is still ours.
    let last = done.requests.last().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("PATCH", lrc_path().as_str())
    );
    assert_eq!(
        last.body,
        json!([{"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
               {"op": "remove", "path": "/metadata/finalizers/0"}])
    );
    assert_eq!(
        done.world[&lrc_path()]["metadata"]["finalizers"],
        json!([]),
        "the cluster object may go"
    );
    // Collections are deleted by the cluster's label only.
    for r in done.requests.iter().filter(|r| {
        r.method == "DELETE"
            && (r.path.ends_with("/pods") || r.path.ends_with("/persistentvolumeclaims"))
    }) {
        assert_eq!(
            r.query,
            format!("labelSelector={CLUSTER_LABEL}={CLUSTER}"),
            "{r:?}"
        );
        assert_eq!(r.body["propagationPolicy"], "Background", "{r:?}");
    }
    done
}

/// The deletions every policy makes, after the Deleting event.
fn workload_deletions() -> Vec<&'static str> {
    vec![
        "DELETE /apis/apps/v1/namespaces/{NS}/statefulsets/shop-r",
        "DELETE /api/v1/namespaces/{NS}/services/shop-r-peers",
        "DELETE /api/v1/namespaces/{NS}/services/shop-r",
        "DELETE /apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/shop-r",
        "DELETE /apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/shop-peers-only",
        "DELETE /api/v1/namespaces/{NS}/pods",
    ]
}

#[tokio::test]
async fn deleting_a_retained_cluster_removes_the_workload_and_keeps_volumes_ids_and_keys() {
    let done = delete_cluster(13, DeletionPolicy::Retain).await;
    let mut want = vec!["POST /apis/events.k8s.io/v1/namespaces/{NS}/events Deleting"];
    want.extend(workload_deletions());
    want.push("DELETE /api/v1/namespaces/{NS}/configmaps/shop-playbook-memory");
    want.push("PATCH /apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/liveroomclusters/shop");
    assert_eq!(done.calls, with(vec![], &want));
    let event = done.body("POST /apis/events.k8s.io/v1/namespaces/{NS}/events Deleting");
    assert_eq!(event["type"], "Normal", "{event}");
    assert!(
        event["note"]
            .as_str()
            .unwrap_or("")
            .contains("deletionPolicy: Retain"),
        "{event}"
    );
    for kept in [
        "/api/v1/namespaces/{NS}/persistentvolumeclaims",
        "/api/v1/namespaces/{NS}/configmaps/shop-identities",
        "/api/v1/namespaces/{NS}/secrets/shop-tokens",
        "/api/v1/namespaces/{NS}/secrets/shop-contact-keys",
        "/api/v1/namespaces/{NS}/secrets/shop-raft-ca",
        "/api/v1/namespaces/{NS}/secrets/shop-r-raft-certs",
        "/api/v1/namespaces/{NS}/secrets/shop-r-api-tls",
    ] {
        assert!(done.world.contains_key(&p(kept)), "{kept} is kept");
    }
    assert!(!done
        .world
        .contains_key(&p("/apis/apps/v1/namespaces/{NS}/statefulsets/shop-r")));
}

#[tokio::test]
async fn deleting_a_cluster_under_the_delete_policy_also_removes_volumes_ids_and_keys() {
    let done = delete_cluster(14, DeletionPolicy::Delete).await;
    let mut want = vec!["POST /apis/events.k8s.io/v1/namespaces/{NS}/events Deleting"];
    want.extend(workload_deletions());
    want.extend([
        // Every cluster that runs a region: volumes, the ids and keys its
        // pods mount, its regions' certificates; then the operator's own.
        "DELETE /api/v1/namespaces/{NS}/persistentvolumeclaims",
        "DELETE /api/v1/namespaces/{NS}/configmaps/shop-identities",
        "DELETE /api/v1/namespaces/{NS}/secrets/shop-tokens",
        "DELETE /api/v1/namespaces/{NS}/secrets/shop-contact-keys",
        "DELETE /api/v1/namespaces/{NS}/secrets/shop-r-raft-certs",
        "DELETE /api/v1/namespaces/{NS}/secrets/shop-r-api-tls",
        "DELETE /api/v1/namespaces/{NS}/configmaps/shop-playbook-memory",
        "DELETE /api/v1/namespaces/{NS}/configmaps/shop-voter-moves",
        "DELETE /api/v1/namespaces/{NS}/secrets/shop-raft-ca",
        "PATCH /apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/liveroomclusters/shop",
    ]);
    assert_eq!(done.calls, with(vec![], &want));
    let event = done.body("POST /apis/events.k8s.io/v1/namespaces/{NS}/events Deleting");
    assert_eq!(event["type"], "Warning", "the orders are gone: {event}");
    for gone in [
        "/api/v1/namespaces/{NS}/persistentvolumeclaims",
        "/api/v1/namespaces/{NS}/configmaps/shop-identities",
        "/api/v1/namespaces/{NS}/secrets/shop-tokens",
        "/api/v1/namespaces/{NS}/secrets/shop-contact-keys",
        "/api/v1/namespaces/{NS}/secrets/shop-raft-ca",
        "/api/v1/namespaces/{NS}/secrets/shop-r-raft-certs",
        "/apis/apps/v1/namespaces/{NS}/statefulsets/shop-r",
    ] {
        assert!(!done.world.contains_key(&p(gone)), "{gone} is deleted");
    }
}

/// A one-region playbook the engine accepts (the default one needs two
/// regions), referenced by the cluster, and empty lists of the people's
/// objects the playbook phase reads.
fn with_solo_playbook(world: &mut BTreeMap<String, Value>, lrc: &mut LiveRoomCluster) {
    lrc.spec.playbook_ref = Some(crate::crd::PlaybookRef {
        name: "solo".into(),
    });
    world.insert(lrc_path(), serde_json::to_value(&*lrc).unwrap());
    world.insert(
        p("/apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/failoverplaybooks/solo"),
        json!({
            "apiVersion": "roomkeeper.dev/v1alpha1", "kind": "FailoverPlaybook",
            "metadata": {"name": "solo", "namespace": NS},
            "spec": {
                "tiers": [{"name": "watch", "level": 0,
                           "trigger": {"condition": {"type": "nodeUnhealthy"}, "forMs": 1000, "clearForMs": 1000},
                           "actions": ["recordEvent"]}],
                "guards": {"minRegionsVisibleToAct": 1}
            }
        }),
    );
    for (plural, kind) in [
        ("failoverapprovals", "FailoverApprovalList"),
        ("switchovers", "SwitchoverList"),
        ("failovers", "FailoverList"),
    ] {
        world.insert(
            p(&format!("/apis/roomkeeper.dev/v1alpha1/namespaces/{{NS}}/{plural}")),
            json!({"apiVersion": "roomkeeper.dev/v1alpha1", "kind": kind, "metadata": {}, "items": []}),
        );
    }
}

/// Puts a person's object into the world, at its path and in its list.
fn put_command(world: &mut BTreeMap<String, Value>, plural: &str, obj: Value) {
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let list = p(&format!(
        "/apis/roomkeeper.dev/v1alpha1/namespaces/{{NS}}/{plural}"
    ));
    world.get_mut(&list).unwrap()["items"]
        .as_array_mut()
        .unwrap()
        .push(obj.clone());
    world.insert(format!("{list}/{name}"), obj);
}

#[tokio::test]
async fn a_switchover_moves_leadership_once_and_a_forbidden_failover_changes_nothing() {
    let s = three_voters(15);
    let nodes = FakeNodes::start(&s).await;
    let mut lrc = s.lrc();
    let mut world = s.world();
    with_solo_playbook(&mut world, &mut lrc);
    put_command(
        &mut world,
        "switchovers",
        json!({"apiVersion": "roomkeeper.dev/v1alpha1", "kind": "Switchover",
               "metadata": {"name": "to-3", "namespace": NS},
               "spec": {"cluster": CLUSTER, "toNode": 3, "requestedBy": "alice", "reason": "host 1 maintenance"}}),
    );
    // Away from the only region: no voter would be left outside it.
    put_command(
        &mut world,
        "failovers",
        json!({"apiVersion": "roomkeeper.dev/v1alpha1", "kind": "Failover",
               "metadata": {"name": "away", "namespace": NS},
               "spec": {"cluster": CLUSTER, "fromRegion": REGION, "requestedBy": "bob"}}),
    );
    let done = reconcile_once(lrc, world).await;
    let admin = nodes.take();
    assert_eq!(
        admin.calls,
        vec![format!("POST {} /admin/transfer-leader", s.ip(0))],
        "only the switchover acts, through the leader"
    );
    assert_eq!(admin.bodies[0]["to"], 3, "{:?}", admin.bodies);
    let sw =
        &done.world[&p("/apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/switchovers/to-3")]["status"];
    assert_eq!(sw["phase"], "Succeeded", "{sw}");
    let fo =
        &done.world[&p("/apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/failovers/away")]["status"];
    assert_eq!(fo["phase"], "Refused", "{fo}");
    assert_eq!(fo["guard"], "neverBelowQuorum", "{fo}");
    assert_eq!(
        fo["decisionIds"].as_array().map(Vec::len),
        Some(1),
        "only the refused step is recorded: {fo}"
    );
    // Both are in the cluster's decision history, as operator decisions.
    let history = done.status()["decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        history.iter().any(|d| d["tier"] == "operator"
            && d["disposition"] == "execute"
            && d["reason"]
                .as_str()
                .unwrap_or("")
                .contains("host 1 maintenance")),
        "{history:?}"
    );
    assert!(
        history.iter().any(|d| d["guard"] == "neverBelowQuorum"),
        "{history:?}"
    );
    // The memory that holds them is saved for a restarted operator.
    assert!(done.world.contains_key(&p(
        "/api/v1/namespaces/{NS}/configmaps/shop-playbook-memory"
    )));

    // Decided objects are not carried out again.
    let mut again = done.world.clone();
    for plural in ["switchovers", "failovers"] {
        let list = p(&format!(
            "/apis/roomkeeper.dev/v1alpha1/namespaces/{{NS}}/{plural}"
        ));
        let items: Vec<Value> = again
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{list}/")) && !k.ends_with("/status"))
            .map(|(_, v)| v.clone())
            .collect();
        again.get_mut(&list).unwrap()["items"] = Value::Array(items);
    }
    let second = reconcile_once(done.lrc(), again).await;
    assert!(nodes.take().calls.is_empty(), "carried out once");
    assert!(
        !second
            .calls
            .iter()
            .any(|c| c.contains("/switchovers/") || c.contains("/failovers/")),
        "{:?}",
        second.calls
    );
}
