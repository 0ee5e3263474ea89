//! The Redis peer: one `redis-server` on loopback with `appendonly yes`,
//! `appendfsync always` (durable on one node, not replicated), driven with
//! the `redis` crate (RESP over tokio). place_order is one Lua script that
//! checks the idempotency key, the listing's state and stock and the
//! per-buyer limit, then decrements the stock and stores the order; every
//! order is one `EVALSHA`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use crate::procs::{self, free_ports, loopback, Proc, ProcSpec, WorkDir};
use crate::report::TargetResult;
use crate::workload::{self, sku_name, Driver, OrderReq, Outcome};
use crate::{Ctx, PER_BUYER_LIMIT, PRICE_CENTS};

pub const TARGET: &str = "redis";
/// The same server and script driven by Redis's own load tool.
pub const RB_TARGET: &str = "redis-benchmark";
pub const RB_CLIENT: &str = "redis-benchmark (Redis's own C load tool): one connection per client, \
     the same EVALSHA, a fresh idempotency key and buyer per order (__rand_int__), one SKU of the catalog";
/// Which client drives this target, for the report.
pub const CLIENT: &str =
    "redis crate (tokio), RESP: multiplexed connections, one per core (at least two), shared by the buyers";

/// KEYS: 1 listing hash {stock, limit, state}, 2 per-buyer counts hash of the
/// listing, 3 idempotency key, 4 order id sequence, 5 orders hash.
/// ARGV: 1 buyer, 2 qty, 3 order JSON.
/// Returns {1, order_id, replayed} or {0, code}.
pub const PLACE_ORDER_LUA: &str = r#"
local existing = redis.call('GET', KEYS[3])
if existing then return {1, tonumber(existing), 1} end
local l = redis.call('HMGET', KEYS[1], 'stock', 'limit', 'state')
if not l[1] then return {0, 'not_found'} end
if l[3] ~= 'open' then return {0, 'not_on_sale'} end
local qty = tonumber(ARGV[2])
if qty < 1 then return {0, 'invalid_quantity'} end
if tonumber(l[1]) < qty then return {0, 'sold_out'} end
local bought = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if bought + qty > tonumber(l[2]) then return {0, 'limit_exceeded'} end
redis.call('HINCRBY', KEYS[1], 'stock', -qty)
redis.call('HINCRBY', KEYS[2], ARGV[1], qty)
local id = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[5], id, ARGV[3])
redis.call('SET', KEYS[3], id)
return {1, id, 0}
"#;

pub fn listing_key(room: &str, sku: &str) -> String {
    format!("rk:{{{room}}}:listing:{sku}")
}

pub fn bought_key(room: &str, sku: &str) -> String {
    format!("rk:{{{room}}}:bought:{sku}")
}

pub fn idem_key(room: &str, key: &str) -> String {
    format!("rk:{{{room}}}:idem:{key}")
}

pub fn seq_key(room: &str) -> String {
    format!("rk:{{{room}}}:order_seq")
}

pub fn orders_key(room: &str) -> String {
    format!("rk:{{{room}}}:orders")
}

/// An integer reply, or a string reply that holds one.
fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::SimpleString(s) => Some(s.clone()),
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// Decodes the script's reply.
pub fn parse_place_reply(v: &Value) -> Result<Outcome> {
    match v {
        Value::Array(items) => match items.first().and_then(as_int) {
            Some(1) => {
                let id = items.get(1).and_then(as_int);
                Ok(Outcome::Ok {
                    order_id: id.map(|i| i.to_string()),
                    conflicts: 0,
                })
            }
            Some(0) => {
                let code = items
                    .get(1)
                    .and_then(as_text)
                    .unwrap_or_else(|| "unknown".into());
                if code == "sold_out" || code == "limit_exceeded" {
                    Ok(Outcome::Rejected { code })
                } else {
                    Ok(Outcome::Error {
                        reason: format!("redis: {code}"),
                    })
                }
            }
            _ => bail!("unexpected script reply {v:?}"),
        },
        Value::ServerError(e) => Ok(Outcome::Retry {
            reason: format!("redis: {e}"),
            after_ms: 10,
        }),
        other => bail!("unexpected script reply {other:?}"),
    }
}

/// The order as the script stores it.
pub fn order_json(sku: &str, req: &OrderReq) -> String {
    serde_json::json!({
        "sku": sku, "buyer": req.buyer, "qty": 1, "price_cents": PRICE_CENTS,
        "contact": req.contact, "idempotency_key": req.idempotency_key,
    })
    .to_string()
}

/// One order: `EVALSHA sha 5 <keys> buyer 1 order`.
pub fn place_order_cmd(sha: &str, room: &str, sku: &str, req: &OrderReq) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha)
        .arg(5)
        .arg(listing_key(room, sku))
        .arg(bought_key(room, sku))
        .arg(idem_key(room, &req.idempotency_key))
        .arg(seq_key(room))
        .arg(orders_key(room))
        .arg(&req.buyer)
        .arg(1)
        .arg(order_json(sku, req));
    cmd
}

/// `HSET` of one listing with its stock, limit, state and price.
pub fn listing_cmd(room: &str, sku: &str, stock: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("HSET");
    cmd.arg(listing_key(room, sku))
        .arg("stock")
        .arg(stock)
        .arg("limit")
        .arg(PER_BUYER_LIMIT)
        .arg("state")
        .arg("open")
        .arg("price_cents")
        .arg(PRICE_CENTS);
    cmd
}

fn config() -> AsyncConnectionConfig {
    // The crate's 500 ms default would turn an fsync stall into errors; the
    // bench waits as long as it did with its own client.
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)))
}

async fn connect(client: &redis::Client) -> redis::RedisResult<MultiplexedConnection> {
    client
        .get_multiplexed_async_connection_with_config(&config())
        .await
}

/// How many connections the buyers share: one per core (the runtime runs a
/// worker thread per core, and every multiplexed connection has its own I/O
/// task), at least two, never more than there are buyers. Measured against
/// one connection per buyer and against a single shared connection: fewer
/// connections let Redis serve (and fsync) more commands per event-loop turn
/// and cost the load generator less CPU per order; a single one serialises
/// every buyer on one task and fell behind at 256 buyers.
fn pool_size(clients: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    cores.max(2).min(clients.max(1))
}

pub struct RedisDriver {
    client: redis::Client,
    /// This buyer's handle on one of the pool's connections; after that
    /// connection broke, the buyer opens its own on the next order.
    conn: Option<MultiplexedConnection>,
    sha: Arc<str>,
    room: String,
    skus: Arc<Vec<String>>,
}

impl Driver for RedisDriver {
    async fn place(&mut self, req: &OrderReq) -> Outcome {
        let sku = &self.skus[req.sku];
        let cmd = place_order_cmd(&self.sha, &self.room, sku, req);
        let conn = match &mut self.conn {
            Some(c) => c,
            None => match connect(&self.client).await {
                Ok(c) => self.conn.insert(c),
                Err(e) => {
                    return Outcome::Retry {
                        reason: format!("redis: connect: {e}"),
                        after_ms: 10,
                    }
                }
            },
        };
        match cmd.query_async::<Value>(conn).await {
            Ok(v) => parse_place_reply(&v).unwrap_or_else(|e| Outcome::Error {
                reason: format!("{e:#}"),
            }),
            Err(e) => {
                if e.is_unrecoverable_error() {
                    self.conn = None;
                }
                Outcome::Retry {
                    reason: format!("redis: {e}"),
                    after_ms: 10,
                }
            }
        }
    }
}

async fn wait_ready(proc: &mut Proc, client: &redis::Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        proc.check_alive()?;
        if let Ok(mut c) = connect(client).await {
            if let Ok(pong) = redis::cmd("PING").query_async::<String>(&mut c).await {
                if pong == "PONG" {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("redis-server did not answer PING within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Loads the script and the catalog; returns the script's SHA.
async fn setup(conn: &mut MultiplexedConnection, ctx: &Ctx) -> Result<String> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(PLACE_ORDER_LUA)
        .query_async(conn)
        .await
        .context("SCRIPT LOAD")?;
    let stock = ctx.catalog.stock();
    let skus: Vec<usize> = (0..ctx.catalog.skus()).collect();
    for batch in skus.chunks(1000) {
        let mut pipe = redis::pipe();
        for i in batch {
            pipe.add_command(listing_cmd(&ctx.room, &sku_name(*i), stock))
                .ignore();
        }
        pipe.query_async::<()>(conn)
            .await
            .context("redis setup: HSET listings")?;
    }
    Ok(sha)
}

async fn drivers(client: &redis::Client, sha: &str, ctx: &Ctx) -> Result<Vec<RedisDriver>> {
    let skus = Arc::new((0..ctx.catalog.skus()).map(sku_name).collect::<Vec<_>>());
    let sha: Arc<str> = Arc::from(sha);
    let mut pool = Vec::new();
    for _ in 0..pool_size(ctx.clients) {
        pool.push(connect(client).await.context("connect redis")?);
    }
    Ok((0..ctx.clients)
        .map(|i| RedisDriver {
            client: client.clone(),
            conn: Some(pool[i % pool.len()].clone()),
            sha: sha.clone(),
            room: ctx.room.clone(),
            skus: skus.clone(),
        })
        .collect())
}

/// Starts one `redis-server` with `appendfsync always` in a fresh directory.
fn start_server(
    ctx: &Ctx,
    bin: std::path::PathBuf,
) -> Result<(Proc, WorkDir, std::net::SocketAddr)> {
    let dir = WorkDir::create("redis", ctx.keep_dir)?;
    let port = free_ports(1)?[0];
    let addr = loopback(port);
    eprintln!(
        "== redis: starting one server, appendfsync always ({})",
        bin.display()
    );
    let spec = ProcSpec {
        name: "redis-server".into(),
        program: bin,
        args: vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--appendonly".into(),
            "yes".into(),
            "--appendfsync".into(),
            "always".into(),
            "--save".into(),
            String::new(),
            "--daemonize".into(),
            "no".into(),
            "--protected-mode".into(),
            "yes".into(),
            "--logfile".into(),
            String::new(),
        ],
        env: vec![],
        log: dir.path().join("redis.log"),
    };
    let proc = Proc::spawn(spec)?;
    Ok((proc, dir, addr))
}

pub async fn run(ctx: &Ctx) -> Result<TargetResult> {
    let scenario = ctx.scenario.name();
    let Some(bin) = procs::find_binary(&ctx.redis_bin) else {
        let why = format!(
            "binary `{}` not found (apt-get install redis-server)",
            ctx.redis_bin
        );
        return Ok(ctx.skipped(TARGET, why));
    };
    let (mut proc, dir, addr) = start_server(ctx, bin)?;
    let result = async {
        let client = redis::Client::open(format!("redis://{addr}/")).context("redis client")?;
        wait_ready(&mut proc, &client).await?;
        let mut setup_conn = connect(&client).await.context("connect redis")?;
        let sha = setup(&mut setup_conn, ctx).await?;
        drop(setup_conn);
        let drivers = drivers(&client, &sha, ctx).await?;
        let plan = ctx.plan(TARGET, false, proc.pid().into_iter().collect());
        let stats = workload::run_load(&plan, drivers, Instant::now()).await?;
        let mut r =
            TargetResult::from_stats(TARGET, scenario, ctx.catalog.name(), ctx.clients, &stats);
        r.server_rss_mib = proc.rss_bytes().map(|b| b as f64 / 1048576.0);
        Ok::<_, anyhow::Error>(r)
    }
    .await;
    let stopped = proc.kill().await;
    drop(dir);
    let r = result?;
    stopped.context("stopping redis-server")?;
    Ok(r)
}

/// What `redis-benchmark --csv` reports for one command.
#[derive(Debug, Clone, PartialEq)]
pub struct RbFigures {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Parses the last line of `redis-benchmark --csv` (redis 7: test, rps, avg,
/// min, p50, p95, p99, max). The test name holds the command and its
/// arguments unescaped, so the numbers are read from the end of the line.
pub fn parse_rb_csv(out: &str) -> Option<RbFigures> {
    let line = out.lines().rev().find(|l| !l.trim().is_empty())?;
    let mut f = line
        .rsplit(',')
        .map(|v| v.trim().trim_matches('"').parse::<f64>());
    let max_ms = f.next()?.ok()?;
    let p99_ms = f.next()?.ok()?;
    let _p95 = f.next()?.ok()?;
    let p50_ms = f.next()?.ok()?;
    let _min = f.next()?.ok()?;
    let _avg = f.next()?.ok()?;
    let rps = f.next()?.ok()?;
    Some(RbFigures {
        rps,
        p50_ms,
        p99_ms,
        max_ms,
    })
}

/// `redis-benchmark -r`: `__rand_int__` becomes a random number below this. It
/// is a C `int` there; a larger value wraps and every key comes out the same
/// (every order after the first would be a replay).
const RB_KEYSPACE: u32 = 2_000_000_000;
const _: () = assert!(RB_KEYSPACE <= i32::MAX as u32 && RB_KEYSPACE >= 1_000_000_000);

/// Arguments of one `redis-benchmark` run of the order script; `phase` keeps
/// the warm-up's keys apart from the measured run's.
fn rb_args(
    ctx: &Ctx,
    addr: std::net::SocketAddr,
    sha: &str,
    requests: u64,
    phase: &str,
) -> Vec<String> {
    let sku = sku_name(0);
    let req = OrderReq {
        sku: 0,
        buyer: "buyer-__rand_int__".into(),
        idempotency_key: format!("{}-rb{phase}-__rand_int__", ctx.run_id),
        contact: "+15550000000".into(),
    };
    let mut a: Vec<String> = vec![
        "-h".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
        "-c".into(),
        ctx.clients.to_string(),
        "-n".into(),
        requests.to_string(),
        "-r".into(),
        RB_KEYSPACE.to_string(),
        "--csv".into(),
        "EVALSHA".into(),
        sha.into(),
        "5".into(),
    ];
    a.push(listing_key(&ctx.room, &sku));
    a.push(bought_key(&ctx.room, &sku));
    a.push(idem_key(&ctx.room, &req.idempotency_key));
    a.push(seq_key(&ctx.room));
    a.push(orders_key(&ctx.room));
    a.push(req.buyer.clone());
    a.push("1".into());
    a.push(order_json(&sku, &req));
    a
}

async fn run_rb(bin: &std::path::Path, args: &[String]) -> Result<String> {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} exited with {}: {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Redis peer driven by `redis-benchmark`: a fresh server, the same
/// script and catalog; a warm-up run, then a measured one sized to last about
/// `--duration-secs` at the rate the warm-up reached. Orders accepted are
/// read back from the script's order sequence, so refusals are counted.
pub async fn run_redis_benchmark(ctx: &Ctx) -> Result<TargetResult> {
    let scenario = ctx.scenario.name();
    let (Some(server), Some(rb)) = (
        procs::find_binary(&ctx.redis_bin),
        procs::find_binary(&ctx.redis_benchmark_bin),
    ) else {
        let why = format!(
            "binaries `{}` and `{}` not both found (apt-get install redis-server redis-tools)",
            ctx.redis_bin, ctx.redis_benchmark_bin
        );
        eprintln!("\n!!!!! SKIPPED {RB_TARGET}: {why}\n");
        return Ok(TargetResult::skipped(
            RB_TARGET,
            scenario,
            ctx.catalog.name(),
            ctx.clients,
            why,
        ));
    };
    let (mut proc, dir, addr) = start_server(ctx, server)?;
    let result = async {
        let client = redis::Client::open(format!("redis://{addr}/")).context("redis client")?;
        wait_ready(&mut proc, &client).await?;
        let mut conn = connect(&client).await.context("connect redis")?;
        let sha = setup(&mut conn, ctx).await?;
        let seq = |mut c: MultiplexedConnection| async move {
            let v: Option<u64> = redis::cmd("GET")
                .arg(seq_key(&ctx.room))
                .query_async(&mut c)
                .await
                .context("GET order sequence")?;
            Ok::<u64, anyhow::Error>(v.unwrap_or(0))
        };
        eprintln!("== {RB_TARGET}: warm-up");
        let warm_n = (ctx.clients as u64 * 500).max(20_000);
        let started = Instant::now();
        let warm = run_rb(&rb, &rb_args(ctx, addr, &sha, warm_n, "warm")).await?;
        let warm_rps = parse_rb_csv(&warm)
            .map(|f| f.rps)
            .unwrap_or_else(|| warm_n as f64 / started.elapsed().as_secs_f64().max(0.001));
        let n = ((warm_rps * ctx.duration.as_secs_f64()) as u64).max(10_000);
        eprintln!(
            "== {RB_TARGET}: {n} orders ({:.0}/s in the warm-up)",
            warm_rps
        );
        let before_seq = seq(conn.clone()).await?;
        let server_pids: Vec<u32> = proc.pid().into_iter().collect();
        let cpu_before = crate::cpu::sample(&server_pids);
        let children_before = crate::cpu::reaped_children_cpu();
        let out = run_rb(&rb, &rb_args(ctx, addr, &sha, n, "run")).await?;
        let cpu = cpu_before.until(&crate::cpu::sample(&server_pids));
        let tool_cpu = match (children_before, crate::cpu::reaped_children_cpu()) {
            (Some(a), Some(b)) => b.checked_sub(a),
            _ => None,
        };
        let accepted = seq(conn).await? - before_seq;
        let f = parse_rb_csv(&out)
            .with_context(|| format!("no figures in redis-benchmark's output: {out}"))?;
        let mut r = TargetResult::empty(RB_TARGET, scenario, ctx.catalog.name(), ctx.clients);
        r.duration_secs = n as f64 / f.rps.max(1.0);
        r.ok = accepted;
        r.rejected = n.saturating_sub(accepted);
        r.orders_per_sec = f.rps * accepted as f64 / n as f64;
        r.p50_ms = f.p50_ms;
        r.p99_ms = f.p99_ms;
        r.max_ms = f.max_ms;
        let per = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e6 / n as f64);
        r.server_cpu_us_per_order = cpu.servers.iter().map(|d| per(*d)).collect();
        r.bench_cpu_us_per_order = per(tool_cpu);
        r.server_rss_mib = proc.rss_bytes().map(|b| b as f64 / 1048576.0);
        Ok::<_, anyhow::Error>(r)
    }
    .await;
    let stopped = proc.kill().await;
    drop(dir);
    let r = result?;
    stopped.context("stopping redis-server")?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmark_csv_is_read_from_the_end() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"EVALSHA abc 5 k {\"sku\":\"s\",\"qty\":1}\",\"61234.50\",\"0.950\",\"0.200\",\"0.903\",\"1.500\",\"2.111\",\"5.000\"\n";
        assert_eq!(
            parse_rb_csv(out),
            Some(RbFigures {
                rps: 61234.5,
                p50_ms: 0.903,
                p99_ms: 2.111,
                max_ms: 5.0
            })
        );
        assert_eq!(parse_rb_csv("ERROR: connection refused"), None);
    }

    fn wire(bytes: &[u8]) -> Value {
        redis::parse_redis_value(bytes).unwrap()
    }

    #[test]
    fn script_replies_map_to_outcomes() {
        let ok = Value::Array(vec![Value::Int(1), Value::Int(17), Value::Int(0)]);
        assert_eq!(
            parse_place_reply(&ok).unwrap(),
            Outcome::Ok {
                order_id: Some("17".into()),
                conflicts: 0
            }
        );
        let sold = Value::Array(vec![Value::Int(0), Value::BulkString(b"sold_out".to_vec())]);
        assert_eq!(
            parse_place_reply(&sold).unwrap(),
            Outcome::Rejected {
                code: "sold_out".into()
            }
        );
        let closed = Value::Array(vec![
            Value::Int(0),
            Value::BulkString(b"not_on_sale".to_vec()),
        ]);
        assert!(matches!(
            parse_place_reply(&closed).unwrap(),
            Outcome::Error { .. }
        ));
        let noscript = wire(b"-NOSCRIPT No matching script\r\n");
        assert!(matches!(
            parse_place_reply(&noscript).unwrap(),
            Outcome::Retry { .. }
        ));
        assert!(parse_place_reply(&Value::Int(3)).is_err());
    }

    #[test]
    fn script_replies_decode_from_the_wire() {
        // What the script's `return {1, id, replayed}` and `{0, code}` look
        // like on the wire, decoded by the redis crate.
        assert_eq!(
            parse_place_reply(&wire(b"*3\r\n:1\r\n:42\r\n:1\r\n")).unwrap(),
            Outcome::Ok {
                order_id: Some("42".into()),
                conflicts: 0
            }
        );
        assert_eq!(
            parse_place_reply(&wire(b"*2\r\n:0\r\n$14\r\nlimit_exceeded\r\n")).unwrap(),
            Outcome::Rejected {
                code: "limit_exceeded".into()
            }
        );
        assert!(parse_place_reply(&wire(b"+OK\r\n")).is_err());
    }

    #[test]
    fn place_order_is_one_evalsha_with_five_keys() {
        let req = OrderReq {
            sku: 3,
            buyer: "buyer-9".into(),
            idempotency_key: "r-0-1".into(),
            contact: "+15550000001".into(),
        };
        let cmd = place_order_cmd("abc", "r", "sku-00003", &req);
        let order = order_json("sku-00003", &req);
        let mut want = Vec::new();
        let args: [&[u8]; 11] = [
            b"EVALSHA",
            b"abc",
            b"5",
            b"rk:{r}:listing:sku-00003",
            b"rk:{r}:bought:sku-00003",
            b"rk:{r}:idem:r-0-1",
            b"rk:{r}:order_seq",
            b"rk:{r}:orders",
            b"buyer-9",
            b"1",
            order.as_bytes(),
        ];
        want.extend_from_slice(b"*11\r\n");
        for a in args {
            want.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            want.extend_from_slice(a);
            want.extend_from_slice(b"\r\n");
        }
        assert_eq!(cmd.get_packed_command(), want);
        let v: serde_json::Value = serde_json::from_str(&order).unwrap();
        assert_eq!(v["contact"], "+15550000001");
        assert_eq!(v["idempotency_key"], "r-0-1");
        assert_eq!(v["price_cents"], PRICE_CENTS);
    }

    #[test]
    fn listing_is_one_hset() {
        let packed = listing_cmd("r", "sku-00001", 100).get_packed_command();
        let text = String::from_utf8(packed).unwrap();
        let key = listing_key("r", "sku-00001");
        assert!(text.starts_with(&format!("*10\r\n$4\r\nHSET\r\n${}\r\n{key}\r\n", key.len())));
        assert!(text.contains("$5\r\nstock\r\n$3\r\n100\r\n"));
        assert!(text.contains(&format!("$5\r\nlimit\r\n$7\r\n{PER_BUYER_LIMIT}\r\n")));
    }

    #[test]
    fn accessors() {
        assert_eq!(as_int(&Value::Int(3)), Some(3));
        assert_eq!(as_int(&Value::BulkString(b"12".to_vec())), Some(12));
        assert_eq!(as_int(&Value::Nil), None);
        assert_eq!(as_text(&Value::SimpleString("x".into())), Some("x".into()));
        assert_eq!(as_text(&Value::Nil), None);
    }

    #[test]
    fn keys_share_one_hash_tag_per_room() {
        for k in [
            listing_key("r", "s"),
            bought_key("r", "s"),
            idem_key("r", "k"),
            seq_key("r"),
            orders_key("r"),
        ] {
            assert!(k.starts_with("rk:{r}:"), "{k}");
        }
    }
}
