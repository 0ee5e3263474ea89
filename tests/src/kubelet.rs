//! The kubelet bridge: no scheduler and no kubelet run in the test harness, so
//! this task plays both for the pods the operator creates, and runs them as
//! real local processes.
//!
//! - Registers the Node `harness-node` (Ready, zone/region labels) and keeps its
//!   Lease and Ready heartbeat fresh.
//! - Binds every unscheduled Pod whose containers all use an image containing
//!   `roomkeeper` (and that has no init containers) to that node.
//! - Runs each container of a bound Pod as a host process: `command[0]` of
//!   `roomkeeper` (or an omitted command) runs `ROOMKEEPER_BIN`; `$(VAR)`
//!   expansion; env `value`, `valueFrom` (`fieldRef`, `secretKeyRef`,
//!   `configMapKeyRef`) and `envFrom`; `configMap`, `secret`,
//!   `persistentVolumeClaim` and `emptyDir` volumes as host directories, with
//!   any arg or env value under a `mountPath` rewritten to the host directory.
//! - Gives each Pod its own network namespace (as root, with `ip` and `nft`):
//!   a veth pair to a Linux bridge per `KubeletBridge` (host address
//!   `10.a.b.254/24`, pods `.1` to `.253`), `eth0` with the pod IP, `lo` up,
//!   default route via the host address; containers `setns(2)` into it before
//!   exec. IP and namespace are sticky per namespace/name for the bridge's
//!   lifetime. The host (operator, probes, test code) reaches pods through
//!   the bridge. Without root or the tools: loopback mode, loudly, with a
//!   loopback IP 127.0.<100..199>.<1..254> per pod on the host network
//!   ([`KubeletBridge::enforces_network_policy`] is then false).
//! - Routes between bridges: several `KubeletBridge`s (one per API server,
//!   one Kubernetes cluster per region) make one flat pod network, as a
//!   multi-cluster CNI does; a pod reaches another bridge's pod IPs through
//!   the host, which has IPv4 forwarding turned on (see [`crate::netns`]).
//! - Enforces NetworkPolicy (ingress) on its pods with an nftables table on
//!   the bridge, replaced atomically on every policy, pod or namespace
//!   change: the forward hook judges traffic between its pods, the output
//!   hook traffic routed in from another bridge's pods (which, unknown to
//!   this API server, only an `ipBlock` or a rule without `from` admits);
//!   the host's own traffic passes. The subset and its limits are in
//!   [`crate::netpol`]. [`KubeletBridge::wait_synced`] waits until the table
//!   matches the API.
//! - Gives a pod that does not opt out of its ServiceAccount token that
//!   ServiceAccount's credentials: a kubeconfig named by `KUBECONFIG` (a
//!   TokenRequest token, the harness's server and CA) and, in the pod's
//!   network namespace, the API server's loopback address forwarded to the
//!   host's, so a controller runs as a pod under its own RBAC.
//! - Reports status (phase, IPs, container statuses, conditions) with
//!   readiness from `readinessProbe.httpGet`/`tcpSocket`, probed from the host.
//! - Restarts exited containers per `restartPolicy` with a backoff; on a
//!   deletionTimestamp sends SIGTERM, waits the grace period (at most 10 s),
//!   SIGKILLs, and deletes the Pod with grace 0 (the kubelet's final delete).
//! - On `stop()`/drop: SIGKILLs every pod process and removes the nftables
//!   table, the pod namespaces, their veths and the bridge; leftovers of test
//!   processes that died without cleaning up are removed at the next start
//!   (see [`crate::netns`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Node, Pod, Probe, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::netns::{self, PodNetwork};
use crate::netpol::{self, PodInfo, Ruleset};

/// The Node the bridge registers and binds pods to.
pub const NODE_NAME: &str = "harness-node";
/// Its `topology.kubernetes.io/zone` label.
pub const NODE_ZONE: &str = "harness-zone-a";
/// Its `topology.kubernetes.io/region` label.
pub const NODE_REGION: &str = "harness-region";
/// The host IP pods report in loopback mode (without network namespaces).
pub const HOST_IP: &str = "127.0.0.1";

const MAX_GRACE: Duration = Duration::from_secs(10);
const PROBE_EVERY: Duration = Duration::from_millis(500);
const TICK: Duration = Duration::from_millis(200);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Next loopback address to hand out, process-wide, so bridges of tests
/// running in parallel never share an address.
static NEXT_IP: AtomicU32 = AtomicU32::new(0);

fn allocate_ip() -> Result<Ipv4Addr> {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    let a = 100 + n / 254;
    if a >= 200 {
        bail!("out of loopback pod addresses");
    }
    Ok(Ipv4Addr::new(127, 0, a as u8, (1 + n % 254) as u8))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn now_time() -> Value {
    serde_json::to_value(Time(Timestamp::now())).unwrap_or(Value::Null)
}

fn signal_group(pgid: i32, sig: Signal) {
    if pgid > 0 {
        // A group already gone (ESRCH) is what the caller wanted anyway.
        let _ = killpg(Pid::from_raw(pgid), sig);
    }
}

/// A running pod's worker, as the bridge tracks it.
struct PodHandle {
    namespace: String,
    name: String,
    /// Process-group ids of the pod's running containers.
    pgids: Arc<Mutex<Vec<i32>>>,
    /// `Some(grace)` asks the worker to terminate the pod.
    terminate: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

/// The NetworkPolicy rules last programmed into nftables.
#[derive(Default)]
struct PolicyState {
    applied: Option<Ruleset>,
    generation: u64,
}

struct Shared {
    client: Client,
    dir: PathBuf,
    bin: PathBuf,
    /// Per-pod network namespaces and policy enforcement; None in loopback mode.
    net: Option<PodNetwork>,
    host_ip: Ipv4Addr,
    ips: Mutex<HashMap<String, Ipv4Addr>>,
    netns: Mutex<HashMap<String, PathBuf>>,
    /// The pod uid each IP was given to (for `set_sticky_ips(false)`).
    ip_owner: Mutex<HashMap<String, String>>,
    /// Whether a recreated pod (same name, new uid) keeps its IP.
    sticky_ips: std::sync::atomic::AtomicBool,
    pods: Mutex<HashMap<String, PodHandle>>,
    finalizing: Mutex<HashSet<String>>,
    policy: Mutex<PolicyState>,
    /// Wakes the policy task when a pod gets an IP.
    policy_notify: Arc<Notify>,
    /// Pods (`namespace/name`) whose containers stay stopped: a node that is
    /// gone for good (see [`KubeletBridge::stop_pod_for_good`]).
    stopped_for_good: Mutex<HashSet<String>>,
}

impl Shared {
    /// The IP (and, with network namespaces, the namespace file) of pod
    /// `namespace/name`: assigned on first use, the same ever after.
    fn pod_net(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<(Ipv4Addr, Option<PathBuf>)> {
        let key = format!("{namespace}/{name}");
        let mut ips = lock(&self.ips);
        let same_pod = lock(&self.ip_owner).get(&key).map(String::as_str) == Some(uid);
        if let Some(ip) = ips.get(&key) {
            if same_pod || self.sticky_ips.load(Ordering::Relaxed) {
                lock(&self.ip_owner).insert(key.clone(), uid.to_string());
                return Ok((*ip, lock(&self.netns).get(&key).cloned()));
            }
            // A new pod of that name, and IPs are not sticky: a fresh network.
            tracing::info!(pod = %key, old_ip = %ip, "kubelet bridge: recreated pod gets a new IP");
            ips.remove(&key);
            lock(&self.netns).remove(&key);
            if let Some(net) = &self.net {
                net.forget(&key);
            }
        }
        lock(&self.ip_owner).insert(key.clone(), uid.to_string());
        let (ip, netns) = match &self.net {
            Some(net) => {
                let p = net.pod(&key)?;
                (p.ip, Some(p.path()))
            }
            None => (allocate_ip()?, None),
        };
        ips.insert(key.clone(), ip);
        if let Some(path) = &netns {
            lock(&self.netns).insert(key, path.clone());
        }
        self.policy_notify.notify_one();
        Ok((ip, netns))
    }

    /// The rules the policies, pods and namespaces given call for, over the
    /// pods of this bridge that have an IP.
    fn desired_rules(
        &self,
        pods: &[Arc<Pod>],
        policies: &[NetworkPolicy],
        namespaces: &[Namespace],
    ) -> Ruleset {
        let ips = lock(&self.ips).clone();
        let infos: Vec<PodInfo> = pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE_NAME))
            .filter_map(|p| {
                let key = format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref()?,
                    p.metadata.name.as_deref()?
                );
                Some(PodInfo::from_pod(p, *ips.get(&key)?))
            })
            .collect();
        let ns_labels: BTreeMap<String, netpol::Labels> = namespaces
            .iter()
            .filter_map(|n| {
                Some((
                    n.metadata.name.clone()?,
                    n.metadata.labels.clone().unwrap_or_default(),
                ))
            })
            .collect();
        Ruleset::compute(policies, &infos, &ns_labels)
    }

    fn kill_all(&self) {
        let mut pods = lock(&self.pods);
        for (_, h) in pods.drain() {
            for pgid in lock(&h.pgids).iter() {
                signal_group(*pgid, Signal::SIGKILL);
            }
            h.task.abort();
        }
    }
}

/// See the module documentation.
pub struct KubeletBridge {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeletBridge {
    /// Registers the node and starts binding and running pods. Pod files live
    /// under `<harness_dir>/kubelet`; `roomkeeper_bin` runs for `roomkeeper`.
    pub async fn start(
        client: Client,
        harness_dir: &Path,
        roomkeeper_bin: &Path,
    ) -> Result<KubeletBridge> {
        let dir = harness_dir.join("kubelet");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let net = match netns::unavailable_reason() {
            None => {
                let create = || {
                    netns::clean_stale();
                    PodNetwork::create()
                };
                match tokio::task::spawn_blocking(create).await? {
                    Ok(net) => Some(net),
                    Err(e) => {
                        loopback_warning(&format!("{e:#}"));
                        None
                    }
                }
            }
            Some(why) => {
                loopback_warning(&why);
                None
            }
        };
        let host_ip = match &net {
            Some(n) => n.host_ip(),
            None => Ipv4Addr::LOCALHOST,
        };
        let policy_notify = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            client: client.clone(),
            dir,
            bin: roomkeeper_bin.to_path_buf(),
            net,
            host_ip,
            ips: Mutex::new(HashMap::new()),
            ip_owner: Mutex::new(HashMap::new()),
            sticky_ips: std::sync::atomic::AtomicBool::new(true),
            netns: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            finalizing: Mutex::new(HashSet::new()),
            stopped_for_good: Mutex::new(HashSet::new()),
            policy: Mutex::new(PolicyState::default()),
            policy_notify: policy_notify.clone(),
        });
        // From here on, dropping the bridge removes the pod network.
        let mut bridge = KubeletBridge {
            shared: shared.clone(),
            tasks: Vec::new(),
        };
        register_node(&client, host_ip)
            .await
            .context("registering the harness node")?;

        bridge
            .tasks
            .push(tokio::spawn(heartbeat(client.clone(), host_ip)));

        let (reader, writer) = reflector::store::<Pod>();
        let notify = Arc::new(Notify::new());
        let stream = reflector::reflector(
            writer,
            watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff();
        let n = notify.clone();
        bridge.tasks.push(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(_) => n.notify_one(),
                    Err(e) => tracing::warn!(error = %e, "kubelet bridge: pod watch error"),
                }
            }
        }));
        if shared.net.is_some() {
            // The policy task has stores of its own: a store's readiness wakes
            // only one waiting task, so two tasks must not wait on one store.
            let pods = watch_store::<Pod>(&client, &policy_notify, &mut bridge.tasks);
            let policies = watch_store::<NetworkPolicy>(&client, &policy_notify, &mut bridge.tasks);
            let namespaces = watch_store::<Namespace>(&client, &policy_notify, &mut bridge.tasks);
            bridge.tasks.push(tokio::spawn(policy_loop(
                shared.clone(),
                pods,
                policies,
                namespaces,
                policy_notify,
            )));
        }
        bridge
            .tasks
            .push(tokio::spawn(sync_loop(shared.clone(), reader, notify)));
        tracing::info!(node = NODE_NAME, %host_ip, network_policy = shared.net.is_some(), "kubelet bridge started");
        Ok(bridge)
    }

    /// True when pods run in their own network namespaces and NetworkPolicy
    /// is enforced; false in loopback mode (not root, or `ip`/`nft` missing).
    pub fn enforces_network_policy(&self) -> bool {
        self.shared.net.is_some()
    }

    /// For tests that need NetworkPolicy enforced: true when it is; otherwise
    /// prints a loud SKIPPED and returns false, or panics when `CI` is set.
    pub fn network_policy_or_skip(&self, test: &str) -> bool {
        if self.enforces_network_policy() {
            return true;
        }
        let why = netns::unavailable_reason()
            .unwrap_or_else(|| "the pod bridge could not be created (see the log)".to_string());
        if crate::k8s::in_ci() {
            panic!("CI is set and the kubelet bridge cannot enforce NetworkPolicy: {why}");
        }
        eprintln!(
            "\n==================================================================\n\
             SKIPPED {test}: the kubelet bridge runs pods on loopback and does not\n\
             enforce NetworkPolicy ({why}); run as root with iproute2 and nftables\n\
             ==================================================================\n"
        );
        false
    }

    /// The host's address as pods see it (the bridge IP; 127.0.0.1 in
    /// loopback mode). Traffic from it is never filtered.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.shared.host_ip
    }

    /// The network namespace file of pod `namespace/name`, if it has one.
    pub fn pod_netns(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        lock(&self.shared.netns)
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    /// A TCP connection to `addr` made from inside pod `namespace/name`'s
    /// network namespace, so it comes from the pod IP and is subject to
    /// NetworkPolicy as the pod's own connections are (`addr` may be a pod of
    /// another bridge: the host routes it there). Needs network namespaces.
    pub async fn connect_from_pod(
        &self,
        namespace: &str,
        name: &str,
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> Result<std::net::TcpStream> {
        let path = self.pod_netns(namespace, name).ok_or_else(|| {
            anyhow!(
                "pod {namespace}/{name} has no network namespace (loopback mode, or not started)"
            )
        })?;
        // setns(2) switches only the calling thread: a fresh thread does it,
        // and the socket keeps the pod's namespace after the thread ends.
        tokio::task::spawn_blocking(move || -> Result<std::net::TcpStream> {
            let f = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            std::thread::scope(|scope| {
                scope
                    .spawn(|| -> Result<std::net::TcpStream> {
                        // Affects only this short-lived thread.
                        setns(&f, CloneFlags::CLONE_NEWNET)
                            .with_context(|| format!("setns {}", path.display()))?;
                        std::net::TcpStream::connect_timeout(&addr, timeout)
                            .with_context(|| format!("connecting to {addr}"))
                    })
                    .join()
                    .map_err(|_| anyhow!("the connecting thread panicked"))?
            })
        })
        .await?
    }

    /// The NetworkPolicy rules programmed into nftables last, if any.
    pub fn applied_rules(&self) -> Option<Ruleset> {
        lock(&self.shared.policy).applied.clone()
    }

    /// Waits until the rules in nftables are those the API server's current
    /// NetworkPolicies, Pods and Namespaces call for (listed fresh, not from
    /// the watch cache), so a test never races the policy watcher. Returns at
    /// once in loopback mode.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<()> {
        if self.shared.net.is_none() {
            return Ok(());
        }
        let client = &self.shared.client;
        let deadline = Instant::now() + timeout;
        loop {
            let lp = ListParams::default();
            let pods = Api::<Pod>::all(client.clone()).list(&lp).await?;
            let policies = Api::<NetworkPolicy>::all(client.clone()).list(&lp).await?;
            let namespaces = Api::<Namespace>::all(client.clone()).list(&lp).await?;
            let pods: Vec<Arc<Pod>> = pods.items.into_iter().map(Arc::new).collect();
            let want = self
                .shared
                .desired_rules(&pods, &policies.items, &namespaces.items);
            let have = self.applied_rules();
            if have.as_ref() == Some(&want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("NetworkPolicy rules not in sync after {timeout:?}: want {want:?}, have {have:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs the processes of pod `namespace/name` (a crash); the bridge
    /// restarts them per the pod's restartPolicy. False when not running here.
    pub fn kill_pod_process(&self, namespace: &str, name: &str) -> bool {
        let pods = lock(&self.shared.pods);
        let mut killed = false;
        for h in pods.values() {
            if h.namespace == namespace && h.name == name {
                for pgid in lock(&h.pgids).iter() {
                    signal_group(*pgid, Signal::SIGKILL);
                    killed = true;
                }
            }
        }
        killed
    }

    /// SIGKILLs the processes of pod `namespace/name` and never starts them
    /// again, whatever the restartPolicy (nor those of a pod recreated under
    /// that name): the machine is gone. The pod stays in the API, its IP
    /// refuses connections. False when not running here.
    pub fn stop_pod_for_good(&self, namespace: &str, name: &str) -> bool {
        lock(&self.shared.stopped_for_good).insert(format!("{namespace}/{name}"));
        self.kill_pod_process(namespace, name)
    }

    /// Sends `signal` to the processes of pod `namespace/name` (SIGSTOP: a
    /// hung node that neither answers nor dies; SIGCONT: it goes on). False
    /// when not running here.
    pub fn signal_pod_process(&self, namespace: &str, name: &str, signal: Signal) -> bool {
        let pods = lock(&self.shared.pods);
        let mut sent = false;
        for h in pods.values() {
            if h.namespace == namespace && h.name == name {
                for pgid in lock(&h.pgids).iter() {
                    signal_group(*pgid, signal);
                    sent = true;
                }
            }
        }
        sent
    }

    /// Whether a pod recreated under the same name keeps its IP (the default,
    /// D12) or gets a new one, as on most real clusters.
    pub fn set_sticky_ips(&self, sticky: bool) {
        self.shared.sticky_ips.store(sticky, Ordering::Relaxed);
    }

    /// The loopback IP of pod `namespace/name`, if one was assigned.
    pub fn pod_ip(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        lock(&self.shared.ips)
            .get(&format!("{namespace}/{name}"))
            .copied()
    }

    /// The log file of a container (appended across restarts and recreations).
    pub fn container_log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.shared
            .dir
            .join("pods")
            .join(namespace)
            .join(pod)
            .join(format!("{container}.log"))
    }

    /// The last `lines` lines of a container's log.
    pub fn container_log_tail(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        lines: usize,
    ) -> String {
        crate::k8s::tail_file(&self.container_log_path(namespace, pod, container), lines)
    }

    /// The host directory backing PVC `namespace/claim`.
    pub fn pvc_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        pvc_dir(&self.shared.dir, namespace, claim)
    }

    /// Stops the bridge, SIGKILLs every pod process (pods stay in the API)
    /// and removes the pod network.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.shared.kill_all();
        if let Some(net) = &self.shared.net {
            net.destroy();
        }
    }
}

impl Drop for KubeletBridge {
    fn drop(&mut self) {
        self.stop();
    }
}

fn loopback_warning(why: &str) {
    tracing::warn!(
        reason = why,
        "kubelet bridge: LOOPBACK MODE: no per-pod network namespaces; pods share the host \
         network on 127.0.100-199.x and NetworkPolicy is NOT enforced"
    );
    eprintln!(
        "kubelet bridge: LOOPBACK MODE ({why}): pods share the host network and \
         NetworkPolicy is NOT enforced"
    );
}

/// A reflector store of every `K` in the cluster whose changes wake `notify`.
fn watch_store<K>(
    client: &Client,
    notify: &Arc<Notify>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff();
    let n = notify.clone();
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => n.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, kind = %K::kind(&()), "kubelet bridge: watch error")
                }
            }
        }
    }));
    reader
}

/// Keeps the nftables table equal to what the NetworkPolicies call for:
/// recomputed on every policy, pod or namespace change (and every second),
/// replaced atomically when it differs from what was applied last.
async fn policy_loop(
    shared: Arc<Shared>,
    pods: Store<Pod>,
    policies: Store<NetworkPolicy>,
    namespaces: Store<Namespace>,
    notify: Arc<Notify>,
) {
    let Some(net) = shared.net.as_ref() else {
        return;
    };
    let mut failing = false;
    loop {
        let ready = pods.wait_until_ready().await.is_ok()
            && policies.wait_until_ready().await.is_ok()
            && namespaces.wait_until_ready().await.is_ok();
        if !ready {
            tracing::error!("kubelet bridge: a policy watch writer dropped; stopping enforcement");
            return;
        }
        let policy_list: Vec<NetworkPolicy> =
            policies.state().iter().map(|p| (**p).clone()).collect();
        let ns_list: Vec<Namespace> = namespaces.state().iter().map(|n| (**n).clone()).collect();
        let rules = shared.desired_rules(&pods.state(), &policy_list, &ns_list);
        let changed = lock(&shared.policy).applied.as_ref() != Some(&rules);
        if changed {
            match net.apply(&rules) {
                Ok(()) => {
                    let mut st = lock(&shared.policy);
                    st.generation += 1;
                    tracing::info!(
                        generation = st.generation,
                        isolated = rules.isolated.len(),
                        pairs = rules.any.len(),
                        port_rules = rules.ports.len(),
                        block_ranges = rules.blocks_any.len(),
                        block_port_rules = rules.blocks_ports.len(),
                        table = net.table(),
                        "kubelet bridge: NetworkPolicy rules programmed"
                    );
                    st.applied = Some(rules);
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %format!("{e:#}"), "kubelet bridge: programming NetworkPolicy rules failed; retrying");
                    }
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn pvc_dir(dir: &Path, namespace: &str, claim: &str) -> PathBuf {
    dir.join("pvc").join(namespace).join(claim)
}

// ---------------------------------------------------------------- node

fn node_status(host_ip: Ipv4Addr) -> Value {
    let now = now_time();
    let capacity =
        json!({"cpu": "64", "memory": "256Gi", "pods": "250", "ephemeral-storage": "100Gi"});
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": host_ip.to_string()},
            {"type": "Hostname", "address": NODE_NAME},
        ],
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "roomkeeper kubelet bridge is posting ready status",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
             "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
             "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": "roomkeeper-harness", "systemUUID": "roomkeeper-harness",
            "bootID": "roomkeeper-harness", "kernelVersion": "", "osImage": "roomkeeper kubelet bridge",
            "containerRuntimeVersion": "harness://local-processes", "kubeletVersion": crate::k8s::K8S_VERSION,
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
        },
    })
}

async fn register_node(client: &Client, host_ip: Ipv4Addr) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH,
                "topology.kubernetes.io/zone": NODE_ZONE,
                "topology.kubernetes.io/region": NODE_REGION,
            },
        },
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(e) if api_code(&e) == Some(409) => {}
        Err(e) => return Err(e).context("creating the Node"),
    }
    nodes
        .patch_status(
            NODE_NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": node_status(host_ip)})),
        )
        .await
        .context("posting the Node status")?;
    renew_lease(client).await
}

async fn renew_lease(client: &Client) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = serde_json::to_value(MicroTime(Timestamp::now()))?;
    let patch = json!({"spec": {"holderIdentity": NODE_NAME, "leaseDurationSeconds": 40, "renewTime": now}});
    match leases
        .patch(NODE_NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if api_code(&e) == Some(404) => {
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": NODE_NAME, "namespace": "kube-node-lease"},
                "spec": patch["spec"],
            }))?;
            leases
                .create(&PostParams::default(), &lease)
                .await
                .context("creating the node Lease")?;
            Ok(())
        }
        Err(e) => Err(e).context("renewing the node Lease"),
    }
}

async fn heartbeat(client: Client, host_ip: Ipv4Addr) {
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        if let Err(e) = renew_lease(&client).await {
            tracing::warn!(error = %format!("{e:#}"), "kubelet bridge: lease renewal failed");
        }
        let nodes: Api<Node> = Api::all(client.clone());
        let res = nodes
            .patch_status(
                NODE_NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": node_status(host_ip)})),
            )
            .await;
        if let Err(e) = res {
            if api_code(&e) == Some(404) {
                if let Err(e) = register_node(&client, host_ip).await {
                    tracing::warn!(error = %format!("{e:#}"), "kubelet bridge: re-registering the node failed");
                }
            } else {
                tracing::warn!(error = %e, "kubelet bridge: node heartbeat failed");
            }
        }
    }
}

// ---------------------------------------------------------------- scheduling and sync

/// Whether the bridge takes this pod: all containers run a roomkeeper image
/// and there are no init containers.
fn eligible(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    !spec.containers.is_empty()
        && spec
            .containers
            .iter()
            .all(|c| c.image.as_deref().unwrap_or("").contains("roomkeeper"))
        && spec.init_containers.as_ref().is_none_or(|i| i.is_empty())
}

async fn sync_loop(shared: Arc<Shared>, reader: Store<Pod>, notify: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if reader.wait_until_ready().await.is_err() {
            tracing::error!("kubelet bridge: pod watch writer dropped; stopping");
            return;
        }
        sync_once(&shared, &reader).await;
    }
}

async fn sync_once(shared: &Arc<Shared>, reader: &Store<Pod>) {
    let mut live = HashSet::new();
    for pod in reader.state() {
        let (Some(ns), Some(name), Some(uid)) = (
            pod.metadata.namespace.clone(),
            pod.metadata.name.clone(),
            pod.metadata.uid.clone(),
        ) else {
            continue;
        };
        live.insert(uid.clone());
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let deleting = pod.metadata.deletion_timestamp.is_some();
        match node.as_deref() {
            None | Some("") => {
                if !deleting && eligible(&pod) {
                    bind(&shared.client, &ns, &name).await;
                }
                continue;
            }
            Some(n) if n != NODE_NAME => continue,
            Some(_) => {}
        }
        let grace = deletion_grace(&pod);
        let has_worker = {
            let pods = lock(&shared.pods);
            if let Some(h) = pods.get(&uid) {
                if deleting {
                    h.terminate.send_if_modified(|t| {
                        let changed = t.is_none();
                        *t = Some(grace);
                        changed
                    });
                }
                true
            } else {
                false
            }
        };
        if has_worker {
            continue;
        }
        if deleting {
            // Bound here but never started (or already finished): final delete.
            if lock(&shared.finalizing).insert(uid.clone()) {
                let shared = shared.clone();
                tokio::spawn(async move {
                    final_delete(&shared.client, &ns, &name, &uid).await;
                    lock(&shared.finalizing).remove(&uid);
                });
            }
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if matches!(phase.as_deref(), Some("Succeeded") | Some("Failed")) {
            continue;
        }
        let (ip, netns) = match shared.pod_net(&ns, &name, &uid) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(pod = %format!("{ns}/{name}"), error = %e, "kubelet bridge: no pod IP");
                continue;
            }
        };
        let pgids = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = watch::channel(None);
        let worker = PodWorker::new(shared.clone(), (*pod).clone(), ip, netns, pgids.clone());
        let task = tokio::spawn(worker.run(rx));
        tracing::info!(pod = %format!("{ns}/{name}"), %uid, %ip, "kubelet bridge: starting pod");
        lock(&shared.pods).insert(
            uid,
            PodHandle {
                namespace: ns,
                name,
                pgids,
                terminate: tx,
                task,
            },
        );
    }
    // Pods that are gone from the API: kill what is left of them.
    let mut pods = lock(&shared.pods);
    let gone: Vec<String> = pods
        .keys()
        .filter(|u| !live.contains(*u))
        .cloned()
        .collect();
    for uid in gone {
        if let Some(h) = pods.remove(&uid) {
            for pgid in lock(&h.pgids).iter() {
                signal_group(*pgid, Signal::SIGKILL);
            }
            h.task.abort();
            tracing::info!(pod = %format!("{}/{}", h.namespace, h.name), %uid, "kubelet bridge: pod gone");
        }
    }
}

fn deletion_grace(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0) as u64;
    Duration::from_secs(secs).min(MAX_GRACE)
}

async fn bind(client: &Client, ns: &str, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns},
        "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
    });
    match pods
        .create_subresource::<Value, Value>("binding", name, &PostParams::default(), &binding)
        .await
    {
        Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), "kubelet bridge: bound"),
        Err(e) if api_code(&e) == Some(409) || api_code(&e) == Some(404) => {
            tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "kubelet bridge: bind raced");
        }
        Err(e) => {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "kubelet bridge: bind failed")
        }
    }
}

/// The kubelet's final delete (grace 0, only this incarnation by uid),
/// retried until it succeeds or the pod is gone.
async fn final_delete(client: &Client, ns: &str, name: &str, uid: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let mut wait = Duration::from_millis(200);
    for _ in 0..50 {
        match pods.delete(name, &dp).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{ns}/{name}"), "kubelet bridge: pod deleted");
                return;
            }
            Err(e) if api_code(&e) == Some(404) || api_code(&e) == Some(409) => return,
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "kubelet bridge: final delete failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

// ---------------------------------------------------------------- pod worker

#[derive(Clone, Debug, PartialEq)]
enum Waiting {
    Creating,
    ConfigError(String),
    CrashLoop(String),
}

struct ContainerRt {
    spec: Container,
    child: Option<Child>,
    pid: i32,
    restart_count: i32,
    started_once: bool,
    started_at: Option<Value>,
    last_terminated: Option<Value>,
    waiting: Option<Waiting>,
    /// Exited and will not restart (restartPolicy).
    done: Option<i32>,
    next_start: Instant,
    backoff: Duration,
    ready: bool,
    probe_failures: i32,
    next_probe: Instant,
    warned_probe: bool,
}

struct PodWorker {
    shared: Arc<Shared>,
    pod: Pod,
    ns: String,
    name: String,
    uid: String,
    ip: Ipv4Addr,
    /// The pod's network namespace file; None in loopback mode.
    netns: Option<PathBuf>,
    pgids: Arc<Mutex<Vec<i32>>>,
    dir: PathBuf,
    containers: Vec<ContainerRt>,
    start_time: Value,
    conditions: BTreeMap<&'static str, (bool, Value)>,
    last_status: Option<Value>,
    /// The kubeconfig of the pod's ServiceAccount, given to its containers
    /// as `KUBECONFIG` (see [`PodWorker::serve_api`]).
    api_kubeconfig: Option<PathBuf>,
}

impl PodWorker {
    fn new(
        shared: Arc<Shared>,
        pod: Pod,
        ip: Ipv4Addr,
        netns: Option<PathBuf>,
        pgids: Arc<Mutex<Vec<i32>>>,
    ) -> Self {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = shared.dir.join("pods").join(&ns).join(&name);
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|spec| ContainerRt {
                spec,
                child: None,
                pid: 0,
                restart_count: 0,
                started_once: false,
                started_at: None,
                last_terminated: None,
                waiting: Some(Waiting::Creating),
                done: None,
                next_start: Instant::now(),
                backoff: Duration::from_secs(1),
                ready: false,
                probe_failures: 0,
                next_probe: Instant::now(),
                warned_probe: false,
            })
            .collect();
        Self {
            shared,
            pod,
            ns,
            name,
            uid,
            ip,
            netns,
            pgids,
            dir,
            containers,
            start_time: now_time(),
            conditions: BTreeMap::new(),
            last_status: None,
            api_kubeconfig: None,
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    async fn run(mut self, mut terminate: watch::Receiver<Option<Duration>>) {
        if let Err(e) = fs::create_dir_all(&self.dir) {
            tracing::error!(pod = %self.key(), error = %e, "kubelet bridge: cannot create the pod dir");
        }
        self.wait_for_policy().await;
        // Held for the pod's life: the API server's address inside its network.
        let _api_forwarder = self.serve_api().await;
        loop {
            let requested = *terminate.borrow();
            if let Some(grace) = requested {
                self.terminate(grace).await;
                return;
            }
            self.reap();
            self.start_due().await;
            self.probe_due().await;
            self.publish_pids();
            self.report().await;
            tokio::select! {
                _ = terminate.changed() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// What a kubelet gives a pod that mounts its ServiceAccount's token, so
    /// that a controller (the operator installed by the chart) runs as a pod
    /// under its own RBAC: a token from the TokenRequest API for the pod's
    /// ServiceAccount, in a kubeconfig named by `KUBECONFIG` (the harness's
    /// server and CA), and, with network namespaces, the API server's
    /// loopback address served inside the pod's namespace by a forwarder to
    /// the host's. Nothing when the pod opts out
    /// (`automountServiceAccountToken: false`) or the bridge runs without the
    /// harness's admin kubeconfig; a failure is logged and the pod runs
    /// without API access, as a pod whose token cannot be mounted.
    async fn serve_api(&mut self) -> Option<AbortOnDrop> {
        let spec = self.pod.spec.as_ref()?;
        if spec.automount_service_account_token == Some(false) {
            return None;
        }
        let admin = self.shared.dir.parent()?.join("admin.kubeconfig");
        if !admin.is_file() {
            return None;
        }
        let sa = spec
            .service_account_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let out = self.dir.join("serviceaccount.kubeconfig");
        match self.api_access(&admin, &sa, &out).await {
            Ok(forwarder) => {
                self.api_kubeconfig = Some(out);
                forwarder
            }
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %format!("{e:#}"), "kubelet bridge: no API access for the pod");
                None
            }
        }
    }

    async fn api_access(&self, admin: &Path, sa: &str, out: &Path) -> Result<Option<AbortOnDrop>> {
        crate::k8s::write_service_account_kubeconfig(&self.shared.client, admin, &self.ns, sa, out)
            .await?;
        let Some(netns) = &self.netns else {
            // Loopback mode: the pod shares the host's network.
            return Ok(None);
        };
        let server = crate::k8s::kubeconfig_server(admin)?;
        let addr: std::net::SocketAddr = server
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("the API server address {server}"))?;
        let listener = listen_in_netns(netns.clone(), addr).await?;
        Ok(Some(AbortOnDrop(tokio::spawn(forward_tcp(listener, addr)))))
    }

    /// With NetworkPolicy enforced, waits (up to 10 s) until the programmed
    /// rules cover this pod's IP before its containers first start, as a CNI
    /// sets up a pod's network before its containers run.
    async fn wait_for_policy(&self) {
        if self.shared.net.is_none() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let covered = lock(&self.shared.policy)
                .applied
                .as_ref()
                .is_some_and(|r| r.pods.contains(&self.ip));
            if covered {
                return;
            }
            if Instant::now() > deadline {
                tracing::warn!(pod = %self.key(), ip = %self.ip, "kubelet bridge: NetworkPolicy rules do not cover the pod yet; starting it anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn publish_pids(&self) {
        let pids: Vec<i32> = self
            .containers
            .iter()
            .filter(|c| c.child.is_some())
            .map(|c| c.pid)
            .collect();
        *lock(&self.pgids) = pids;
    }

    /// Collects exited containers and schedules restarts.
    fn reap(&mut self) {
        let policy = self.restart_policy().to_string();
        let key = self.key();
        for c in &mut self.containers {
            let Some(child) = c.child.as_mut() else {
                continue;
            };
            let status = match child.try_wait() {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(pod = %key, container = %c.spec.name, error = %e, "kubelet bridge: wait failed");
                    continue;
                }
            };
            c.child = None;
            c.ready = false;
            c.probe_failures = 0;
            use std::os::unix::process::ExitStatusExt;
            let code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            let reason = if code == 0 { "Completed" } else { "Error" };
            c.last_terminated = Some(json!({"terminated": {
                "exitCode": code, "reason": reason, "startedAt": c.started_at,
                "finishedAt": now_time(), "containerID": format!("harness://{}", c.pid),
            }}));
            tracing::warn!(pod = %key, container = %c.spec.name, code, "kubelet bridge: container exited");
            let restart = match policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            };
            if restart {
                c.waiting = Some(Waiting::CrashLoop(format!(
                    "back-off {}s restarting failed container {}",
                    c.backoff.as_secs(),
                    c.spec.name
                )));
                c.next_start = Instant::now() + c.backoff;
                c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
            } else {
                c.waiting = None;
                c.done = Some(code);
            }
        }
    }

    async fn start_due(&mut self) {
        if lock(&self.shared.stopped_for_good).contains(&self.key()) {
            return;
        }
        let now = Instant::now();
        for i in 0..self.containers.len() {
            let c = &self.containers[i];
            if c.child.is_some() || c.done.is_some() || now < c.next_start {
                continue;
            }
            match self.spawn_container(i).await {
                Ok((child, pid)) => {
                    let key = self.key();
                    let c = &mut self.containers[i];
                    if c.started_once {
                        c.restart_count += 1;
                    }
                    c.started_once = true;
                    c.child = Some(child);
                    c.pid = pid;
                    c.started_at = Some(now_time());
                    c.waiting = None;
                    c.next_probe = Instant::now()
                        + Duration::from_secs(
                            c.spec
                                .readiness_probe
                                .as_ref()
                                .and_then(|p| p.initial_delay_seconds)
                                .unwrap_or(0)
                                .max(0) as u64,
                        );
                    tracing::info!(pod = %key, container = %c.spec.name, pid, restarts = c.restart_count, "kubelet bridge: container started");
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    tracing::warn!(pod = %self.key(), container = %self.containers[i].spec.name, error = %msg, "kubelet bridge: cannot start container");
                    let c = &mut self.containers[i];
                    c.waiting = Some(Waiting::ConfigError(msg));
                    c.next_start = Instant::now() + Duration::from_secs(2);
                }
            }
        }
        // A container that stayed up long enough earns a fresh backoff.
        for c in &mut self.containers {
            if c.child.is_some() && c.backoff > Duration::from_secs(1) {
                if let Some(t) = c.next_start.checked_add(Duration::from_secs(30)) {
                    if Instant::now() > t {
                        c.backoff = Duration::from_secs(1);
                    }
                }
            }
        }
    }

    async fn probe_due(&mut self) {
        let ip = self.ip;
        let key = self.key();
        for c in &mut self.containers {
            if c.child.is_none() {
                continue;
            }
            let Some(probe) = c.spec.readiness_probe.clone() else {
                c.ready = true;
                continue;
            };
            if Instant::now() < c.next_probe {
                continue;
            }
            c.next_probe = Instant::now() + PROBE_EVERY;
            let ok = match run_probe(&probe, &c.spec, ip).await {
                Ok(ok) => ok,
                Err(e) => {
                    if !c.warned_probe {
                        tracing::warn!(pod = %key, container = %c.spec.name, error = %e, "kubelet bridge: unsupported readiness probe; the container counts as ready");
                        c.warned_probe = true;
                    }
                    true
                }
            };
            if ok {
                c.probe_failures = 0;
                c.ready = true;
            } else {
                c.probe_failures += 1;
                if c.probe_failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                    c.ready = false;
                }
            }
        }
    }

    fn condition(&mut self, kind: &'static str, value: bool) -> Value {
        let entry = self
            .conditions
            .entry(kind)
            .or_insert_with(|| (value, now_time()));
        if entry.0 != value {
            *entry = (value, now_time());
        }
        json!({
            "type": kind,
            "status": if value { "True" } else { "False" },
            "lastProbeTime": null,
            "lastTransitionTime": entry.1,
        })
    }

    fn status(&mut self) -> Value {
        let all_ready = self.containers.iter().all(|c| c.ready && c.child.is_some());
        let all_done = self.containers.iter().all(|c| c.done.is_some());
        let phase = if all_done {
            if self.containers.iter().all(|c| c.done == Some(0)) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if self.containers.iter().any(|c| c.started_once) {
            "Running"
        } else {
            "Pending"
        };
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(|c| {
                let state = if c.child.is_some() {
                    json!({"running": {"startedAt": c.started_at}})
                } else if let Some(w) = &c.waiting {
                    let (reason, message) = match w {
                        Waiting::Creating => ("ContainerCreating", String::new()),
                        Waiting::ConfigError(m) => ("CreateContainerConfigError", m.clone()),
                        Waiting::CrashLoop(m) => ("CrashLoopBackOff", m.clone()),
                    };
                    json!({"waiting": {"reason": reason, "message": message}})
                } else {
                    c.last_terminated
                        .clone()
                        .unwrap_or_else(|| json!({"waiting": {"reason": "ContainerCreating"}}))
                };
                let mut s = json!({
                    "name": c.spec.name,
                    "image": c.spec.image.clone().unwrap_or_default(),
                    "imageID": format!("harness://{}", c.spec.image.clone().unwrap_or_default()),
                    "ready": c.ready && c.child.is_some(),
                    "restartCount": c.restart_count,
                    "started": c.child.is_some(),
                    "state": state,
                });
                if c.child.is_some() {
                    s["containerID"] = json!(format!("harness://{}", c.pid));
                }
                if let (Some(t), true) =
                    (&c.last_terminated, c.child.is_some() || c.waiting.is_some())
                {
                    s["lastState"] = t.clone();
                }
                s
            })
            .collect();
        let conditions = vec![
            self.condition("PodScheduled", true),
            self.condition("Initialized", true),
            self.condition("ContainersReady", all_ready),
            self.condition("Ready", all_ready),
        ];
        let host_ip = self.shared.host_ip.to_string();
        json!({
            "phase": phase,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": self.ip.to_string(),
            "podIPs": [{"ip": self.ip.to_string()}],
            "startTime": self.start_time,
            "conditions": conditions,
            "containerStatuses": statuses,
        })
    }

    /// Patches the status subresource when it changed.
    async fn report(&mut self) {
        let status = self.status();
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.ns);
        let patch = json!({"metadata": {"uid": self.uid}, "status": status});
        match pods
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::debug!(pod = %self.key(), "kubelet bridge: status updated");
                self.last_status = Some(status);
            }
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %e, "kubelet bridge: status update failed; retrying")
            }
        }
    }

    async fn terminate(&mut self, grace: Duration) {
        tracing::info!(pod = %self.key(), grace_s = grace.as_secs(), "kubelet bridge: terminating pod");
        for c in &self.containers {
            if c.child.is_some() {
                signal_group(c.pid, Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            let mut running = false;
            for c in &mut self.containers {
                if let Some(child) = c.child.as_mut() {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => c.child = None,
                        Ok(None) => running = true,
                    }
                }
            }
            if !running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for c in &mut self.containers {
            if let Some(mut child) = c.child.take() {
                tracing::warn!(pod = %format!("{}/{}", self.ns, self.name), container = %c.spec.name, "kubelet bridge: grace period over; SIGKILL");
                signal_group(c.pid, Signal::SIGKILL);
                let _ = child.kill().await;
            }
        }
        self.publish_pids();
        final_delete(&self.shared.client, &self.ns, &self.name, &self.uid).await;
    }

    // ------------------------------------------------------------ container setup

    async fn spawn_container(&self, i: usize) -> Result<(Child, i32)> {
        let c = &self.containers[i].spec;
        let mounts = self.prepare_volumes(c).await?;
        let env = self.resolve_env(c).await?;
        let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut argv: Vec<String> = match &c.command {
            Some(cmd) if !cmd.is_empty() => cmd.iter().map(|a| expand(a, &vars)).collect(),
            // The image's entrypoint is the roomkeeper binary.
            _ => vec!["roomkeeper".to_string()],
        };
        argv.extend(c.args.iter().flatten().map(|a| expand(a, &vars)));
        let argv: Vec<String> = argv.iter().map(|a| rewrite_arg(a, &mounts)).collect();
        let env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| {
                let v = rewrite_path(&v, &mounts).unwrap_or(v);
                (k, v)
            })
            .collect();
        let mut env = env;
        if let Some(kc) = &self.api_kubeconfig {
            if !env.iter().any(|(k, _)| k == "KUBECONFIG") {
                env.push(("KUBECONFIG".to_string(), kc.display().to_string()));
            }
        }
        let program = if argv[0] == "roomkeeper" || argv[0].ends_with("/roomkeeper") {
            self.shared.bin.clone()
        } else {
            PathBuf::from(&argv[0])
        };
        let workdir = c
            .working_dir
            .as_deref()
            .and_then(|w| rewrite_path(w, &mounts))
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.clone());
        let log_path = self.dir.join(format!("{}.log", c.name));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let err = log.try_clone()?;
        let mut cmd = Command::new(&program);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOSTNAME", &self.name)
            .envs(env)
            .current_dir(&workdir)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        // The container joins its pod's network namespace between fork and
        // exec; the namespace file stays open until spawn returns.
        let netns = match &self.netns {
            Some(path) => {
                Some(fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)
            }
            None => None,
        };
        if let Some(f) = &netns {
            use std::os::fd::AsRawFd;
            let fd = f.as_raw_fd();
            // SAFETY: the closure only calls setns(2), which is
            // async-signal-safe, on an fd that is open in the child (the
            // namespace file stays open until spawn returns).
            unsafe {
                cmd.pre_exec(move || {
                    let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                    setns(fd, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {} {:?}", program.display(), &argv[1..]))?;
        drop(netns);
        let pid = child
            .id()
            .map(|p| p as i32)
            .ok_or_else(|| anyhow!("the process exited before its pid was read"))?;
        Ok((child, pid))
    }

    /// Materializes the pod's volumes; returns (mountPath, host dir) of each
    /// of the container's mounts, longest mountPath first.
    async fn prepare_volumes(&self, c: &Container) -> Result<Vec<(String, PathBuf)>> {
        let volumes = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let v = volumes
                .iter()
                .find(|v| v.name == m.name)
                .ok_or_else(|| anyhow!("volumeMount {} names no volume", m.name))?;
            let host = if let Some(pvc) = &v.persistent_volume_claim {
                pvc_dir(&self.shared.dir, &self.ns, &pvc.claim_name)
            } else if v.empty_dir.is_some() {
                self.shared
                    .dir
                    .join("emptydir")
                    .join(&self.uid)
                    .join(&v.name)
            } else if let Some(cm) = &v.config_map {
                let dir = self.dir.join("volumes").join(&v.name);
                let api: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), &self.ns);
                let data = match api.get_opt(&cm.name).await? {
                    Some(o) => string_map(
                        o.data,
                        o.binary_data
                            .map(|b| b.into_iter().map(|(k, v)| (k, v.0)).collect()),
                    ),
                    None if cm.optional == Some(true) => BTreeMap::new(),
                    None => bail!("configmap {} not found", cm.name),
                };
                write_volume(&dir, &data, cm.items.as_deref().map(key_paths))?;
                dir
            } else if let Some(sec) = &v.secret {
                let dir = self.dir.join("volumes").join(&v.name);
                let name = sec.secret_name.clone().unwrap_or_default();
                let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &self.ns);
                let data = match api.get_opt(&name).await? {
                    Some(o) => string_map(
                        o.string_data,
                        o.data
                            .map(|b| b.into_iter().map(|(k, v)| (k, v.0)).collect()),
                    ),
                    None if sec.optional == Some(true) => BTreeMap::new(),
                    None => bail!("secret {name} not found"),
                };
                write_volume(&dir, &data, sec.items.as_deref().map(key_paths))?;
                dir
            } else {
                // Other volume types (projected service-account tokens, ...)
                // are not materialized: an empty directory stands in.
                self.dir.join("volumes").join(&v.name)
            };
            fs::create_dir_all(&host).with_context(|| format!("creating {}", host.display()))?;
            let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => {
                    let p = host.join(sub);
                    fs::create_dir_all(&p)?;
                    p
                }
                None => host,
            };
            mounts.push((m.mount_path.trim_end_matches('/').to_string(), host));
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
        Ok(mounts)
    }

    /// The container's environment, in Kubernetes order: envFrom, then env
    /// (each value `$(VAR)`-expanded with what precedes it).
    async fn resolve_env(&self, c: &Container) -> Result<Vec<(String, String)>> {
        let mut env: Vec<(String, String)> = Vec::new();
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
            if let Some(e) = env.iter_mut().find(|(n, _)| *n == k) {
                e.1 = v;
            } else {
                env.push((k, v));
            }
        };
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(r) = &from.config_map_ref {
                let api: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), &self.ns);
                match api.get_opt(&r.name).await? {
                    Some(o) => {
                        for (k, v) in o.data.unwrap_or_default() {
                            set(&mut env, format!("{prefix}{k}"), v);
                        }
                    }
                    None if r.optional == Some(true) => {}
                    None => bail!("configmap {} not found", r.name),
                }
            }
            if let Some(r) = &from.secret_ref {
                let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &self.ns);
                match api.get_opt(&r.name).await? {
                    Some(o) => {
                        for (k, v) in o.data.unwrap_or_default() {
                            set(
                                &mut env,
                                format!("{prefix}{k}"),
                                String::from_utf8_lossy(&v.0).into_owned(),
                            );
                        }
                    }
                    None if r.optional == Some(true) => {}
                    None => bail!("secret {} not found", r.name),
                }
            }
        }
        for e in c.env.iter().flatten() {
            let value = if let Some(v) = &e.value {
                let vars: HashMap<&str, &str> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                expand(v, &vars)
            } else if let Some(from) = &e.value_from {
                if let Some(f) = &from.field_ref {
                    self.field(&f.field_path)?
                } else if let Some(s) = &from.secret_key_ref {
                    let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &self.ns);
                    let found = api
                        .get_opt(&s.name)
                        .await?
                        .and_then(|o| o.data)
                        .and_then(|d| {
                            d.get(&s.key)
                                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                        });
                    match found {
                        Some(v) => v,
                        None if s.optional == Some(true) => continue,
                        None => bail!("secret key {}/{} not found", s.name, s.key),
                    }
                } else if let Some(s) = &from.config_map_key_ref {
                    let api: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), &self.ns);
                    let found = api
                        .get_opt(&s.name)
                        .await?
                        .and_then(|o| o.data)
                        .and_then(|d| d.get(&s.key).cloned());
                    match found {
                        Some(v) => v,
                        None if s.optional == Some(true) => continue,
                        None => bail!("configmap key {}/{} not found", s.name, s.key),
                    }
                } else {
                    bail!(
                        "env {}: unsupported valueFrom (resourceFieldRef/fileKeyRef)",
                        e.name
                    )
                }
            } else {
                String::new()
            };
            set(&mut env, e.name.clone(), value);
        }
        Ok(env)
    }

    /// A downward-API field.
    fn field(&self, path: &str) -> Result<String> {
        let md = &self.pod.metadata;
        let spec = self.pod.spec.as_ref();
        let from_map = |m: &Option<BTreeMap<String, String>>, prefix: &str| {
            let key = path
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix("['"))
                .and_then(|r| r.strip_suffix("']"))?;
            m.as_ref().and_then(|m| m.get(key)).cloned()
        };
        Ok(match path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.ns.clone(),
            "metadata.uid" => self.uid.clone(),
            "status.podIP" | "status.podIPs" => self.ip.to_string(),
            "status.hostIP" | "status.hostIPs" => self.shared.host_ip.to_string(),
            "spec.nodeName" => NODE_NAME.to_string(),
            "spec.serviceAccountName" => spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            p if p.starts_with("metadata.labels[") => {
                from_map(&md.labels, "metadata.labels").unwrap_or_default()
            }
            p if p.starts_with("metadata.annotations[") => {
                from_map(&md.annotations, "metadata.annotations").unwrap_or_default()
            }
            other => bail!("unsupported fieldRef {other}"),
        })
    }
}

fn string_map(
    text: Option<BTreeMap<String, String>>,
    bytes: Option<BTreeMap<String, Vec<u8>>>,
) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = bytes.unwrap_or_default();
    for (k, v) in text.unwrap_or_default() {
        out.insert(k, v.into_bytes());
    }
    out
}

fn key_paths(items: &[k8s_openapi::api::core::v1::KeyToPath]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|i| (i.key.clone(), i.path.clone()))
        .collect()
}

/// Rewrites a configMap/secret volume directory: one file per key (or per
/// listed item).
fn write_volume(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<Vec<(String, String)>>,
) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files: Vec<(String, String)> = match items {
        Some(items) => items,
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, rel) in files {
        let Some(bytes) = data.get(&key) else {
            bail!("key {key} not found for the volume at {}", dir.display());
        };
        if rel.split('/').any(|p| p == "..") {
            bail!("volume item path {rel} escapes the volume");
        }
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Aborts its task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A listener on `addr` inside the network namespace `netns`: bound by a
/// thread of its own that joins the namespace and then exits (a socket stays
/// in the namespace it was created in), so no thread of the runtime ever
/// changes namespace.
async fn listen_in_netns(
    netns: PathBuf,
    addr: std::net::SocketAddr,
) -> Result<std::net::TcpListener> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let bound = (|| -> Result<std::net::TcpListener> {
            let f =
                fs::File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
            setns(&f, CloneFlags::CLONE_NEWNET).context("setns into the pod's network")?;
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding {addr} in {}", netns.display()))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })();
        let _ = tx.send(bound);
    });
    rx.await.context("the namespace thread died")?
}

/// Forwards every connection accepted on `listener` to `to` (in the host's
/// network), byte for byte.
async fn forward_tcp(listener: std::net::TcpListener, to: std::net::SocketAddr) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "kubelet bridge: API forwarder");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((mut inbound, _)) => {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Kubernetes `$(VAR)` expansion: defined variables are replaced, `$$` is an
/// escaped `$`, anything else stays as written.
pub fn expand(s: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    if let Some(v) = vars.get(name) {
                        out.push_str(v);
                        i += 3 + end;
                        continue;
                    }
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

/// `value` with a mountPath prefix replaced by its host directory.
fn rewrite_path(value: &str, mounts: &[(String, PathBuf)]) -> Option<String> {
    for (mp, host) in mounts {
        if mp.is_empty() {
            continue;
        }
        if let Some(rest) = value.strip_prefix(mp.as_str()) {
            if rest.is_empty() || rest.starts_with('/') {
                return Some(format!("{}{rest}", host.display()));
            }
        }
    }
    None
}

/// An argument with a mountPath rewritten, also in `--flag=/mount/path` form.
fn rewrite_arg(arg: &str, mounts: &[(String, PathBuf)]) -> String {
    if let Some(r) = rewrite_path(arg, mounts) {
        return r;
    }
    if let Some((flag, value)) = arg.split_once('=') {
        if let Some(r) = rewrite_path(value, mounts) {
            return format!("{flag}={r}");
        }
    }
    arg.to_string()
}

/// Runs one readiness probe against the pod IP: Ok(passed), or Err for a
/// probe kind the bridge does not support.
async fn run_probe(probe: &Probe, c: &Container, ip: Ipv4Addr) -> Result<bool> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let port_of = |p: &IntOrString| -> Result<u16> {
        match p {
            IntOrString::Int(n) => u16::try_from(*n).context("probe port out of range"),
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| {
                    anyhow!("probe names port {name}, which the container does not declare")
                }),
        }
    };
    if let Some(h) = &probe.http_get {
        if h.scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            bail!("HTTPS readiness probes are not supported");
        }
        let port = port_of(&h.port)?;
        let host = h.host.clone().unwrap_or_else(|| ip.to_string());
        let path = h.path.clone().unwrap_or_else(|| "/".to_string());
        let mut req = http::Request::get(path)
            .header(http::header::HOST, format!("{host}:{port}"))
            .header(http::header::USER_AGENT, "kube-probe/1.37")
            .header(http::header::ACCEPT, "*/*");
        for hh in h.http_headers.iter().flatten() {
            req = req.header(hh.name.as_str(), hh.value.as_str());
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .context("probe request")?;
        let fut = async {
            let s = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            crate::http_client::exchange(hyper_util::rt::TokioIo::new(s), req).await
        };
        return Ok(match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(res)) => (200..400).contains(&res.status),
            _ => false,
        });
    }
    if let Some(t) = &probe.tcp_socket {
        let port = port_of(&t.port)?;
        let host = t.host.clone().unwrap_or_else(|| ip.to_string());
        let fut = tokio::net::TcpStream::connect((host.as_str(), port));
        return Ok(matches!(
            tokio::time::timeout(timeout, fut).await,
            Ok(Ok(_))
        ));
    }
    bail!("only httpGet and tcpSocket readiness probes are supported")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars: HashMap<&str, &str> = [("POD_IP", "127.0.100.1"), ("N", "3")].into();
        assert_eq!(expand("$(POD_IP):7101", &vars), "127.0.100.1:7101");
        assert_eq!(expand("$$(POD_IP)", &vars), "$(POD_IP)");
        assert_eq!(expand("$(MISSING)-$(N)", &vars), "$(MISSING)-3");
        assert_eq!(expand("a$b$", &vars), "a$b$");
        assert_eq!(expand("ü$(N)", &vars), "ü3");
    }

    #[test]
    fn mount_paths_are_rewritten() {
        let mounts = vec![
            ("/var/lib/rk/keys".to_string(), PathBuf::from("/h/keys")),
            ("/var/lib/rk".to_string(), PathBuf::from("/h/data")),
        ];
        assert_eq!(rewrite_arg("/var/lib/rk", &mounts), "/h/data");
        assert_eq!(rewrite_arg("/var/lib/rk/node-1", &mounts), "/h/data/node-1");
        assert_eq!(rewrite_arg("/var/lib/rk/keys/k", &mounts), "/h/keys/k");
        assert_eq!(
            rewrite_arg("--data-dir=/var/lib/rk/x", &mounts),
            "--data-dir=/h/data/x"
        );
        assert_eq!(rewrite_arg("/var/lib/rkx", &mounts), "/var/lib/rkx");
        assert_eq!(rewrite_arg("127.0.0.1:80", &mounts), "127.0.0.1:80");
    }

    #[test]
    fn loopback_ips_are_distinct() {
        let a = allocate_ip().unwrap();
        let b = allocate_ip().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.octets()[0], 127);
        assert!((100..200).contains(&a.octets()[2]));
    }
}
