//! The etcd peer: three members of Debian's `etcd` on loopback (default
//! timeouts, fsync on), driven through the v3 JSON gateway.
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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::b64;
use super::http::HttpConn;
use super::leader::LeaderCell;
use super::procs::{self, free_ports, kill_all, loopback, Proc, ProcSpec, WorkDir};
use super::report::TargetResult;
use super::workload::{self, sku_name, Driver, OrderReq, Outcome, Plan};
use super::{Ctx, Scenario, PRICE_CENTS};

pub const TARGET: &str = "etcd";

pub fn stock_key(room: &str, sku: &str) -> String {
    format!("/rk/{room}/stock/{sku}")
}

pub fn order_key(room: &str, idempotency_key: &str) -> String {
    format!("/rk/{room}/orders/{idempotency_key}")
}

/// gRPC-gateway JSON renders int64 as a string; accept both.
fn int_field(v: &Value, name: &str) -> Option<i64> {
    match v.get(name)? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// The place-order transaction body.
pub fn place_order_txn(
    stock_key: &str,
    cached_mod_revision: i64,
    new_stock: i64,
    order_key: &str,
    order_value: &str,
) -> Value {
    let sk = b64::encode(stock_key.as_bytes());
    let ok = b64::encode(order_key.as_bytes());
    json!({
        "compare": [
            {"target": "MOD", "result": "EQUAL", "key": sk, "mod_revision": cached_mod_revision.to_string()},
            {"target": "CREATE", "result": "EQUAL", "key": ok, "create_revision": "0"},
        ],
        "success": [
            {"request_put": {"key": sk, "value": b64::encode(new_stock.to_string().as_bytes())}},
            {"request_put": {"key": ok, "value": b64::encode(order_value.as_bytes())}},
        ],
        "failure": [
            {"request_range": {"key": sk}},
            {"request_range": {"key": ok}},
        ],
    })
}

/// A batch of unconditional puts (setup).
pub fn put_many_txn(kvs: &[(String, String)]) -> Value {
    let ops: Vec<Value> = kvs
        .iter()
        .map(|(k, v)| {
            json!({"request_put": {"key": b64::encode(k.as_bytes()), "value": b64::encode(v.as_bytes())}})
        })
        .collect();
    json!({ "success": ops })
}

pub fn range_body(key: &str) -> Value {
    json!({ "key": b64::encode(key.as_bytes()) })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub stock: i64,
    pub mod_revision: i64,
}

/// The first key-value of a range response, decoded as a stock counter.
fn first_kv_stock(range: &Value) -> Result<Option<Versioned>> {
    let Some(kv) = range
        .get("kvs")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    else {
        return Ok(None);
    };
    let raw = kv.get("value").and_then(Value::as_str).unwrap_or("");
    let bytes = b64::decode(raw).context("etcd value")?;
    let stock = std::str::from_utf8(&bytes)
        .context("etcd stock value is not UTF-8")?
        .trim()
        .parse::<i64>()
        .context("etcd stock value is not a number")?;
    let mod_revision =
        int_field(kv, "mod_revision").ok_or_else(|| anyhow!("kv without mod_revision"))?;
    Ok(Some(Versioned {
        stock,
        mod_revision,
    }))
}

pub fn parse_range(body: &[u8]) -> Result<Option<Versioned>> {
    let v: Value = serde_json::from_slice(body).context("etcd range response is not JSON")?;
    first_kv_stock(&v)
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

pub fn parse_txn(body: &[u8]) -> Result<TxnOutcome> {
    let v: Value = serde_json::from_slice(body).context("etcd txn response is not JSON")?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        bail!("etcd: {err}");
    }
    let succeeded = v.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
    if succeeded {
        let revision = v
            .get("header")
            .and_then(|h| int_field(h, "revision"))
            .ok_or_else(|| anyhow!("etcd txn response without header.revision"))?;
        return Ok(TxnOutcome::Applied { revision });
    }
    let responses = v
        .get("responses")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("etcd txn response without responses"))?;
    let range = |i: usize| responses.get(i).and_then(|r| r.get("response_range"));
    let stock = match range(0) {
        Some(r) => first_kv_stock(r)?,
        None => None,
    };
    let order_exists = range(1)
        .and_then(|r| r.get("kvs"))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    Ok(TxnOutcome::Conflict {
        stock,
        order_exists,
    })
}

/// `member_id` and `leader` from a maintenance/status answer.
pub fn parse_status(body: &[u8]) -> Result<(String, Option<String>)> {
    let v: Value = serde_json::from_slice(body).context("etcd status response is not JSON")?;
    let member = v
        .get("header")
        .and_then(|h| h.get("member_id"))
        .and_then(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .ok_or_else(|| anyhow!("etcd status without header.member_id"))?;
    let leader = v
        .get("leader")
        .and_then(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .filter(|l| l != "0");
    Ok((member, leader))
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
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for m in &mut self.members {
                m.proc.check_alive()?;
            }
            let mut healthy = 0;
            let mut leader_known = false;
            for addr in self.client_addrs() {
                if let Ok((_, leader)) = member_status(addr).await {
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
    async fn leader_index(&self) -> Result<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if let Ok((me, Some(leader))) = member_status(m.client).await {
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

async fn member_status(addr: SocketAddr) -> Result<(String, Option<String>)> {
    let mut conn = HttpConn::new(addr, None)?.with_timeout(Duration::from_millis(500));
    let resp = conn.post_json("/v3/maintenance/status", &json!({})).await?;
    if !resp.is_success() {
        bail!("etcd status: HTTP {}: {}", resp.status, resp.body_text());
    }
    parse_status(&resp.body)
}

/// The client address of whichever member says it is leader.
async fn discover_leader(members: &[SocketAddr]) -> Result<SocketAddr> {
    for addr in members {
        if let Ok((me, Some(leader))) = member_status(*addr).await {
            if me == leader {
                return Ok(*addr);
            }
        }
    }
    bail!("no etcd leader")
}

async fn setup(addr: SocketAddr, ctx: &Ctx) -> Result<()> {
    let mut conn = HttpConn::new(addr, None)?.with_timeout(Duration::from_secs(30));
    let skus = ctx.catalog.skus();
    let stock = ctx.catalog.stock().to_string();
    let all: Vec<(String, String)> = (0..skus)
        .map(|i| (stock_key(&ctx.room, &sku_name(i)), stock.clone()))
        .collect();
    // etcd allows 128 operations per transaction by default.
    for chunk in all.chunks(100) {
        let resp = conn
            .post_json("/v3/kv/txn", &put_many_txn(chunk))
            .await
            .context("etcd setup put")?;
        if !resp.is_success() {
            bail!("etcd setup: HTTP {}: {}", resp.status, resp.body_text());
        }
    }
    Ok(())
}

pub struct EtcdDriver {
    conn: HttpConn,
    leader: Arc<LeaderCell>,
    seen: u64,
    members: Arc<Vec<SocketAddr>>,
    /// Send to the leader (default) or stay on a fixed member.
    follow_leader: bool,
    room: String,
    cache: HashMap<usize, Versioned>,
}

impl EtcdDriver {
    async fn rediscover(&mut self) {
        if !self.follow_leader {
            return;
        }
        let members = self.members.clone();
        let (gen, addr) = self
            .leader
            .refresh(self.seen, || async move { discover_leader(&members).await })
            .await;
        self.seen = gen;
        if let Err(e) = self.conn.retarget(addr) {
            tracing::debug!(error = %e, "retarget");
        }
    }

    fn transport_retry(reason: String) -> Outcome {
        Outcome::Retry {
            reason,
            after_ms: 20,
        }
    }

    async fn read_stock(&mut self, key: &str) -> std::result::Result<Option<Versioned>, Outcome> {
        match self.conn.post_json("/v3/kv/range", &range_body(key)).await {
            Ok(resp) if resp.is_success() => parse_range(&resp.body).map_err(|e| Outcome::Error {
                reason: format!("etcd range: {e:#}"),
            }),
            Ok(resp) => {
                self.rediscover().await;
                Err(Self::transport_retry(format!(
                    "etcd range HTTP {}",
                    resp.status
                )))
            }
            Err(e) => {
                self.rediscover().await;
                Err(Self::transport_retry(format!(
                    "etcd range: {}",
                    e.root_cause()
                )))
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
                if let Err(e) = self.conn.retarget(addr) {
                    return Outcome::Error {
                        reason: format!("{e:#}"),
                    };
                }
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
            let body = place_order_txn(
                &skey,
                cached.mod_revision,
                cached.stock - 1,
                &okey,
                &order_value,
            );
            let resp = match self.conn.post_json("/v3/kv/txn", &body).await {
                Ok(r) => r,
                Err(e) => {
                    self.rediscover().await;
                    return Self::transport_retry(format!("etcd txn: {}", e.root_cause()));
                }
            };
            if !resp.is_success() {
                self.rediscover().await;
                return Outcome::Retry {
                    reason: format!("etcd txn HTTP {}: {}", resp.status, resp.body_text()),
                    after_ms: 20,
                };
            }
            match parse_txn(&resp.body) {
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
    let scenario = ctx.scenario.name();
    let Some(bin) = procs::find_binary(&ctx.etcd_bin) else {
        let why = format!(
            "binary `{}` not found (apt-get install etcd-server)",
            ctx.etcd_bin
        );
        eprintln!("\n!!!!! SKIPPED etcd: {why}\n");
        return Ok(TargetResult::skipped(
            TARGET,
            scenario,
            ctx.catalog.name(),
            ctx.clients,
            why,
        ));
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
    let members = Arc::new(cluster.client_addrs());
    let leader_addr = discover_leader(&members).await?;
    setup(leader_addr, ctx).await?;
    let leader = Arc::new(LeaderCell::new(leader_addr));
    let mut drivers = Vec::with_capacity(ctx.clients);
    for i in 0..ctx.clients {
        let addr = if ctx.etcd_spread {
            members[i % members.len()]
        } else {
            leader_addr
        };
        drivers.push(EtcdDriver {
            conn: HttpConn::new(addr, None)?,
            leader: leader.clone(),
            seen: 0,
            members: members.clone(),
            follow_leader: !ctx.etcd_spread || ctx.scenario == Scenario::LeaderKill,
            room: ctx.room.clone(),
            cache: HashMap::new(),
        });
    }
    let plan = Plan {
        label: format!("etcd {} {}c", ctx.catalog.name(), ctx.clients),
        run_id: ctx.run_id.clone(),
        skus: ctx.catalog.skus(),
        warmup: ctx.warmup,
        duration: ctx.duration,
        record_acks: false,
        retry_grace: ctx.retry_grace(),
    };
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
                let idx = cluster.leader_index().await?;
                let m = &mut cluster.members[idx];
                let event = super::KillEvent::now(format!("etcd {}", m.name), start);
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
            r.leader_kill = Some(super::kill_report(&stats, killed, None));
            Ok(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64s(s: &str) -> String {
        b64::encode(s.as_bytes())
    }

    #[test]
    fn txn_body_has_guarded_puts_and_fallback_ranges() {
        let body = place_order_txn(
            "/rk/r/stock/sku-00001",
            42,
            99,
            "/rk/r/orders/k1",
            "{\"qty\":1}",
        );
        assert_eq!(body["compare"][0]["target"], "MOD");
        assert_eq!(body["compare"][0]["mod_revision"], "42");
        assert_eq!(body["compare"][0]["key"], b64s("/rk/r/stock/sku-00001"));
        assert_eq!(body["compare"][1]["target"], "CREATE");
        assert_eq!(body["compare"][1]["create_revision"], "0");
        assert_eq!(body["success"][0]["request_put"]["value"], b64s("99"));
        assert_eq!(
            body["success"][1]["request_put"]["key"],
            b64s("/rk/r/orders/k1")
        );
        assert_eq!(
            body["success"][1]["request_put"]["value"],
            b64s("{\"qty\":1}")
        );
        assert_eq!(
            body["failure"][0]["request_range"]["key"],
            b64s("/rk/r/stock/sku-00001")
        );
        assert_eq!(
            body["failure"][1]["request_range"]["key"],
            b64s("/rk/r/orders/k1")
        );
    }

    #[test]
    fn put_many_builds_one_op_per_pair() {
        let body = put_many_txn(&[("a".into(), "1".into()), ("b".into(), "2".into())]);
        assert_eq!(body["success"].as_array().unwrap().len(), 2);
        assert_eq!(body["success"][1]["request_put"]["key"], b64s("b"));
        assert!(body.get("compare").is_none());
    }

    // Answers captured from etcd 3.4.23's gateway.
    const APPLIED: &str = r#"{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"3","raft_term":"2"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"3"}}},{"response_put":{"header":{"revision":"3"}}}]}"#;
    const CONFLICT: &str = r#"{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"2","raft_term":"2"},"responses":[{"response_range":{"header":{"revision":"2"},"kvs":[{"key":"L2E=","create_revision":"2","mod_revision":"2","version":"1","value":"NQ=="}],"count":"1"}},{"response_range":{"header":{"revision":"2"}}}]}"#;
    const REPLAYED: &str = r#"{"header":{"revision":"3"},"responses":[{"response_range":{"header":{"revision":"3"},"kvs":[{"key":"L2E=","create_revision":"2","mod_revision":"3","version":"2","value":"NQ=="}],"count":"1"}},{"response_range":{"header":{"revision":"3"},"kvs":[{"key":"L28x","create_revision":"3","mod_revision":"3","version":"1","value":"NQ=="}],"count":"1"}}]}"#;
    const STATUS: &str = r#"{"header":{"cluster_id":"1","member_id":"13668033151171901709","revision":"3","raft_term":"2"},"version":"3.4.23","dbSize":"20480","leader":"13668033151171901709","raftIndex":"7","raftTerm":"2"}"#;

    #[test]
    fn parses_txn_answers() {
        assert_eq!(
            parse_txn(APPLIED.as_bytes()).unwrap(),
            TxnOutcome::Applied { revision: 3 }
        );
        assert_eq!(
            parse_txn(CONFLICT.as_bytes()).unwrap(),
            TxnOutcome::Conflict {
                stock: Some(Versioned {
                    stock: 5,
                    mod_revision: 2
                }),
                order_exists: false
            }
        );
        assert_eq!(
            parse_txn(REPLAYED.as_bytes()).unwrap(),
            TxnOutcome::Conflict {
                stock: Some(Versioned {
                    stock: 5,
                    mod_revision: 3
                }),
                order_exists: true
            }
        );
        assert!(parse_txn(br#"{"error":"etcdserver: no leader","code":14}"#).is_err());
        assert!(parse_txn(b"not json").is_err());
    }

    #[test]
    fn parses_range_and_status() {
        let range = r#"{"header":{"revision":"2"},"kvs":[{"key":"L2E=","create_revision":"2","mod_revision":"2","version":"1","value":"NQ=="}],"count":"1"}"#;
        assert_eq!(
            parse_range(range.as_bytes()).unwrap(),
            Some(Versioned {
                stock: 5,
                mod_revision: 2
            })
        );
        assert_eq!(
            parse_range(br#"{"header":{"revision":"2"}}"#).unwrap(),
            None
        );
        let (me, leader) = parse_status(STATUS.as_bytes()).unwrap();
        assert_eq!(me, "13668033151171901709");
        assert_eq!(leader.as_deref(), Some("13668033151171901709"));
        let (_, none) = parse_status(br#"{"header":{"member_id":"5"},"leader":"0"}"#).unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn keys_are_namespaced_by_room() {
        assert_eq!(stock_key("r1", "sku-00003"), "/rk/r1/stock/sku-00003");
        assert_eq!(order_key("r1", "abc-1-2"), "/rk/r1/orders/abc-1-2");
    }
}
