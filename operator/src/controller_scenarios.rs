//! Reconcile scenarios against a mocked API server (the kube-rs/controller-rs
//! `ApiServerVerifier` pattern): `tower_test::mock::pair` feeds a
//! `kube::Client`, a small in-memory API server answers each request, and
//! every test asserts the exact API calls one reconcile makes, in order, and
//! that it makes no other. The nodes' admin APIs are tiny axum servers on
//! loopback addresses (127.77.<scenario>.<ordinal + 1>, the admin port), each
//! answering `/admin/status` from the scenario and recording membership calls.

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
struct Scenario {
    /// Distinguishes the loopback addresses of concurrently running tests.
    net: u8,
    /// Voters the spec asks for.
    want_voters: i32,
    /// Pods running (ordinals 0..pods), with node ids 1..=pods.
    pods: u8,
    /// The leader's node id, if a group exists.
    leader: Option<u64>,
    voters: Vec<u64>,
    learners: Vec<u64>,
    /// Ids already recorded as joined in the identity map.
    joined: Vec<u64>,
    /// The cluster's status says the group was bootstrapped.
    bootstrapped: bool,
}

impl Scenario {
    fn ip(&self, ordinal: u8) -> String {
        format!("127.77.{}.{}", self.net, ordinal + 1)
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
                paused: false,
                dry_run: false,
                deletion_policy: DeletionPolicy::Retain,
            },
        );
        lrc.metadata.namespace = Some(NS.into());
        lrc.metadata.uid = Some("uid-1".into());
        lrc.metadata.generation = Some(1);
        lrc.metadata.resource_version = Some("1".into());
        // The finalizer is in place: the reconcile goes straight to apply.
        lrc.metadata.finalizers = Some(vec![FINALIZER.into()]);
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
                .insert(format!("{CLUSTER}-{REGION}-{o}"), (u64::from(o) + 1, None));
        }
        ids.next_id = u64::from(self.pods) + 1;
        ids.assign(&resources::slots(lrc), 1);
        ids.joined = self.joined.iter().copied().collect();
        ids
    }

    fn node_status(&self, id: u64) -> Value {
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
        json!({
            "node_id": id, "region": REGION, "zone": REGION,
            "role": if is_leader { "leader" } else { "follower" },
            "term": if self.leader.is_some() { 3 } else { 0 },
            "leader_id": if member { self.leader } else { None },
            "last_log_index": 50, "committed_index": 50, "applied_index": 50,
            "snapshot_index": 0, "purged_index": 0, "millis_since_quorum_ack": 5,
            "voters": if member { self.voters.clone() } else { vec![] },
            "learners": if member { self.learners.clone() } else { vec![] },
            "members": {}, "replication": replication, "orders": 0,
            "sales_paused": false, "test_faults_enabled": false
        })
    }

    fn pod(&self, ordinal: u8) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("{CLUSTER}-{REGION}-{ordinal}"), "namespace": NS,
                "labels": {
                    CLUSTER_LABEL: CLUSTER, REGION_LABEL: REGION,
                    "controller-revision-hash": "rev-1"
                }
            },
            "status": {
                "podIP": self.ip(ordinal),
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        })
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
        put(
            format!("/api/v1/namespaces/{NS}/pods"),
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                   "items": (0..self.pods).map(|o| self.pod(o)).collect::<Vec<_>>()}),
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
            update_revision: Some("rev-1".into()),
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
        put(
            format!("/apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/liveroomclusters/{CLUSTER}"),
            serde_json::to_value(&lrc).unwrap(),
        );
        world
    }
}

/// A request as the tests name it: method, path, and for events the reason.
fn describe(method: &http::Method, path: &str, body: &Value) -> String {
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

/// Answers every request from `world`, recording each, and applies the
/// writes to it (server-side apply stores the object, a status patch merges
/// into the stored status); ends when the client side is dropped and returns
/// the calls and the world as the reconcile left it.
async fn api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    mut world: BTreeMap<String, Value>,
) -> (Vec<String>, BTreeMap<String, Value>) {
    let mut calls = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        calls.push(describe(&method, &path, &body));
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
    (calls, world)
}

/// Fake order-store nodes: `/admin/status` from the scenario, every other
/// admin call recorded as `<METHOD> <ip> <path>` and answered 200 `{}`.
async fn fake_nodes(scenario: &Scenario) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    for o in 0..scenario.pods {
        let ip = scenario.ip(o);
        let status = scenario.node_status(u64::from(o) + 1);
        let log = log.clone();
        let listener = tokio::net::TcpListener::bind(format!("{ip}:{ADMIN_PORT}"))
            .await
            .unwrap_or_else(|e| panic!("binding the fake node at {ip}:{ADMIN_PORT}: {e}"));
        let app = axum::Router::new().fallback(move |method: http::Method, uri: http::Uri| {
            let status = status.clone();
            let log = log.clone();
            let ip = ip.clone();
            async move {
                if uri.path() == "/admin/status" {
                    return axum::Json(status);
                }
                log.lock()
                    .unwrap()
                    .push(format!("{method} {ip} {}", uri.path()));
                axum::Json(json!({}))
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    log
}

/// What one reconcile did.
struct Reconciled {
    /// The API calls, in order.
    calls: Vec<String>,
    /// The API server's objects afterwards.
    world: BTreeMap<String, Value>,
    action: Action,
}

/// One reconcile of `lrc` against an API server holding `world`.
async fn reconcile_once(lrc: LiveRoomCluster, world: BTreeMap<String, Value>) -> Reconciled {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(api_server(handle, world));
    let ctx = Arc::new(Context {
        client: Client::new(service, NS),
        http: roomkeeper_control::http::JsonClient::new(),
        metrics: crate::metrics::OperatorMetrics::new().unwrap(),
        reporter: kube::runtime::events::Reporter {
            controller: "roomkeeper-operator".into(),
            instance: Some("test".into()),
        },
        playbooks: crate::tier::PlaybookStates::default(),
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
    let (calls, world) = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("every client handle is dropped")
        .unwrap();
    Reconciled {
        calls,
        world,
        action,
    }
}

/// The scenario's nodes up, then one reconcile: also returns the node admin
/// calls it made.
async fn reconcile_scenario(s: &Scenario) -> (Reconciled, Vec<String>) {
    let nodes = fake_nodes(s).await;
    let done = reconcile_once(s.lrc(), s.world()).await;
    let admin = nodes.lock().unwrap().clone();
    (done, admin)
}

fn p(s: &str) -> String {
    s.replace("{NS}", NS)
}

/// The reads every reconcile of this one-region cluster starts with.
fn reads_before_the_step() -> Vec<String> {
    [
        "GET /api/v1/namespaces/{NS}/secrets/shop-tokens",
        "GET /api/v1/namespaces/{NS}/secrets/shop-contact-keys",
        "GET /api/v1/namespaces/{NS}/pods",
        "GET /api/v1/namespaces/{NS}/configmaps/shop-identities",
        "GET /api/v1/namespaces/{NS}/configmaps/shop-identities",
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
    assert_eq!(admin, vec!["POST 127.77.1.1 /admin/init"]);
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
    assert_eq!(admin, vec!["POST 127.77.2.1 /admin/learners"]);
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
    assert_eq!(admin, vec!["POST 127.77.3.1 /admin/promote"]);
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
    assert_eq!(admin, vec!["POST 127.77.4.1 /admin/remove"]);
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
    };
    let nodes = fake_nodes(&s).await;
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
        nodes.lock().unwrap().clone(),
        Vec::<String>::new(),
        "no membership call on a converged cluster"
    );
    assert_eq!(first.action, requeue(15), "nothing to do: the slow resync");
    assert_eq!(second.action, requeue(15));
}
