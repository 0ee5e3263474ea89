//! The NATS JetStream peer (issue 14): three `nats-server` processes in one
//! cluster on loopback, JetStream with `sync_interval: always` (every write
//! fsynced before it is acknowledged), one KV bucket replicated three times.
//! A listing is one key holding its stock; an order is the check-and-decrement
//! users build on JetStream KV: read the key's value and revision, refuse
//! `sold_out` when it is below the quantity, else write the decremented value
//! with `Nats-Expected-Last-Subject-Sequence` set to that revision (a
//! compare-and-set). A lost race is read again and retried, counted in
//! `conflicts` as etcd's are. The acknowledgement's stream sequence is the
//! order id. Idempotency keys and per-buyer limits are not stored: JetStream
//! has no transaction across keys, so this peer does less per order than
//! roomkeeper, Redis or etcd (the report says so).
//!
//! The client is the NATS text protocol over one TCP connection per buyer
//! (request and reply through the buyer's own inbox), written here: the
//! protocol is a handful of line commands, and a hand-written client costs
//! no dependency tree in this crate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::procs::{self, free_ports, loopback, Proc, ProcSpec, WorkDir};
use crate::report::TargetResult;
use crate::workload::{self, sku_name, Driver, OrderReq, Outcome};
use crate::Ctx;

pub const TARGET: &str = "nats";
pub const CLIENT: &str = "NATS text protocol over tokio (the bench's own): one connection per buyer, \
     JetStream KV get + compare-and-set (Nats-Expected-Last-Subject-Sequence), retried on conflict; \
     no idempotency record or buyer limit (no multi-key transaction)";

/// The KV bucket the listings live in.
const BUCKET: &str = "rk";
/// A request that takes longer than this is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Compare-and-set attempts per order before it is retried from scratch.
const MAX_CAS: u32 = 64;

/// A message delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Msg {
    pub headers: Vec<(String, String)>,
    /// The status line of a header block (`NATS/1.0 503` → "503").
    pub status: Option<String>,
    pub payload: Vec<u8>,
}

impl Msg {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A header block's status (`NATS/1.0 503` → "503") and its headers.
pub type HeaderBlock = (Option<String>, Vec<(String, String)>);

/// Parses a NATS header block (`NATS/1.0[ status]\r\nK: V\r\n…\r\n\r\n`).
pub fn parse_headers(block: &[u8]) -> Result<HeaderBlock> {
    let text = std::str::from_utf8(block).context("headers are not UTF-8")?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let rest = first
        .strip_prefix("NATS/1.0")
        .ok_or_else(|| anyhow!("bad header block start {first:?}"))?;
    let status = rest
        .split_whitespace()
        .next()
        .map(str::to_string)
        .filter(|s| !s.is_empty());
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Ok((status, headers))
}

/// A header block for `HPUB`.
pub fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = b"NATS/1.0\r\n".to_vec();
    for (k, v) in headers {
        b.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    b.extend_from_slice(b"\r\n");
    b
}

/// One client connection with one inbox subscription.
pub struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    inbox: String,
    next: u64,
    line: String,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect {addr}: timed out"))?
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut c = Self {
            rd: BufReader::new(rd),
            wr,
            inbox: format!("_INBOX.{}", procs::random_hex(8)?),
            next: 0,
            line: String::new(),
        };
        c.read_line().await?;
        if !c.line.starts_with("INFO ") {
            bail!("nats: expected INFO, got {:?}", c.line);
        }
        let connect = r#"{"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"protocol":1,"lang":"rust","version":"roomkeeper-bench"}"#;
        let hello = format!("CONNECT {connect}\r\nSUB {}.* 1\r\nPING\r\n", c.inbox);
        c.wr.write_all(hello.as_bytes()).await?;
        loop {
            c.read_line().await?;
            match c.line.as_str() {
                "PONG" => return Ok(c),
                "+OK" => {}
                l if l.starts_with("-ERR") => bail!("nats: {l}"),
                _ => {}
            }
        }
    }

    async fn read_line(&mut self) -> Result<()> {
        self.line.clear();
        let n = self.rd.read_line(&mut self.line).await?;
        if n == 0 {
            bail!("nats: connection closed");
        }
        let trimmed = self.line.trim_end_matches(['\r', '\n']).len();
        self.line.truncate(trimmed);
        Ok(())
    }

    /// Publishes `payload` (with `headers`) to `subject` and waits for the
    /// one reply.
    pub async fn request(
        &mut self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<Msg> {
        self.next += 1;
        let reply = format!("{}.{}", self.inbox, self.next);
        let mut frame = Vec::with_capacity(128 + payload.len());
        if headers.is_empty() {
            frame.extend_from_slice(
                format!("PUB {subject} {reply} {}\r\n", payload.len()).as_bytes(),
            );
        } else {
            let h = header_block(headers);
            frame.extend_from_slice(
                format!(
                    "HPUB {subject} {reply} {} {}\r\n",
                    h.len(),
                    h.len() + payload.len()
                )
                .as_bytes(),
            );
            frame.extend_from_slice(&h);
        }
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.wr.write_all(&frame).await?;
        tokio::time::timeout(REQUEST_TIMEOUT, self.reply_to(&reply))
            .await
            .map_err(|_| anyhow!("nats: no reply to {subject} within {REQUEST_TIMEOUT:?}"))?
    }

    /// Reads until the message for `reply` arrives (answering PINGs,
    /// dropping late replies to earlier requests).
    async fn reply_to(&mut self, reply: &str) -> Result<Msg> {
        loop {
            self.read_line().await?;
            let line = std::mem::take(&mut self.line);
            let mut parts = line.split_whitespace();
            match parts.next() {
                Some("PING") => self.wr.write_all(b"PONG\r\n").await?,
                Some("PONG") | Some("+OK") => {}
                Some("-ERR") => bail!("nats: {line}"),
                Some(op @ ("MSG" | "HMSG")) => {
                    let args: Vec<&str> = parts.collect();
                    let subject = args.first().copied().unwrap_or_default();
                    // MSG subject sid [reply] size; HMSG subject sid [reply] hdr total.
                    let (hdr, total) = if op == "MSG" {
                        (0, args.last().and_then(|s| s.parse().ok()).unwrap_or(0))
                    } else {
                        let n = args.len();
                        let hdr = args
                            .get(n.wrapping_sub(2))
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        (hdr, args.last().and_then(|s| s.parse().ok()).unwrap_or(0))
                    };
                    let mut body = vec![0u8; total + 2];
                    self.rd.read_exact(&mut body).await?;
                    body.truncate(total);
                    if subject != reply {
                        continue;
                    }
                    let (status, headers) = if hdr > 0 {
                        parse_headers(&body[..hdr])?
                    } else {
                        (None, Vec::new())
                    };
                    return Ok(Msg {
                        headers,
                        status,
                        payload: body[hdr..].to_vec(),
                    });
                }
                _ => {}
            }
        }
    }
}

fn kv_subject(key: &str) -> String {
    format!("$KV.{BUCKET}.{key}")
}

/// What a JetStream publish acknowledgement says.
#[derive(Debug, PartialEq, Eq)]
pub enum PubAck {
    Stored {
        seq: u64,
    },
    /// The subject's last sequence was not the expected one (a lost race).
    WrongLastSequence,
    Failed(String),
}

pub fn parse_pub_ack(msg: &Msg) -> PubAck {
    if let Some(status) = &msg.status {
        return PubAck::Failed(format!("status {status}"));
    }
    let v: serde_json::Value = match serde_json::from_slice(&msg.payload) {
        Ok(v) => v,
        Err(e) => return PubAck::Failed(format!("ack is not JSON: {e}")),
    };
    if let Some(err) = v.get("error") {
        // JSStreamWrongLastSequenceErrF (10071) and, for an expected
        // subject sequence, JSStreamWrongLastSequenceConstantErr (10164).
        if matches!(
            err.get("err_code").and_then(|c| c.as_u64()),
            Some(10071 | 10164)
        ) {
            return PubAck::WrongLastSequence;
        }
        return PubAck::Failed(err.to_string());
    }
    match v.get("seq").and_then(|s| s.as_u64()) {
        Some(seq) => PubAck::Stored { seq },
        None => PubAck::Failed(format!("ack without seq: {v}")),
    }
}

/// The stock and revision a direct get of a listing returned.
pub fn parse_direct_get(msg: &Msg) -> Result<(i64, u64)> {
    if let Some(status) = &msg.status {
        bail!("direct get: status {status}");
    }
    let rev = msg
        .header("Nats-Sequence")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("direct get without Nats-Sequence"))?;
    let stock = std::str::from_utf8(&msg.payload)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| anyhow!("listing value is not a number"))?;
    Ok((stock, rev))
}

pub struct NatsDriver {
    addr: SocketAddr,
    conn: Option<Conn>,
    skus: std::sync::Arc<Vec<String>>,
}

impl NatsDriver {
    async fn try_place(conn: &mut Conn, key: &str) -> Result<Outcome> {
        let get = format!("$JS.API.DIRECT.GET.KV_{BUCKET}.{}", kv_subject(key));
        let subject = kv_subject(key);
        for conflicts in 0..MAX_CAS {
            let (stock, rev) = parse_direct_get(&conn.request(&get, &[], b"").await?)?;
            if stock < 1 {
                return Ok(Outcome::Rejected {
                    code: "sold_out".into(),
                });
            }
            let rev = rev.to_string();
            let value = (stock - 1).to_string();
            let ack = conn
                .request(
                    &subject,
                    &[("Nats-Expected-Last-Subject-Sequence", &rev)],
                    value.as_bytes(),
                )
                .await?;
            match parse_pub_ack(&ack) {
                PubAck::Stored { seq } => {
                    return Ok(Outcome::Ok {
                        order_id: Some(seq.to_string()),
                        conflicts,
                    })
                }
                PubAck::WrongLastSequence => continue,
                PubAck::Failed(why) => {
                    return Ok(Outcome::Retry {
                        reason: format!("nats: {why}"),
                        after_ms: 10,
                    })
                }
            }
        }
        Ok(Outcome::Retry {
            reason: format!("nats: {MAX_CAS} compare-and-set conflicts in a row"),
            after_ms: 1,
        })
    }
}

impl Driver for NatsDriver {
    async fn place(&mut self, req: &OrderReq) -> Outcome {
        let key = self.skus[req.sku].clone();
        let conn = match &mut self.conn {
            Some(c) => c,
            None => match Conn::connect(self.addr).await {
                Ok(c) => self.conn.insert(c),
                Err(e) => {
                    return Outcome::Retry {
                        reason: format!("nats: {e:#}"),
                        after_ms: 10,
                    }
                }
            },
        };
        match Self::try_place(conn, &key).await {
            Ok(o) => o,
            Err(e) => {
                // The connection's state is unknown: a fresh one next time.
                self.conn = None;
                Outcome::Retry {
                    reason: format!("{e:#}"),
                    after_ms: 10,
                }
            }
        }
    }
}

/// The configuration file of member `i` of three.
pub fn member_config(
    i: usize,
    client_ports: &[u16],
    cluster_ports: &[u16],
    store: &std::path::Path,
) -> String {
    let routes: Vec<String> = cluster_ports
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, p)| format!("\"nats://127.0.0.1:{p}\""))
        .collect();
    format!(
        "server_name: m{n}\nlisten: \"127.0.0.1:{client}\"\n\
         jetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n\
         cluster {{\n  name: roomkeeper-bench\n  listen: \"127.0.0.1:{cluster}\"\n  routes: [{routes}]\n}}\n",
        n = i + 1,
        client = client_ports[i],
        store = store.display(),
        cluster = cluster_ports[i],
        routes = routes.join(", "),
    )
}

/// The KV bucket's stream: three replicas, one value per key, direct gets.
pub fn bucket_stream_config() -> serde_json::Value {
    serde_json::json!({
        "name": format!("KV_{BUCKET}"),
        "subjects": [format!("$KV.{BUCKET}.>")],
        "retention": "limits",
        "max_msgs_per_subject": 1,
        "discard": "new",
        "storage": "file",
        "num_replicas": 3,
        "allow_direct": true,
        "allow_rollup_hdrs": true,
        "deny_delete": true,
        "deny_purge": false,
        "duplicate_window": 120_000_000_000u64,
    })
}

async fn create_bucket(addr: SocketAddr, ctx: &Ctx) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conn = Conn::connect(addr).await?;
    let body = bucket_stream_config().to_string();
    loop {
        let r = conn
            .request(
                &format!("$JS.API.STREAM.CREATE.KV_{BUCKET}"),
                &[],
                body.as_bytes(),
            )
            .await;
        let why = match r {
            Ok(m) => {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                match v.get("error") {
                    None if m.status.is_none() => break,
                    Some(e) => e.to_string(),
                    None => format!("status {:?}", m.status),
                }
            }
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("creating the KV bucket: {why}");
        }
        // JetStream answers "temporarily unavailable" until its meta group
        // has a leader.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stock = ctx.catalog.stock().to_string();
    for i in 0..ctx.catalog.skus() {
        let ack = conn
            .request(&kv_subject(&sku_name(i)), &[], stock.as_bytes())
            .await
            .context("nats setup: put a listing")?;
        match parse_pub_ack(&ack) {
            PubAck::Stored { .. } => {}
            other => bail!("nats setup: put {}: {other:?}", sku_name(i)),
        }
    }
    Ok(())
}

pub async fn run(ctx: &Ctx) -> Result<TargetResult> {
    let scenario = ctx.scenario.name();
    let Some(bin) = procs::find_binary(&ctx.nats_bin) else {
        let why = format!(
            "binary `{}` not found (scripts/bench.sh builds it: go install github.com/nats-io/nats-server/v2@{})",
            ctx.nats_bin, NATS_VERSION
        );
        return Ok(ctx.skipped(TARGET, why));
    };
    let dir = WorkDir::create("nats", ctx.keep_dir)?;
    let ports = free_ports(6)?;
    let (client_ports, cluster_ports) = ports.split_at(3);
    eprintln!(
        "== nats: starting three members, JetStream sync_interval always ({})",
        bin.display()
    );
    let mut procs = Vec::new();
    for i in 0..3 {
        let store = dir.path().join(format!("m{}", i + 1));
        let conf = dir.path().join(format!("m{}.conf", i + 1));
        std::fs::write(&conf, member_config(i, client_ports, cluster_ports, &store))
            .context("writing a nats-server config")?;
        procs.push(Proc::spawn(ProcSpec {
            name: format!("nats-server m{}", i + 1),
            program: bin.clone(),
            args: vec!["-c".into(), conf.display().to_string()],
            env: vec![],
            log: dir.path().join(format!("m{}.log", i + 1)),
        })?);
    }
    let addrs: Vec<SocketAddr> = client_ports.iter().map(|p| loopback(*p)).collect();
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        for a in &addrs {
            loop {
                for p in procs.iter_mut() {
                    p.check_alive()?;
                }
                if Conn::connect(*a).await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("nats-server on {a} did not answer within 20 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        create_bucket(addrs[0], ctx).await?;
        let skus = std::sync::Arc::new((0..ctx.catalog.skus()).map(sku_name).collect::<Vec<_>>());
        let mut drivers = Vec::with_capacity(ctx.clients);
        for i in 0..ctx.clients {
            let addr = addrs[i % addrs.len()];
            drivers.push(NatsDriver {
                addr,
                conn: Some(Conn::connect(addr).await?),
                skus: skus.clone(),
            });
        }
        let plan = ctx.plan(
            TARGET,
            false,
            procs.iter().filter_map(|p| p.pid()).collect(),
        );
        let stats = workload::run_load(&plan, drivers, Instant::now()).await?;
        let mut r =
            TargetResult::from_stats(TARGET, scenario, ctx.catalog.name(), ctx.clients, &stats);
        r.server_rss_mib = procs
            .iter()
            .filter_map(|p| p.rss_bytes())
            .max()
            .map(|b| b as f64 / 1048576.0);
        Ok::<_, anyhow::Error>(r)
    }
    .await;
    let stopped = procs::kill_all(&mut procs).await;
    drop(dir);
    let r = result?;
    stopped.context("stopping nats-server")?;
    Ok(r)
}

/// The nats-server release scripts/bench.sh builds.
pub const NATS_VERSION: &str = "v2.15.3";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_status_lines_are_read() {
        let block = header_block(&[("Nats-Expected-Last-Subject-Sequence", "42")]);
        assert_eq!(
            block,
            b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: 42\r\n\r\n".to_vec()
        );
        let (status, h) = parse_headers(&block).unwrap();
        assert_eq!(status, None);
        assert_eq!(h[0].1, "42");
        let (status, _) = parse_headers(b"NATS/1.0 404 Message Not Found\r\n\r\n").unwrap();
        assert_eq!(status.as_deref(), Some("404"));
        assert!(parse_headers(b"HTTP/1.1 200\r\n\r\n").is_err());
    }

    #[test]
    fn acks_conflicts_and_errors_are_told_apart() {
        let msg = |p: &str| Msg {
            payload: p.as_bytes().to_vec(),
            ..Msg::default()
        };
        assert_eq!(
            parse_pub_ack(&msg(r#"{"stream":"KV_rk","seq":7}"#)),
            PubAck::Stored { seq: 7 }
        );
        assert_eq!(
            parse_pub_ack(&msg(
                r#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 6"}}"#
            )),
            PubAck::WrongLastSequence
        );
        assert_eq!(
            parse_pub_ack(&msg(
                r#"{"error":{"code":400,"description":"wrong last sequence","err_code":10164}}"#
            )),
            PubAck::WrongLastSequence
        );
        assert!(matches!(
            parse_pub_ack(&msg(r#"{"error":{"code":503,"description":"no quorum"}}"#)),
            PubAck::Failed(_)
        ));
        let no_responders = Msg {
            status: Some("503".into()),
            ..Msg::default()
        };
        assert!(matches!(parse_pub_ack(&no_responders), PubAck::Failed(_)));
    }

    #[test]
    fn a_direct_get_gives_stock_and_revision() {
        let m = Msg {
            headers: vec![("Nats-Sequence".into(), "12".into())],
            status: None,
            payload: b"99".to_vec(),
        };
        assert_eq!(parse_direct_get(&m).unwrap(), (99, 12));
        let missing = Msg {
            status: Some("404".into()),
            ..Msg::default()
        };
        assert!(parse_direct_get(&missing).is_err());
    }

    #[test]
    fn members_route_to_each_other_and_fsync_every_write() {
        let c = member_config(1, &[1, 2, 3], &[11, 12, 13], std::path::Path::new("/s/m2"));
        assert!(c.contains("server_name: m2"));
        assert!(c.contains("listen: \"127.0.0.1:2\""));
        assert!(c.contains("sync_interval: always"));
        assert!(c.contains("nats://127.0.0.1:11") && c.contains("nats://127.0.0.1:13"));
        assert!(!c.contains("nats://127.0.0.1:12"));
        assert_eq!(bucket_stream_config()["num_replicas"], 3);
    }
}
