//! The local binding's actuators: order-store nodes as local processes, one
//! loopback address range per region (`127.0.<region>.<node>`), WAN latency
//! between regions injected in the nodes' transport.
//!
//! Raft node ids are handed out once and never reused, even when a node's data
//! is wiped and it is replaced.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use roomkeeper_api::NodeInfo;
use roomkeeper_api::{NodeStatus, SalesGate, SalesGateReply};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use roomkeeper_control::http::JsonClient;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The cluster id of a local cluster, in its frames and certificates.
pub const CLUSTER_ID: &str = "local";

/// Runs `roomkeeper raft-certs <args>` (the same binary as the nodes).
fn run_certs(bin: &std::path::Path, what: &str, args: &[&str]) -> Result<(), LocalError> {
    let out = std::process::Command::new(bin)
        .arg("raft-certs")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LocalError::Certs {
            what: what.to_string(),
            message: format!("{}: {e}", bin.display()),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LocalError::Certs {
            what: what.to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The host part of `host:port` (`[v6]:port` keeps its brackets off).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Errors of the local binding.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start node {id}: {source}")]
    Spawn { id: u64, source: std::io::Error },
    #[error("cannot make Raft certificates ({what}): {message}")]
    Certs { what: String, message: String },
    #[error("cannot set up the TLS client of the control loop and buyers: {0}")]
    ClientTls(#[from] roomkeeper_control::http::TlsSetupError),
    #[error("node {id} did not become healthy within {waited:?} (see {log})")]
    NotHealthy {
        id: u64,
        waited: Duration,
        log: String,
    },
    #[error("admin call to node {id} failed: {message}")]
    Admin { id: u64, message: String },
    #[error("no leader within {0:?}")]
    NoLeader(Duration),
    #[error("node {0}'s host is down (simulated outage): it cannot be started")]
    HostDown(u64),
    #[error("unknown node {0}")]
    UnknownNode(u64),
    #[error("unknown region {0}")]
    UnknownRegion(String),
}

/// A region and how many voters it starts with.
#[derive(Debug, Clone)]
pub struct RegionSpec {
    pub name: String,
    pub voters: usize,
}

/// How to run the local cluster.
#[derive(Debug, Clone)]
pub struct LocalClusterConfig {
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    pub regions: Vec<RegionSpec>,
    pub base_port: u16,
    pub wan_latency_ms: u64,
    pub client_token: String,
    pub admin_token: String,
}

/// One node process.
#[derive(Debug)]
pub struct LocalNode {
    pub id: u64,
    pub info: NodeInfo,
    pub child: Option<Child>,
    pub starts: u32,
}

/// Faults a drill injects into one node, on top of the WAN latency of the
/// topology. Applied through the node's test fault hooks (`/admin/faults`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFaults {
    /// Raft traffic to and from these peers is dropped (a partition).
    pub isolated_peers: std::collections::BTreeSet<u64>,
    /// Every log fsync takes this much longer (a stalled disk).
    pub fsync_delay_ms: u64,
    /// Latency to these peers instead of the topology's WAN latency.
    pub peer_delay_ms: BTreeMap<u64, u64>,
    /// Share (0–100) of Raft messages to these peers that are lost.
    pub peer_loss_percent: BTreeMap<u64, u8>,
}

impl NodeFaults {
    pub fn is_empty(&self) -> bool {
        *self == NodeFaults::default()
    }
}

/// The local cluster.
pub struct LocalCluster {
    pub cfg: LocalClusterConfig,
    pub nodes: BTreeMap<u64, LocalNode>,
    next_id: u64,
    pub http: JsonClient,
    key_file: PathBuf,
    /// The cluster's throwaway Raft CA (`ca.crt`, `ca.key`); node
    /// certificates are issued from it into `node-<id>-tls/` at each start.
    ca_dir: PathBuf,
    /// The operator's client certificate and the CA (`ca.crt`, `tls.crt`,
    /// `tls.key`): what [`Self::http`] presents, and what a person's `curl`
    /// needs to call a demo node (`--cacert`, `--cert`, `--key`).
    pub operator_dir: PathBuf,
    /// Nodes whose host is down (a simulated outage): they cannot be started
    /// until the instant given, or ever with `None`.
    blocked: BTreeMap<u64, Option<Instant>>,
    /// Injected faults per node (drills); empty in the demo.
    faults: BTreeMap<u64, NodeFaults>,
}

fn region_index(cfg: &LocalClusterConfig, region: &str) -> Option<usize> {
    cfg.regions
        .iter()
        .position(|r| r.name == region)
        .map(|i| i + 1)
}

impl LocalCluster {
    /// Prepares the data directory and key file; starts nothing.
    pub fn new(cfg: LocalClusterConfig) -> Result<Self, LocalError> {
        let io = |path: &PathBuf| {
            let path = path.display().to_string();
            move |source| LocalError::Io { path, source }
        };
        std::fs::create_dir_all(&cfg.data_dir).map_err(io(&cfg.data_dir))?;
        let key_file = cfg.data_dir.join("contact.key");
        let key: String = (0..32)
            .map(|i| format!("{:02x}", (i * 7 + 3) as u8))
            .collect();
        std::fs::write(
            &key_file,
            format!("# demo key: never use in production\n0 {key}\n"),
        )
        .map_err(io(&key_file))?;
        // A throwaway CA per cluster (a new one each run): nodes talk mutual
        // TLS as in production, with certificates nobody else trusts.
        let ca_dir = cfg.data_dir.join("raft-ca");
        run_certs(
            &cfg.binary,
            "the cluster CA",
            &[
                "ca",
                "--cluster-id",
                CLUSTER_ID,
                "--out",
                &ca_dir.display().to_string(),
            ],
        )?;
        // The control loop, the buyers and the drill runner all call the
        // nodes' TLS APIs as the operator would: they trust the CA and present
        // the operator's certificate, the only one a TLS admin API accepts.
        let operator_dir = cfg.data_dir.join("operator-tls");
        run_certs(
            &cfg.binary,
            "the operator's client certificate",
            &[
                "operator",
                "--cluster-id",
                CLUSTER_ID,
                "--ca-dir",
                &ca_dir.display().to_string(),
                "--out",
                &operator_dir.display().to_string(),
            ],
        )?;
        let http = JsonClient::with_tls(&operator_dir, true)?;
        Ok(Self {
            cfg,
            ca_dir,
            operator_dir,
            nodes: BTreeMap::new(),
            next_id: 1,
            http,
            key_file,
            blocked: BTreeMap::new(),
            faults: BTreeMap::new(),
        })
    }

    /// Allocates a fresh node id in `region` (never reused) and its addresses.
    pub fn allocate(&mut self, region: &str) -> Result<u64, LocalError> {
        let r = region_index(&self.cfg, region)
            .ok_or_else(|| LocalError::UnknownRegion(region.into()))?;
        let id = self.next_id;
        self.next_id += 1;
        let ip = format!("127.0.{r}.{id}");
        let p = self.cfg.base_port;
        let info = NodeInfo {
            raft_addr: format!("{ip}:{p}"),
            api_addr: format!("{ip}:{}", p + 1),
            admin_addr: format!("{ip}:{}", p + 2),
            region: region.to_string(),
            zone: format!("{region}-a"),
        };
        self.nodes.insert(
            id,
            LocalNode {
                id,
                info,
                child: None,
                starts: 0,
            },
        );
        Ok(id)
    }

    /// Simulates the loss of a node's host: it cannot be started until `until`
    /// (or ever, with `None`).
    pub fn block(&mut self, id: u64, until: Option<Instant>) {
        self.blocked.insert(id, until);
    }

    /// The node's host is down for a while (not for good).
    pub fn is_temporarily_blocked(&self, id: u64) -> bool {
        matches!(self.blocked.get(&id), Some(Some(_)))
    }

    /// Ends a simulated host outage.
    pub fn unblock(&mut self, id: u64) {
        self.blocked.remove(&id);
    }

    /// Starts (or restarts) a node's process.
    pub fn spawn(&mut self, id: u64) -> Result<(), LocalError> {
        match self.blocked.get(&id) {
            Some(None) => return Err(LocalError::HostDown(id)),
            Some(Some(until)) if Instant::now() < *until => return Err(LocalError::HostDown(id)),
            _ => {}
        }
        let bin = self.cfg.binary.clone();
        let data = self.cfg.data_dir.join(format!("node-{id}"));
        let log_path = self.cfg.data_dir.join(format!("node-{id}.log"));
        let key = self.key_file.clone();
        let tls_dir = self.cfg.data_dir.join(format!("node-{id}-tls"));
        let http_tls_dir = self.cfg.data_dir.join(format!("node-{id}-http-tls"));
        run_certs(
            &bin,
            &format!("node {id}"),
            &[
                "node",
                "--cluster-id",
                CLUSTER_ID,
                "--ca-dir",
                &self.ca_dir.display().to_string(),
                "--id",
                &id.to_string(),
                "--out",
                &tls_dir.display().to_string(),
            ],
        )?;
        // The client and admin APIs' server certificate names the address
        // both listen on, as their clients dial it.
        let host = {
            let info = &self.nodes.get(&id).ok_or(LocalError::UnknownNode(id))?.info;
            host_of(&info.api_addr).to_string()
        };
        run_certs(
            &bin,
            &format!("node {id}'s API server certificate"),
            &[
                "http",
                "--cluster-id",
                CLUSTER_ID,
                "--ca-dir",
                &self.ca_dir.display().to_string(),
                "--name",
                &host,
                "--out",
                &http_tls_dir.display().to_string(),
            ],
        )?;
        let (ct, at) = (self.cfg.client_token.clone(), self.cfg.admin_token.clone());
        let node = self.nodes.get_mut(&id).ok_or(LocalError::UnknownNode(id))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| LocalError::Io {
                path: log_path.display().to_string(),
                source,
            })?;
        let child = Command::new(bin)
            .arg("node")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .args(["--raft-addr", &node.info.raft_addr])
            .args(["--api-addr", &node.info.api_addr])
            .args(["--admin-addr", &node.info.admin_addr])
            .args(["--region", &node.info.region, "--zone", &node.info.zone])
            .arg("--contact-key-file")
            .arg(&key)
            .args(["--client-token", &ct, "--admin-token", &at])
            .args(["--cluster-id", CLUSTER_ID])
            .arg("--raft-tls-dir")
            .arg(&tls_dir)
            .arg("--http-tls-dir")
            .arg(&http_tls_dir)
            .arg("--enable-test-faults")
            .env("ROOMKEEPER_LOG", "warn,openraft::raft::stream_append=off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C in the terminal stops the demo,
            // which then checks the orders on these nodes before stopping them.
            .process_group(0)
            .spawn()
            .map_err(|source| LocalError::Spawn { id, source })?;
        node.child = Some(child);
        node.starts += 1;
        Ok(())
    }

    /// SIGKILL a node (a crash).
    pub async fn kill(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            if let Some(mut c) = n.child.take() {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
    }

    /// True while the node's process runs.
    pub fn is_running(&mut self, id: u64) -> bool {
        match self.nodes.get_mut(&id).and_then(|n| n.child.as_mut()) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn info(&self, id: u64) -> Option<&NodeInfo> {
        self.nodes.get(&id).map(|n| &n.info)
    }

    pub async fn wait_healthy(&self, id: u64, timeout: Duration) -> Result<(), LocalError> {
        let info = self.info(id).ok_or(LocalError::UnknownNode(id))?.clone();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(r) = self
                .http
                .get(
                    &info.admin_addr,
                    "/healthz",
                    None,
                    Duration::from_millis(300),
                )
                .await
            {
                if r.status == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(LocalError::NotHealthy {
            id,
            waited: timeout,
            log: self
                .cfg
                .data_dir
                .join(format!("node-{id}.log"))
                .display()
                .to_string(),
        })
    }

    async fn admin(
        &self,
        id: u64,
        method: hyper::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, LocalError> {
        let info = self.info(id).ok_or(LocalError::UnknownNode(id))?;
        let r = self
            .http
            .call(
                method,
                &info.admin_addr,
                path,
                body.as_ref(),
                Some(&self.cfg.admin_token),
                ADMIN_TIMEOUT,
            )
            .await
            .map_err(|e| LocalError::Admin {
                id,
                message: e.to_string(),
            })?;
        if r.status >= 300 {
            return Err(LocalError::Admin {
                id,
                message: format!("{path}: HTTP {}: {}", r.status, r.body),
            });
        }
        Ok(r.body)
    }

    /// True when the node's `/healthz` answers (the controller's own probe,
    /// independent of the status call).
    pub async fn healthz(&self, id: u64) -> bool {
        let Some(info) = self.info(id) else {
            return false;
        };
        matches!(
            self.http.get(&info.admin_addr, "/healthz", None, Duration::from_millis(500)).await,
            Ok(r) if r.status == 200
        )
    }

    /// The node's admin status, if it answers.
    pub async fn status(&self, id: u64) -> Option<NodeStatus> {
        let v = self
            .admin(id, hyper::Method::GET, "/admin/status", None)
            .await
            .ok()?;
        serde_json::from_value(v).ok()
    }

    /// Starts every region's voters, bootstraps the group and waits for a leader.
    pub async fn start(&mut self) -> Result<(), LocalError> {
        let regions = self.cfg.regions.clone();
        let mut ids = Vec::new();
        for r in &regions {
            for _ in 0..r.voters {
                ids.push(self.allocate(&r.name)?);
            }
        }
        for id in &ids {
            self.spawn(*id)?;
        }
        for id in &ids {
            self.wait_healthy(*id, Duration::from_secs(20)).await?;
        }
        let members: serde_json::Map<String, Value> = ids
            .iter()
            .filter_map(|id| Some((id.to_string(), serde_json::to_value(self.info(*id)?).ok()?)))
            .collect();
        self.admin(
            ids[0],
            hyper::Method::POST,
            "/admin/init",
            Some(json!({ "members": members })),
        )
        .await?;
        self.wait_leader(Duration::from_secs(20)).await?;
        self.apply_wan_latency().await;
        Ok(())
    }

    /// The current leader, by the term rule every plane uses
    /// ([`roomkeeper_api::leader_of`]): a former leader still claiming an
    /// old term does not count.
    pub async fn leader(&self) -> Option<u64> {
        let polls = self.nodes.keys().map(|id| self.status(*id));
        let statuses: Vec<NodeStatus> = futures_util::future::join_all(polls)
            .await
            .into_iter()
            .flatten()
            .collect();
        roomkeeper_api::leader_of(&statuses).map(|s| s.node_id)
    }

    pub async fn wait_leader(&self, timeout: Duration) -> Result<u64, LocalError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(LocalError::NoLeader(timeout))
    }

    /// Tells every running node the latency to peers in other regions, plus
    /// the faults a drill injected (see [`LocalCluster::set_faults`]).
    pub async fn apply_wan_latency(&self) {
        for id in self.nodes.keys() {
            let _ = self.push_faults(*id).await;
        }
    }

    /// The fault settings a node should run with: WAN latency to other
    /// regions, overridden and extended by injected faults.
    pub fn fault_settings(&self, id: u64) -> Value {
        let Some(n) = self.nodes.get(&id) else {
            return json!({});
        };
        let mut delays: BTreeMap<String, u64> = self
            .nodes
            .values()
            .filter(|o| o.id != id && o.info.region != n.info.region)
            .map(|o| (o.id.to_string(), self.cfg.wan_latency_ms))
            .collect();
        let f = self.faults.get(&id).cloned().unwrap_or_default();
        for (peer, ms) in &f.peer_delay_ms {
            delays.insert(peer.to_string(), *ms);
        }
        let loss: BTreeMap<String, u8> = f
            .peer_loss_percent
            .iter()
            .map(|(p, l)| (p.to_string(), *l))
            .collect();
        let mut v = json!({ "peer_delay_ms": delays });
        if !f.isolated_peers.is_empty() {
            v["isolated_peers"] = json!(f.isolated_peers);
        }
        if f.fsync_delay_ms > 0 {
            v["fsync_delay_ms"] = json!(f.fsync_delay_ms);
        }
        if !loss.is_empty() {
            v["peer_loss_percent"] = json!(loss);
        }
        v
    }

    /// Sends a node its fault settings.
    pub async fn push_faults(&self, id: u64) -> Result<(), LocalError> {
        let body = self.fault_settings(id);
        self.admin(id, hyper::Method::POST, "/admin/faults", Some(body))
            .await
            .map(|_| ())
    }

    /// Injected faults of a node.
    pub fn faults(&self, id: u64) -> NodeFaults {
        self.faults.get(&id).cloned().unwrap_or_default()
    }

    /// Replaces the injected faults of a node and applies them if it runs. A
    /// node started later gets them from [`LocalCluster::apply_wan_latency`].
    pub async fn set_faults(&mut self, id: u64, faults: NodeFaults) -> Result<(), LocalError> {
        self.store_faults(id, faults);
        if self.is_running(id) {
            self.push_faults(id).await
        } else {
            Ok(())
        }
    }

    /// Records the injected faults of a node without applying them (see
    /// [`LocalCluster::push_faults`]).
    pub fn store_faults(&mut self, id: u64, faults: NodeFaults) {
        if faults.is_empty() {
            self.faults.remove(&id);
        } else {
            self.faults.insert(id, faults);
        }
    }

    /// Removes every injected fault (the WAN latency of the topology stays).
    pub async fn clear_faults(&mut self) {
        self.faults.clear();
        self.apply_wan_latency().await;
    }

    /// The process id of a running node.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref()?.id()
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`…) to a node's process.
    pub async fn signal(&self, id: u64, signal: &str) -> Result<(), LocalError> {
        let pid = self.pid(id).ok_or(LocalError::UnknownNode(id))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|source| LocalError::Spawn { id, source })?;
        if status.success() {
            Ok(())
        } else {
            Err(LocalError::Admin {
                id,
                message: format!("kill -{signal} {pid} failed ({status})"),
            })
        }
    }

    /// Asks the leader to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), LocalError> {
        let leader = self.wait_leader(Duration::from_secs(5)).await?;
        self.admin(
            leader,
            hyper::Method::POST,
            "/admin/transfer-leader",
            Some(json!({ "to": to })),
        )
        .await
        .map(|_| ())
    }

    /// Replaces one voter by a new node in `into_region`: add learner, wait until
    /// it has caught up, promote, then remove the old voter. One change at a time.
    pub async fn replace_voter(&mut self, old: u64, into_region: &str) -> Result<u64, LocalError> {
        let new = self.allocate(into_region)?;
        self.spawn(new)?;
        self.wait_healthy(new, Duration::from_secs(20)).await?;
        self.apply_wan_latency().await;
        let leader = self.wait_leader(Duration::from_secs(10)).await?;
        let info = serde_json::to_value(self.info(new).ok_or(LocalError::UnknownNode(new))?)
            .map_err(|e| LocalError::Admin {
                id: new,
                message: e.to_string(),
            })?;
        self.admin(
            leader,
            hyper::Method::POST,
            "/admin/learners",
            Some(json!({"node_id": new, "node": info})),
        )
        .await?;
        let leader = self.wait_leader(Duration::from_secs(10)).await?;
        self.admin(
            leader,
            hyper::Method::POST,
            "/admin/promote",
            Some(json!({"node_id": new})),
        )
        .await?;
        let leader = self.wait_leader(Duration::from_secs(10)).await?;
        self.admin(
            leader,
            hyper::Method::POST,
            "/admin/remove",
            Some(json!({"node_id": old})),
        )
        .await?;
        Ok(new)
    }

    /// Sets the sales gate (`POST /admin/sales`) of every running node, all
    /// at once; each node's answer or why it gave none.
    pub async fn set_sales_gate(
        &mut self,
        paused: bool,
        reason: &str,
    ) -> Vec<(u64, Result<SalesGateReply, String>)> {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let mut running = Vec::new();
        for id in ids {
            if self.is_running(id) {
                running.push(id);
            }
        }
        let body = json!(SalesGate {
            paused,
            reason: reason.to_string(),
        });
        let this = &*self;
        let calls = running.iter().map(|&id| {
            let body = body.clone();
            async move {
                let reply = this
                    .admin(id, hyper::Method::POST, "/admin/sales", Some(body))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()));
                (id, reply)
            }
        });
        futures_util::future::join_all(calls).await
    }

    /// Kills every process.
    pub async fn shutdown(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id).await;
        }
    }
}
