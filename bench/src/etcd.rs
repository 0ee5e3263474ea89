//! The etcd peer: three members of Debian's `etcd` on loopback (default
//! timeouts, fsync on), driven through etcd's native gRPC API with the
//! `etcd-client` crate: one client (one HTTP/2 connection) per member, shared
//! by the buyers that send to that member.
//!
//! place_order is an optimistic transaction, written the way etcd's users
//! should write it: every buyer caches each SKU's stock and `mod_revision`
//! (read once, on first use), then sends
//!
//! ```text
//! Txn  if   mod_revision(stock) == cached  and  create_revision(order) == 0
//!      then put stock = cached - qty ; put order
//!      else range stock ; range order
//! ```
//!
//! A conflict's else branch carries the fresh stock and revision, so the
//! retry needs no extra read; the order-key guard makes a retry after an
//! unknown outcome (leader killed mid-request) idempotent. The per-buyer
//! limit is not modelled (it would add a key and a compare to every
//! transaction, which only makes etcd slower).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetResponse, KeyValue, KvClient, StatusResponse,
    Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use serde_json::json;

use crate::leader::LeaderCell;
use crate::procs::{self, free_ports, kill_all, loopback, Proc, ProcSpec, WorkDir};
use crate::report::TargetResult;
use crate::workload::{self, sku_name, Driver, OrderReq, Outcome};
use crate::{Ctx, Scenario, PRICE_CENTS};

pub const TARGET: &str = "etcd";
/// Which client drives this target, for the report.
pub const CLIENT: &str =
    "etcd-client crate, native gRPC: one HTTP/2 connection per member, shared by the buyers sending to it";

/// Bound on one KV request (as for the other targets).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one status probe (leader discovery).
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

pub fn stock_key(room: &str, sku: &str) -> String {
    format!("/rk/{room}/stock/{sku}")
}

pub fn order_key(room: &str, idempotency_key: &str) -> String {
    format!("/rk/{room}/orders/{idempotency_key}")
}

/// The place-order transaction.
pub fn place_order_txn(
    stock_key: &str,
    cached_mod_revision: i64,
    new_stock: i64,
    order_key: &str,
    order_value: &str,
) -> Txn {
    Txn::new()
        .when([
            Compare::mod_revision(stock_key, CompareOp::Equal, cached_mod_revision),
            Compare::create_revision(order_key, CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::put(stock_key, new_stock.to_string(), None),
            TxnOp::put(order_key, order_value, None),
        ])
        .or_else([TxnOp::get(stock_key, None), TxnOp::get(order_key, None)])
}

/// A batch of unconditional puts (setup).
pub fn put_many_txn(kvs: &[(String, String)]) -> Txn {
    let ops: Vec<TxnOp> = kvs
        .iter()
        .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
        .collect();
    Txn::new().and_then(ops)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub stock: i64,
    pub mod_revision: i64,
}

/// A key-value decoded as a stock counter.
fn stock_of(kv: &KeyValue) -> Result<Versioned> {
    let stock = std::str::from_utf8(kv.value())
        .context("etcd stock value is not UTF-8")?
        .trim()
        .parse::<i64>()
        .context("etcd stock value is not a number")?;
    Ok(Versioned {
        stock,
        mod_revision: kv.mod_revision(),
    })
}

pub fn parse_range(resp: &GetResponse) -> Result<Option<Versioned>> {
    resp.kvs().first().map(stock_of).transpose()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// The transaction applied at this revision (the stock key's new mod_revision).
    Applied { revision: i64 },
    /// A compare failed: the fresh stock (None if the key is missing) and
    /// whether the order already exists.
    Conflict {
        stock: Option<Versioned>,
        order_exists: bool,
    },
}

pub fn parse_txn(resp: &TxnResponse) -> Result<TxnOutcome> {
    if resp.succeeded() {
        let revision = resp
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| anyhow!("etcd txn response without header.revision"))?;
        return Ok(TxnOutcome::Applied { revision });
    }
    let ranges: Vec<GetResponse> = resp
        .op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect();
    let [stock, order] = ranges.as_slice() else {
        bail!(
            "etcd txn failed without the two ranges of its else branch ({} found)",
            ranges.len()
        );
    };
    Ok(TxnOutcome::Conflict {
        stock: parse_range(stock)?,
        order_exists: !order.kvs().is_empty(),
    })
}

/// `member_id` and `leader` (None while there is none) from a status answer.
pub fn parse_status(resp: &StatusResponse) -> Result<(u64, Option<u64>)> {
    let member = resp
        .header()
        .map(|h| h.member_id())
        .ok_or_else(|| anyhow!("etcd status without header.member_id"))?;
    let leader = Some(resp.leader()).filter(|l| *l != 0);
    Ok((member, leader))
}

/// A client error as one short line for the report's samples.
fn reason(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

/// Runs one request with a deadline, flattening both failures to a line.
async fn bounded<T>(
    limit: Duration,
    request: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(reason(&e)),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// One `etcd-client` client per member, each connected to that member only
/// (so that writes go where the bench sends them).
#[derive(Clone)]
pub struct Members(Arc<Vec<(SocketAddr, Client)>>);

impl Members {
    async fn connect(addrs: &[SocketAddr]) -> Result<Self> {
        let mut clients = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let options = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(REQUEST_TIMEOUT);
            let client = Client::connect([format!("http://{addr}")], Some(options))
                .await
                .with_context(|| format!("etcd client for {addr}"))?;
            clients.push((*addr, client));
        }
        Ok(Self(Arc::new(clients)))
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.0.iter().map(|(a, _)| *a).collect()
    }

    fn kv(&self, addr: SocketAddr) -> Option<KvClient> {
        self.0
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, c)| c.kv_client())
    }

    async fn status(&self, idx: usize) -> Result<(u64, Option<u64>)> {
        let mut m = self.0[idx].1.maintenance_client();
        let resp = bounded(STATUS_TIMEOUT, m.status())
            .await
            .map_err(|e| anyhow!("etcd status of {}: {e}", self.0[idx].0))?;
        parse_status(&resp)
    }

    /// The client address of whichever member says it is leader; all
    /// members are asked at once, so a dead one costs no extra wait.
    async fn discover_leader(&self) -> Result<SocketAddr> {
        let mut set = tokio::task::JoinSet::new();
        for idx in 0..self.0.len() {
            let me = self.clone();
            set.spawn(async move { (idx, me.status(idx).await) });
        }
        while let Some(joined) = set.join_next().await {
            if let Ok((idx, Ok((me, Some(leader))))) = joined {
                if me == leader {
                    return Ok(self.0[idx].0);
                }
            }
        }
        bail!("no etcd leader")
    }
}

struct Member {
    name: String,
    client: SocketAddr,
    proc: Proc,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    // Dropped after the members (field order): processes die first.
    _dir: WorkDir,
}

impl EtcdCluster {
    pub async fn start(ctx: &Ctx, bin: &std::path::Path) -> Result<Self> {
        let dir = WorkDir::create("etcd", ctx.keep_dir)?;
        let ports = free_ports(6)?;
        let n = 3;
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[n + i]);
        let initial: Vec<String> = (0..n)
            .map(|i| format!("m{}={}", i + 1, peer_url(i)))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for (i, client_port) in ports.iter().copied().enumerate().take(n) {
            let name = format!("m{}", i + 1);
            let client_url = format!("http://127.0.0.1:{client_port}");
            let spec = ProcSpec {
                name: format!("etcd {name}"),
                program: bin.to_path_buf(),
                args: vec![
                    "--name".into(),
                    name.clone(),
                    "--data-dir".into(),
                    dir.path().join(&name).display().to_string(),
                    "--listen-client-urls".into(),
                    client_url.clone(),
                    "--advertise-client-urls".into(),
                    client_url,
                    "--listen-peer-urls".into(),
                    peer_url(i),
                    "--initial-advertise-peer-urls".into(),
                    peer_url(i),
                    "--initial-cluster".into(),
                    initial.clone(),
                    "--initial-cluster-state".into(),
                    "new".into(),
                    "--initial-cluster-token".into(),
                    format!("rk-bench-{}", ctx.run_id),
                    "--logger".into(),
                    "zap".into(),
                ],
                env: vec![],
                log: dir.path().join(format!("{name}.log")),
            };
            members.push(Member {
                name,
                client: loopback(client_port),
                proc: Proc::spawn(spec)?,
            });
        }
        let mut cluster = Self { members, _dir: dir };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    fn client_addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.client).collect()
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let clients = Members::connect(&self.client_addrs()).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for m in &mut self.members {
                m.proc.check_alive()?;
            }
            let mut healthy = 0;
            let mut leader_known = false;
            for idx in 0..self.members.len() {
                if let Ok((_, leader)) = clients.status(idx).await {
                    healthy += 1;
                    leader_known |= leader.is_some();
                }
            }
            if healthy == self.members.len() && leader_known {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd cluster not ready after 30 s ({healthy} of 3 members answer)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Index of the member that is currently leader.
    async fn leader_index(&self, clients: &Members) -> Result<usize> {
        for i in 0..self.members.len() {
            if let Ok((me, Some(leader))) = clients.status(i).await {
                if me == leader {
                    return Ok(i);
                }
            }
        }
        bail!("no etcd member reports itself leader")
    }

    pub async fn shutdown(mut self) -> Result<()> {
        let mut procs: Vec<Proc> = self.members.drain(..).map(|m| m.proc).collect();
        kill_all(&mut procs).await
    }
}

async fn setup(kv: &mut KvClient, ctx: &Ctx) -> Result<()> {
    let skus = ctx.catalog.skus();
    let stock = ctx.catalog.stock().to_string();
    let all: Vec<(String, String)> = (0..skus)
        .map(|i| (stock_key(&ctx.room, &sku_name(i)), stock.clone()))
        .collect();
    // etcd allows 128 operations per transaction by default.
    for chunk in all.chunks(100) {
        bounded(Duration::from_secs(30), kv.txn(put_many_txn(chunk)))
            .await
            .map_err(|e| anyhow!("etcd setup put: {e}"))?;
    }
    Ok(())
}

pub struct EtcdDriver {
    kv: KvClient,
    members: Members,
    leader: Arc<LeaderCell>,
    seen: u64,
    /// Send to the leader (default) or stay on a fixed member.
    follow_leader: bool,
    room: String,
    cache: HashMap<usize, Versioned>,
}

impl EtcdDriver {
    fn retarget(&mut self, addr: SocketAddr) {
        if let Some(kv) = self.members.kv(addr) {
            self.kv = kv;
        }
    }

    async fn rediscover(&mut self) {
        if !self.follow_leader {
            return;
        }
        let members = self.members.clone();
        let (gen, addr) = self
            .leader
            .refresh(self.seen, || async move { members.discover_leader().await })
            .await;
        self.seen = gen;
        self.retarget(addr);
    }

    fn transport_retry(reason: String) -> Outcome {
        Outcome::Retry {
            reason,
            after_ms: 20,
        }
    }

    async fn read_stock(&mut self, key: &str) -> std::result::Result<Option<Versioned>, Outcome> {
        match bounded(REQUEST_TIMEOUT, self.kv.get(key, None)).await {
            Ok(resp) => parse_range(&resp).map_err(|e| Outcome::Error {
                reason: format!("etcd range: {e:#}"),
            }),
            Err(e) => {
                self.rediscover().await;
                Err(Self::transport_retry(format!("etcd range: {e}")))
            }
        }
    }
}

impl Driver for EtcdDriver {
    async fn place(&mut self, req: &OrderReq) -> Outcome {
        if self.follow_leader {
            let (gen, addr) = self.leader.get();
            if gen != self.seen {
                self.seen = gen;
                self.retarget(addr);
            }
        }
        let sku = sku_name(req.sku);
        let skey = stock_key(&self.room, &sku);
        let okey = order_key(&self.room, &req.idempotency_key);
        let order_value = json!({
            "sku": sku, "buyer": req.buyer, "qty": 1, "price_cents": PRICE_CENTS,
            "contact": req.contact,
        })
        .to_string();
        let mut conflicts = 0u32;
        let mut refreshed_for_stock = false;
        loop {
            let cached = match self.cache.get(&req.sku) {
                Some(c) => *c,
                None => match self.read_stock(&skey).await {
                    Ok(Some(v)) => {
                        self.cache.insert(req.sku, v);
                        v
                    }
                    Ok(None) => {
                        return Outcome::Error {
                            reason: format!("etcd: no stock key {skey}"),
                        }
                    }
                    Err(out) => return out,
                },
            };
            if cached.stock < 1 {
                if refreshed_for_stock {
                    return Outcome::Rejected {
                        code: "sold_out".into(),
                    };
                }
                // The cache may be stale: look once more before refusing.
                self.cache.remove(&req.sku);
                refreshed_for_stock = true;
                continue;
            }
            let txn = place_order_txn(
                &skey,
                cached.mod_revision,
                cached.stock - 1,
                &okey,
                &order_value,
            );
            let resp = match bounded(REQUEST_TIMEOUT, self.kv.txn(txn)).await {
                Ok(r) => r,
                Err(e) => {
                    self.rediscover().await;
                    return Self::transport_retry(format!("etcd txn: {e}"));
                }
            };
            match parse_txn(&resp) {
                Ok(TxnOutcome::Applied { revision }) => {
                    self.cache.insert(
                        req.sku,
                        Versioned {
                            stock: cached.stock - 1,
                            mod_revision: revision,
                        },
                    );
                    return Outcome::Ok {
                        order_id: Some(okey),
                        conflicts,
                    };
                }
                Ok(TxnOutcome::Conflict {
                    stock,
                    order_exists,
                }) => {
                    if order_exists {
                        // An earlier attempt of this order committed.
                        self.cache.remove(&req.sku);
                        return Outcome::Ok {
                            order_id: Some(okey),
                            conflicts,
                        };
                    }
                    let Some(fresh) = stock else {
                        return Outcome::Error {
                            reason: format!("etcd: stock key {skey} vanished"),
                        };
                    };
                    self.cache.insert(req.sku, fresh);
                    conflicts += 1;
                }
                Err(e) => {
                    return Outcome::Retry {
                        reason: format!("{e:#}"),
                        after_ms: 20,
                    }
                }
            }
        }
    }
}

pub async fn run(ctx: &Ctx) -> Result<TargetResult> {
    let Some(bin) = procs::find_binary(&ctx.etcd_bin) else {
        let why = format!(
            "binary `{}` not found (apt-get install etcd-server)",
            ctx.etcd_bin
        );
        return Ok(ctx.skipped(TARGET, why));
    };
    eprintln!("== etcd: starting three members ({})", bin.display());
    let mut cluster = EtcdCluster::start(ctx, &bin).await?;
    let result = drive(ctx, &mut cluster).await;
    let stopped = cluster.shutdown().await;
    let result = result?;
    stopped.context("stopping etcd")?;
    Ok(result)
}

async fn drive(ctx: &Ctx, cluster: &mut EtcdCluster) -> Result<TargetResult> {
    let members = Members::connect(&cluster.client_addrs()).await?;
    let addrs = members.addrs();
    let leader_addr = members.discover_leader().await?;
    let leader_kv = || {
        members
            .kv(leader_addr)
            .ok_or_else(|| anyhow!("etcd leader {leader_addr} is not a member"))
    };
    setup(&mut leader_kv()?, ctx).await?;
    let leader = Arc::new(LeaderCell::new(leader_addr));
    let mut drivers = Vec::with_capacity(ctx.clients);
    for i in 0..ctx.clients {
        let kv = if ctx.etcd_spread {
            let addr = addrs[i % addrs.len()];
            members
                .kv(addr)
                .ok_or_else(|| anyhow!("no etcd client for {addr}"))?
        } else {
            leader_kv()?
        };
        drivers.push(EtcdDriver {
            kv,
            members: members.clone(),
            leader: leader.clone(),
            seen: 0,
            follow_leader: !ctx.etcd_spread || ctx.scenario == Scenario::LeaderKill,
            room: ctx.room.clone(),
            cache: HashMap::new(),
        });
    }
    let plan = ctx.plan(
        TARGET,
        false,
        cluster
            .members
            .iter()
            .filter_map(|m| m.proc.pid())
            .collect(),
    );
    let start = Instant::now();
    let scenario = ctx.scenario.name();
    match ctx.scenario {
        Scenario::Steady => {
            let stats = workload::run_load(&plan, drivers, start).await?;
            Ok(TargetResult::from_stats(
                TARGET,
                scenario,
                ctx.catalog.name(),
                ctx.clients,
                &stats,
            ))
        }
        Scenario::LeaderKill => {
            let kill_at = ctx.kill_at();
            let killer = async {
                tokio::time::sleep_until(tokio::time::Instant::from_std(start + kill_at)).await;
                let idx = cluster.leader_index(&members).await?;
                let m = &mut cluster.members[idx];
                let event = crate::KillEvent::now(format!("etcd {}", m.name), start);
                eprintln!(
                    "  >>> SIGKILL etcd leader {} at {:.1} s (unix ms {})",
                    m.name,
                    event.at.as_secs_f64(),
                    event.unix_ms
                );
                m.proc.kill().await?;
                Ok::<_, anyhow::Error>(event)
            };
            let (stats, killed) = tokio::join!(workload::run_load(&plan, drivers, start), killer);
            let stats = stats?;
            let killed = killed?;
            let mut r =
                TargetResult::from_stats(TARGET, scenario, ctx.catalog.name(), ctx.clients, &stats);
            r.leader_kill = Some(crate::kill_report(&stats, killed, None));
            Ok(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::proto::{
        PbCompareTarget, PbKeyValue, PbRangeResponse, PbResponseHeader, PbResponseOp,
        PbStatusResponse, PbTargetUnion, PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest,
        PbTxnResponse,
    };

    #[test]
    fn txn_has_guarded_puts_and_fallback_ranges() {
        let txn = place_order_txn(
            "/rk/r/stock/sku-00001",
            42,
            99,
            "/rk/r/orders/k1",
            "{\"qty\":1}",
        );
        let req = PbTxnRequest::from(txn);
        assert_eq!(req.compare.len(), 2);
        assert_eq!(req.compare[0].target, PbCompareTarget::Mod as i32);
        assert_eq!(
            req.compare[0].target_union,
            Some(PbTargetUnion::ModRevision(42))
        );
        assert_eq!(req.compare[0].key, b"/rk/r/stock/sku-00001");
        assert_eq!(req.compare[1].target, PbCompareTarget::Create as i32);
        assert_eq!(
            req.compare[1].target_union,
            Some(PbTargetUnion::CreateRevision(0))
        );
        assert_eq!(req.compare[1].key, b"/rk/r/orders/k1");
        let puts: Vec<(Vec<u8>, Vec<u8>)> = req
            .success
            .iter()
            .map(|op| match &op.request {
                Some(PbTxnOpRequest::RequestPut(p)) => (p.key.clone(), p.value.clone()),
                other => panic!("expected a put, got {other:?}"),
            })
            .collect();
        assert_eq!(
            puts,
            vec![
                (b"/rk/r/stock/sku-00001".to_vec(), b"99".to_vec()),
                (b"/rk/r/orders/k1".to_vec(), b"{\"qty\":1}".to_vec()),
            ]
        );
        let ranges: Vec<Vec<u8>> = req
            .failure
            .iter()
            .map(|op| match &op.request {
                Some(PbTxnOpRequest::RequestRange(r)) => r.key.clone(),
                other => panic!("expected a range, got {other:?}"),
            })
            .collect();
        assert_eq!(
            ranges,
            vec![
                b"/rk/r/stock/sku-00001".to_vec(),
                b"/rk/r/orders/k1".to_vec()
            ]
        );
    }

    #[test]
    fn put_many_builds_one_op_per_pair() {
        let req = PbTxnRequest::from(put_many_txn(&[
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
        ]));
        assert_eq!(req.success.len(), 2);
        match &req.success[1].request {
            Some(PbTxnOpRequest::RequestPut(p)) => {
                assert_eq!(p.key, b"b");
                assert_eq!(p.value, b"2");
            }
            other => panic!("expected a put, got {other:?}"),
        }
        assert!(req.compare.is_empty());
        assert!(req.failure.is_empty());
    }

    fn kv(key: &str, value: &str, create_revision: i64, mod_revision: i64) -> PbKeyValue {
        PbKeyValue {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision,
            mod_revision,
            version: 1,
            lease: 0,
        }
    }

    fn header(revision: i64) -> Option<PbResponseHeader> {
        Some(PbResponseHeader {
            cluster_id: 1,
            member_id: 13668033151171901709,
            revision,
            raft_term: 2,
        })
    }

    fn range(kvs: Vec<PbKeyValue>) -> PbRangeResponse {
        PbRangeResponse {
            header: header(2),
            count: kvs.len() as i64,
            kvs,
            more: false,
        }
    }

    fn conflict(stock: Vec<PbKeyValue>, order: Vec<PbKeyValue>) -> TxnResponse {
        let op = |r| PbResponseOp {
            response: Some(PbTxnOpResponse::ResponseRange(r)),
        };
        TxnResponse(PbTxnResponse {
            header: header(3),
            succeeded: false,
            responses: vec![op(range(stock)), op(range(order))],
        })
    }

    #[test]
    fn parses_txn_answers() {
        let applied = TxnResponse(PbTxnResponse {
            header: header(3),
            succeeded: true,
            responses: Vec::new(),
        });
        assert_eq!(
            parse_txn(&applied).unwrap(),
            TxnOutcome::Applied { revision: 3 }
        );
        assert_eq!(
            parse_txn(&conflict(vec![kv("/a", "5", 2, 2)], vec![])).unwrap(),
            TxnOutcome::Conflict {
                stock: Some(Versioned {
                    stock: 5,
                    mod_revision: 2
                }),
                order_exists: false
            }
        );
        assert_eq!(
            parse_txn(&conflict(
                vec![kv("/a", "5", 2, 3)],
                vec![kv("/o1", "{}", 3, 3)]
            ))
            .unwrap(),
            TxnOutcome::Conflict {
                stock: Some(Versioned {
                    stock: 5,
                    mod_revision: 3
                }),
                order_exists: true
            }
        );
        let headless = TxnResponse(PbTxnResponse {
            header: None,
            succeeded: true,
            responses: Vec::new(),
        });
        assert!(parse_txn(&headless).is_err());
        let no_ranges = TxnResponse(PbTxnResponse {
            header: header(3),
            succeeded: false,
            responses: Vec::new(),
        });
        assert!(parse_txn(&no_ranges).is_err());
        assert!(parse_txn(&conflict(vec![kv("/a", "five", 2, 2)], vec![])).is_err());
    }

    #[test]
    fn parses_range_and_status() {
        assert_eq!(
            parse_range(&GetResponse(range(vec![kv("/a", "5", 2, 2)]))).unwrap(),
            Some(Versioned {
                stock: 5,
                mod_revision: 2
            })
        );
        assert_eq!(parse_range(&GetResponse(range(vec![]))).unwrap(), None);
        let status = |leader| {
            StatusResponse(PbStatusResponse {
                header: header(3),
                version: "3.4.23".into(),
                leader,
                ..PbStatusResponse::default()
            })
        };
        let (me, leader) = parse_status(&status(13668033151171901709)).unwrap();
        assert_eq!(me, 13668033151171901709);
        assert_eq!(leader, Some(13668033151171901709));
        let (_, none) = parse_status(&status(0)).unwrap();
        assert_eq!(none, None);
        let headless = StatusResponse(PbStatusResponse::default());
        assert!(parse_status(&headless).is_err());
    }

    #[test]
    fn keys_are_namespaced_by_room() {
        assert_eq!(stock_key("r1", "sku-00003"), "/rk/r1/stock/sku-00003");
        assert_eq!(order_key("r1", "abc-1-2"), "/rk/r1/orders/abc-1-2");
    }
}
