//! The Redis peer: one `redis-server` on loopback with `appendonly yes`,
//! `appendfsync always` (durable on one node, not replicated), spoken to in
//! RESP over one TCP connection per buyer. place_order is one Lua script that
//! checks the idempotency key, the listing's state and stock and the
//! per-buyer limit, then decrements the stock and stores the order.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::procs::{self, free_ports, loopback, Proc, ProcSpec, WorkDir};
use super::report::TargetResult;
use super::resp::{self, Value};
use super::workload::{self, sku_name, Driver, OrderReq, Outcome, Plan};
use super::{Ctx, PER_BUYER_LIMIT, PRICE_CENTS};

pub const TARGET: &str = "redis";

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

/// Decodes the script's reply.
pub fn parse_place_reply(v: &Value) -> Result<Outcome> {
    match v {
        Value::Array(Some(items)) => match items.first().and_then(Value::as_int) {
            Some(1) => {
                let id = items.get(1).and_then(Value::as_int);
                Ok(Outcome::Ok {
                    order_id: id.map(|i| i.to_string()),
                    conflicts: 0,
                })
            }
            Some(0) => {
                let code = items
                    .get(1)
                    .and_then(Value::as_text)
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
        Value::Error(e) => Ok(Outcome::Retry {
            reason: format!("redis: {e}"),
            after_ms: 10,
        }),
        other => bail!("unexpected script reply {other:?}"),
    }
}

/// One RESP connection; one command in flight (or a pipelined batch).
pub struct RespConn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl RespConn {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            buf: Vec::with_capacity(4096),
            out: Vec::with_capacity(1024),
        }
    }

    async fn stream(&mut self) -> Result<&mut TcpStream> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect redis {}", self.addr))?;
            s.set_nodelay(true).context("TCP_NODELAY")?;
            self.stream = Some(s);
            self.buf.clear();
        }
        self.stream
            .as_mut()
            .ok_or_else(|| anyhow!("no redis connection"))
    }

    async fn exchange(&mut self, replies: usize) -> Result<Vec<Value>> {
        let out = std::mem::take(&mut self.out);
        let stream = self.stream().await?;
        let wrote = stream.write_all(&out).await;
        self.out = out;
        self.out.clear();
        wrote.context("writing to redis")?;
        let mut values = Vec::with_capacity(replies);
        let mut chunk = [0u8; 16 * 1024];
        while values.len() < replies {
            if let Some((v, used)) = resp::parse(&self.buf)? {
                self.buf.drain(..used);
                values.push(v);
                continue;
            }
            let stream = self.stream().await?;
            let n = stream
                .read(&mut chunk)
                .await
                .context("reading from redis")?;
            if n == 0 {
                bail!("redis closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(values)
    }

    /// Sends commands in one write and reads one reply per command.
    pub async fn pipeline<A: AsRef<[u8]>>(&mut self, cmds: &[Vec<A>]) -> Result<Vec<Value>> {
        self.out.clear();
        for c in cmds {
            resp::encode_command(&mut self.out, c);
        }
        let result = tokio::time::timeout(Duration::from_secs(30), self.exchange(cmds.len())).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(anyhow!("redis did not answer within 30 s")),
        };
        if result.is_err() {
            self.stream = None;
            self.buf.clear();
        }
        result
    }

    pub async fn command<A: AsRef<[u8]>>(&mut self, args: Vec<A>) -> Result<Value> {
        let mut v = self.pipeline(&[args]).await?;
        v.pop().ok_or_else(|| anyhow!("no reply from redis"))
    }
}

pub struct RedisDriver {
    conn: RespConn,
    sha: String,
    room: String,
    skus: std::sync::Arc<Vec<String>>,
}

impl Driver for RedisDriver {
    async fn place(&mut self, req: &OrderReq) -> Outcome {
        let sku = &self.skus[req.sku];
        let order = serde_json::json!({
            "sku": sku, "buyer": req.buyer, "qty": 1, "price_cents": PRICE_CENTS,
            "contact": req.contact, "idempotency_key": req.idempotency_key,
        })
        .to_string();
        let args = vec![
            "EVALSHA".to_string(),
            self.sha.clone(),
            "5".into(),
            listing_key(&self.room, sku),
            bought_key(&self.room, sku),
            idem_key(&self.room, &req.idempotency_key),
            seq_key(&self.room),
            orders_key(&self.room),
            req.buyer.clone(),
            "1".into(),
            order,
        ];
        match self.conn.command(args).await {
            Ok(v) => parse_place_reply(&v).unwrap_or_else(|e| Outcome::Error {
                reason: format!("{e:#}"),
            }),
            Err(e) => Outcome::Retry {
                reason: format!("redis: {e:#}"),
                after_ms: 10,
            },
        }
    }
}

async fn wait_ready(proc: &mut Proc, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        proc.check_alive()?;
        let mut c = RespConn::new(addr);
        if let Ok(Value::Simple(s)) = c.command(vec!["PING"]).await {
            if s == "PONG" {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("redis-server did not answer PING within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setup(addr: SocketAddr, ctx: &Ctx) -> Result<String> {
    let mut c = RespConn::new(addr);
    let sha = c
        .command(vec!["SCRIPT", "LOAD", PLACE_ORDER_LUA])
        .await?
        .as_text()
        .ok_or_else(|| anyhow!("SCRIPT LOAD returned no SHA"))?;
    let stock = ctx.catalog.stock().to_string();
    let limit = PER_BUYER_LIMIT.to_string();
    let cmds: Vec<Vec<String>> = (0..ctx.catalog.skus())
        .map(|i| {
            vec![
                "HSET".into(),
                listing_key(&ctx.room, &sku_name(i)),
                "stock".into(),
                stock.clone(),
                "limit".into(),
                limit.clone(),
                "state".into(),
                "open".into(),
                "price_cents".into(),
                PRICE_CENTS.to_string(),
            ]
        })
        .collect();
    for batch in cmds.chunks(1000) {
        for v in c.pipeline(batch).await? {
            if let Value::Error(e) = v {
                bail!("redis setup: {e}");
            }
        }
    }
    Ok(sha)
}

pub async fn run(ctx: &Ctx) -> Result<TargetResult> {
    let scenario = ctx.scenario.name();
    let Some(bin) = procs::find_binary(&ctx.redis_bin) else {
        let why = format!(
            "binary `{}` not found (apt-get install redis-server)",
            ctx.redis_bin
        );
        eprintln!("\n!!!!! SKIPPED redis: {why}\n");
        return Ok(TargetResult::skipped(
            TARGET,
            scenario,
            ctx.catalog.name(),
            ctx.clients,
            why,
        ));
    };
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
    let mut proc = Proc::spawn(spec)?;
    let result = async {
        wait_ready(&mut proc, addr).await?;
        let sha = setup(addr, ctx).await?;
        let skus = std::sync::Arc::new((0..ctx.catalog.skus()).map(sku_name).collect::<Vec<_>>());
        let drivers = (0..ctx.clients)
            .map(|_| RedisDriver {
                conn: RespConn::new(addr),
                sha: sha.clone(),
                room: ctx.room.clone(),
                skus: skus.clone(),
            })
            .collect();
        let plan = Plan {
            label: format!("redis {} {}c", ctx.catalog.name(), ctx.clients),
            run_id: ctx.run_id.clone(),
            skus: ctx.catalog.skus(),
            warmup: ctx.warmup,
            duration: ctx.duration,
            record_acks: false,
            retry_grace: ctx.retry_grace(),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_replies_map_to_outcomes() {
        let ok = Value::Array(Some(vec![Value::Int(1), Value::Int(17), Value::Int(0)]));
        assert_eq!(
            parse_place_reply(&ok).unwrap(),
            Outcome::Ok {
                order_id: Some("17".into()),
                conflicts: 0
            }
        );
        let sold = Value::Array(Some(vec![
            Value::Int(0),
            Value::Bulk(Some(b"sold_out".to_vec())),
        ]));
        assert_eq!(
            parse_place_reply(&sold).unwrap(),
            Outcome::Rejected {
                code: "sold_out".into()
            }
        );
        let closed = Value::Array(Some(vec![
            Value::Int(0),
            Value::Bulk(Some(b"not_on_sale".to_vec())),
        ]));
        assert!(matches!(
            parse_place_reply(&closed).unwrap(),
            Outcome::Error { .. }
        ));
        let noscript = Value::Error("NOSCRIPT No matching script".into());
        assert!(matches!(
            parse_place_reply(&noscript).unwrap(),
            Outcome::Retry { .. }
        ));
        assert!(parse_place_reply(&Value::Int(3)).is_err());
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
