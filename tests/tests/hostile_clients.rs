//! Hostile clients against real node processes over real sockets (issue 16,
//! item 3): slow-loris heads and bodies, idle floods, connection caps, every
//! refusal a JSON body, bounded numbers and ids, and refused orders that leave
//! no state behind.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use roomkeeper_e2e::{http, wait_until, Cluster, ClusterOptions, ADMIN_TOKEN, CLIENT_TOKEN};
use serde_json::{json, Value};

/// One node (or three) with short edge timeouts so the tests run fast.
fn cluster(nodes: usize, extra: &[&str]) -> Cluster {
    let mut opts = ClusterOptions::nodes(nodes);
    opts.extra_args = extra.iter().map(|s| s.to_string()).collect();
    Cluster::start_initialized(opts)
}

/// A raw response: status, lower-cased head, body text.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }
}

fn parse(raw: &[u8]) -> Option<Raw> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Raw {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

/// Sends raw bytes, reads until the server closes (or `timeout`).
fn raw(addr: &str, bytes: &[u8], timeout: Duration) -> Option<Raw> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    // A server may refuse before reading everything: its answer still counts.
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse(&out)
}

fn request(method: &str, path: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         authorization: Bearer {CLIENT_TOKEN}\r\ncontent-length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// How a connection ended while a client trickled bytes into it.
enum Ended {
    Closed { after: Duration, response: Vec<u8> },
    StillOpen,
}

/// Writes `prefix`, then one byte of `drip` every `every`, reading between
/// bytes, until the server closes the connection or `give_up` passes.
fn trickle(addr: &str, prefix: &[u8], drip: u8, every: Duration, give_up: Duration) -> Ended {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(every)).expect("timeout");
    s.write_all(prefix).expect("write prefix");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < give_up {
        match s.read(&mut buf) {
            Ok(0) => {
                return Ended::Closed {
                    after: started.elapsed(),
                    response,
                }
            }
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                return Ended::Closed {
                    after: started.elapsed(),
                    response,
                }
            }
        }
        if s.write_all(&[drip]).is_err() {
            return Ended::Closed {
                after: started.elapsed(),
                response,
            };
        }
    }
    Ended::StillOpen
}

fn metric(c: &Cluster, id: u64, name_and_labels: &str) -> f64 {
    let r = c.admin("GET", id, "/metrics", None).expect("metrics");
    let text = r.body.as_str().unwrap_or_default().to_string();
    text.lines()
        .filter(|l| l.starts_with(name_and_labels.split('{').next().unwrap_or("")))
        .filter(|l| {
            name_and_labels
                .split(['{', '}', ','])
                .skip(1)
                .filter(|p| !p.is_empty())
                .all(|p| l.contains(p))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Opens `n` connections to `addr` from the loopback address `from` (another
/// client than the harness's 127.0.0.1) and sends nothing on them.
fn idle_connections(from: &str, addr: &str, n: usize) -> Vec<std::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr: SocketAddr = addr.parse().expect("addr");
    let local: SocketAddr = format!("{from}:0").parse().expect("from");
    rt.block_on(async {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.bind(local).expect("bind");
            let s = sock.connect(addr).await.expect("connect");
            out.push(s.into_std().expect("std"));
        }
        out
    })
}

#[test]
fn slow_heads_slow_bodies_and_idle_keep_alives_are_dropped_within_the_timeouts() {
    let c = cluster(
        1,
        &[
            "--http-header-timeout-ms",
            "1000",
            "--http-body-timeout-ms",
            "1000",
        ],
    );
    let api = c.node(1).api_addr.clone();
    let every = Duration::from_millis(120);

    // A head sent a byte every 0.12 s (the review's attack) is dropped, unanswered.
    let head = b"GET /v1/rooms/r HTTP/1.1\r\nhost: x\r\n";
    match trickle(&api, head, b'a', every, Duration::from_secs(8)) {
        Ended::Closed { after, response } => {
            assert!(
                after < Duration::from_millis(2500),
                "slow head held {after:?}"
            );
            assert!(
                !String::from_utf8_lossy(&response).starts_with("HTTP/1.1 2"),
                "slow head was served"
            );
        }
        Ended::StillOpen => panic!("a slow-loris head was kept for 8 s"),
    }

    // A body trickled a byte at a time is refused with 408 body_timeout.
    let mut prefix = request(
        "POST",
        "/v1/rooms/r/orders",
        "content-type: application/json\r\n",
        b"",
    );
    // Claim 4000 bytes of body, send them slowly.
    let text =
        String::from_utf8_lossy(&prefix).replace("content-length: 0", "content-length: 4000");
    prefix = text.into_bytes();
    match trickle(&api, &prefix, b' ', every, Duration::from_secs(8)) {
        Ended::Closed { after, response } => {
            assert!(
                after < Duration::from_millis(2500),
                "slow body held {after:?}"
            );
            let r = parse(&response).expect("a response to the slow body");
            assert_eq!(r.status, 408, "{r:?}");
            assert_eq!(r.json()["code"], "body_timeout");
        }
        Ended::StillOpen => panic!("a slow body was kept for 8 s"),
    }

    // A body shorter than its Content-Length is not waited on.
    let started = Instant::now();
    let short = String::from_utf8_lossy(&request(
        "POST",
        "/v1/rooms/r/orders",
        "content-type: application/json\r\n",
        br#"{"sku":"s""#,
    ))
    .replace("content-length: 10", "content-length: 100");
    let r = raw(&api, short.as_bytes(), Duration::from_secs(8)).expect("short body answered");
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.json()["code"], "body_timeout");

    // An idle keep-alive connection is closed after the head timeout.
    let mut s = TcpStream::connect(&api).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let keep_alive = format!(
        "GET /v1/rooms/none HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_TOKEN}\r\n\r\n"
    );
    s.write_all(keep_alive.as_bytes()).expect("write");
    let started = Instant::now();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let idle_for = started.elapsed();
    let r = parse(&all).expect("first response");
    assert_eq!(r.status, 404, "{r:?}");
    assert!(
        idle_for < Duration::from_millis(2500),
        "idle keep-alive connection kept {idle_for:?}"
    );

    // Every one of these was counted.
    wait_until(Duration::from_secs(3), "timeouts counted", || {
        metric(&c, 1, "roomkeeper_http_connection_errors_total{listener=\"client\",kind=\"body_timeout\"}") >= 2.0
            && metric(&c, 1, "roomkeeper_http_connection_errors_total{listener=\"client\",kind=\"header_timeout\"}") >= 1.0
    });
    // And the node still serves.
    let r = c.client("GET", 1, "/v1/rooms/none", None).expect("served");
    assert_eq!(r.code(), "room_not_found");
}

#[test]
fn a_thousand_idle_connections_leave_fds_and_memory_bounded_and_others_served() {
    let c = cluster(
        1,
        &[
            // Long enough that the first 100 are still held when the last
            // of the 1000 connects (a loaded CI machine took 6.1 s for them).
            "--http-header-timeout-ms",
            "20000",
            "--http-max-connections-per-peer",
            "100",
        ],
    );
    let pid = c.node(1).pid().expect("pid");
    let api = c.node(1).api_addr.clone();
    let fds_before = open_fds(pid);
    let rss_before = rss_kib(pid);

    let started = Instant::now();
    let idle = idle_connections("127.0.0.2", &api, 1000);
    eprintln!("1000 connections made in {:?}", started.elapsed());
    wait_until(Duration::from_secs(5), "900 connections refused", || {
        metric(
            &c,
            1,
            "roomkeeper_http_connections_refused_total{listener=\"client\",reason=\"max_connections_per_peer\"}",
        ) >= 900.0
    });
    let fds_during = open_fds(pid);
    let rss_during = rss_kib(pid);
    eprintln!(
        "1000 idle connections: fds {fds_before} -> {fds_during}, RSS {rss_before} -> {rss_during} KiB"
    );
    assert!(
        fds_during <= fds_before + 100 + 16,
        "fds grew from {fds_before} to {fds_during}"
    );
    assert!(
        rss_during <= rss_before + 32 * 1024,
        "RSS grew from {rss_before} to {rss_during} KiB"
    );
    let open = metric(
        &c,
        1,
        "roomkeeper_http_open_connections{listener=\"client\"}",
    );
    assert!((100.0..=102.0).contains(&open), "{open} connections open");

    // A normal client from another address is served while the flood holds.
    let r = c.client("GET", 1, "/v1/rooms/none", None).expect("served");
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "room_not_found");

    // A refused connection was told why, in JSON.
    let mut last = idle.into_iter().last().expect("a connection");
    last.set_nonblocking(false).expect("blocking");
    last.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut got = Vec::new();
    let _ = last.read_to_end(&mut got);
    let r = parse(&got).expect("refusal");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["code"], "too_many_connections");

    // The kept ones are closed by the head timeout: nothing stays open.
    wait_until(Duration::from_secs(30), "idle connections closed", || {
        metric(
            &c,
            1,
            "roomkeeper_http_open_connections{listener=\"client\"}",
        ) == 0.0
    });
    assert!(open_fds(pid) <= fds_before + 4, "fds not given back");
}

#[test]
fn the_total_connection_cap_refuses_with_json_and_counts() {
    let c = cluster(
        1,
        &[
            "--http-max-connections",
            "50",
            "--http-max-connections-per-peer",
            "1000",
        ],
    );
    let api = c.node(1).api_addr.clone();
    let mut kept = idle_connections("127.0.0.3", &api, 60);
    wait_until(Duration::from_secs(5), "10 connections refused", || {
        metric(
            &c,
            1,
            "roomkeeper_http_connections_refused_total{listener=\"client\",reason=\"max_connections\"}",
        ) >= 10.0
    });
    let r = raw(
        &api,
        &request("GET", "/v1/rooms/r", "", b""),
        Duration::from_secs(3),
    )
    .expect("refusal");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["code"], "too_many_connections");
    assert!(r.head.contains("retry-after: 1"));
    // The admin listener has its own cap and still answers.
    assert_eq!(c.status(1).map(|s| s["node_id"].clone()), Some(json!(1)));
    kept.clear();
    wait_until(Duration::from_secs(5), "cap freed", || {
        c.client("GET", 1, "/v1/rooms/none", None)
            .map(|r| r.status == 404)
            .unwrap_or(false)
    });
}

#[test]
fn every_refusal_is_a_documented_json_error() {
    let c = cluster(1, &[]);
    let api = c.node(1).api_addr.clone();
    let admin = c.node(1).admin_addr.clone();
    c.create_room("r", &[("s", 10, 2)]);
    let t = Duration::from_secs(5);
    let admin_req = |method: &str, path: &str, body: &[u8]| {
        String::from_utf8_lossy(&request(
            method,
            path,
            "content-type: application/json\r\n",
            body,
        ))
        .replace(CLIENT_TOKEN, ADMIN_TOKEN)
        .into_bytes()
    };
    let json_ct = "content-type: application/json\r\n";
    let (a, m) = (api.as_str(), admin.as_str());
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("unknown route", a, request("GET", "/nope", "", b""), 404, "not_found"),
        ("method not allowed", a, request("DELETE", "/v1/rooms/r", "", b""), 405, "method_not_allowed"),
        ("invalid UTF-8 in a path", a, request("GET", "/v1/rooms/%FF%FE", "", b""), 400, "bad_request"),
        ("no token", a, b"GET /v1/rooms/r HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(), 401, "unauthorized"),
        ("wrong media type", a, request("PUT", "/v1/rooms/r", "content-type: text/plain\r\n", b"{}"), 415, "unsupported_media_type"),
        ("malformed JSON", a, request("PUT", "/v1/rooms/r", json_ct, b"{"), 400, "invalid_json"),
        ("oversized client body", a, request("PUT", "/v1/rooms/r", json_ct, &vec![b' '; 20 * 1024]), 413, "body_too_large"),
        ("bad query", a, request("GET", "/v1/rooms/r?consistency=maybe", "", b""), 400, "invalid_query"),
        ("huge price", a, request("PUT", "/v1/rooms/r/listings/s", json_ct,
            br#"{"price_cents":18446744073709551615,"stock":1,"per_buyer_limit":1,"state":"open"}"#), 400, "invalid_request"),
        ("price above 2^53", a, request("PUT", "/v1/rooms/r/listings/s", json_ct,
            br#"{"price_cents":9007199254740993,"stock":1,"per_buyer_limit":1,"state":"open"}"#), 400, "invalid_request"),
        ("price above 2^64", a, request("PUT", "/v1/rooms/r/listings/s", json_ct,
            br#"{"price_cents":18446744073709551616,"stock":1,"per_buyer_limit":1,"state":"open"}"#), 422, "invalid_json"),
        ("room `.`", a, request("PUT", "/v1/rooms/.", json_ct, br#"{"home_region":"eu","state":"live"}"#), 400, "invalid_request"),
        ("room `..` escaped", a, request("PUT", "/v1/rooms/%2E%2E", json_ct, br#"{"home_region":"eu","state":"live"}"#), 400, "invalid_request"),
        ("sku `..`", a, request("PUT", "/v1/rooms/r/listings/..", json_ct,
            br#"{"price_cents":1,"stock":1,"per_buyer_limit":1,"state":"open"}"#), 400, "invalid_request"),
        ("buyer `.`", a, request("POST", "/v1/rooms/r/orders", json_ct,
            br#"{"sku":"s","buyer":".","qty":1,"idempotency_key":"k"}"#), 400, "invalid_request"),
        ("admin unknown route", m, admin_req("GET", "/admin/nope", b""), 404, "not_found"),
        ("admin method not allowed", m, admin_req("DELETE", "/healthz", b""), 405, "method_not_allowed"),
        ("admin oversized body", m, admin_req("POST", "/admin/init", &vec![b' '; 100 * 1024]), 413, "body_too_large"),
        ("admin malformed JSON", m, admin_req("POST", "/admin/init", b"{"), 400, "invalid_json"),
    ];
    for (what, addr, req, status, code) in cases {
        let r = raw(addr, &req, t).unwrap_or_else(|| panic!("{what}: no response"));
        assert_eq!(r.status, status, "{what}: {r:?}");
        assert!(
            r.head.contains("content-type: application/json"),
            "{what}: not JSON: {r:?}"
        );
        assert_eq!(r.json()["code"], code, "{what}: {r:?}");
        assert!(r.json()["message"].is_string(), "{what}: {r:?}");
    }

    // The largest price is accepted, and read back exactly.
    let body =
        json!({"price_cents": 1_000_000_000u64, "stock": 1, "per_buyer_limit": 1, "state": "open"});
    let r = c
        .client(
            "PUT",
            1,
            "/v1/rooms/r/listings/max",
            Some(&body.to_string()),
        )
        .expect("put");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["price_cents"], json!(1_000_000_000u64));

    // hyper answers a malformed head or an oversized one itself, before any
    // service runs, with an empty body and the connection closed: these are
    // the documented exceptions (api/openapi.yaml, "Refusals without a body").
    let big_header = format!(
        "GET /v1/rooms/r HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let r = raw(&api, big_header.as_bytes(), t).expect("431");
    assert_eq!(r.status, 431, "{r:?}");
    let r = raw(&api, b"GET /v1 rooms HTTP/1.1 extra\r\n\r\n", t).expect("400");
    assert_eq!(r.status, 400, "{r:?}");

    // Nothing above reached the log or hurt the node.
    c.assert_invariants();
    let r = http("GET", &api, "/v1/rooms/r", None, Some(CLIENT_TOKEN), t).expect("served");
    assert_eq!(r.status, 200);
}

#[test]
fn ten_thousand_refused_orders_leave_every_replica_unchanged() {
    // Thousands of orders from a few buyer ids as fast as they go: the
    // per-buyer rate limit would answer most of them (its own test is below).
    let c = cluster(3, &["--rate-limit-buyer-per-sec", "0"]);
    c.create_room("r", &[("one", 1, 1), ("two", 10, 1)]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let buy = |sku: &str, buyer: &str, key: &str| {
        let body =
            json!({"sku": sku, "buyer": buyer, "qty": 1, "idempotency_key": key}).to_string();
        c.client("POST", leader, "/v1/rooms/r/orders", Some(&body))
            .expect("order")
    };
    assert_eq!(buy("one", "first", "k").status, 201);
    assert_eq!(buy("two", "limited", "k").status, 201);
    c.wait_converged(Duration::from_secs(10));
    let summaries = |c: &Cluster| -> Vec<Value> {
        c.ids()
            .into_iter()
            .map(|id| {
                let r = c
                    .admin("GET", id, "/admin/invariants", None)
                    .expect("invariants");
                assert_eq!(r.body["ok"], json!(true), "{:?}", r.body);
                r.body["summary"].clone()
            })
            .collect()
    };
    let before = summaries(&c);
    assert_eq!(before[0]["buyers"], json!(2));
    assert_eq!(before[0]["idempotency_keys"], json!(2));
    let pids: Vec<u32> = c.ids().iter().filter_map(|&id| c.node(id).pid()).collect();
    let rss_before: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();

    let api = c.node(leader).api_addr.clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let api = api.clone();
            std::thread::spawn(move || {
                let mut codes = std::collections::BTreeMap::<String, u64>::new();
                for i in 0..1250 {
                    // Unknown room, unknown listing, sold out, over the limit.
                    let (path, sku, buyer) = match i % 4 {
                        0 => ("/v1/rooms/nowhere/orders", "one", format!("b{t}-{i}")),
                        1 => ("/v1/rooms/r/orders", "nothing", format!("b{t}-{i}")),
                        2 => ("/v1/rooms/r/orders", "one", format!("b{t}-{i}")),
                        _ => ("/v1/rooms/r/orders", "two", "limited".to_string()),
                    };
                    let body = json!({"sku": sku, "buyer": buyer, "qty": 1,
                        "idempotency_key": format!("k{t}-{i}"), "contact": "hostile@example.com"})
                    .to_string();
                    let r = http(
                        "POST",
                        &api,
                        path,
                        Some(body.as_bytes()),
                        Some(CLIENT_TOKEN),
                        Duration::from_secs(10),
                    )
                    .expect("refused order answered");
                    *codes.entry(r.code().to_string()).or_default() += 1;
                }
                codes
            })
        })
        .collect();
    let mut codes = std::collections::BTreeMap::<String, u64>::new();
    for h in threads {
        for (k, v) in h.join().expect("thread") {
            *codes.entry(k).or_default() += v;
        }
    }
    eprintln!("refusals: {codes:?}");
    // 1250 per thread: i % 4 in {0, 1} 313 times, {2, 3} 312 times.
    assert_eq!(codes.get("room_not_found"), Some(&(8 * 313)), "{codes:?}");
    assert_eq!(
        codes.get("listing_not_found"),
        Some(&(8 * 313)),
        "{codes:?}"
    );
    assert_eq!(codes.get("sold_out"), Some(&(8 * 312)), "{codes:?}");
    assert_eq!(codes.get("limit_exceeded"), Some(&(8 * 312)), "{codes:?}");
    assert_eq!(codes.values().sum::<u64>(), 10_000);

    c.wait_converged(Duration::from_secs(20));
    let after = summaries(&c);
    assert_eq!(before, after, "10,000 refused orders changed the state");
    let rss_after: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
    eprintln!("RSS KiB before {rss_before:?} after {rss_after:?}");

    // A refused key, retried, is refused the same way (and still leaves nothing).
    let again = buy("one", "b0-2", "k0-2");
    assert_eq!(again.status, 409, "{again:?}");
    assert_eq!(again.code(), "sold_out");
    assert_eq!(summaries(&c), after);
}

/// A client with `secret` as its bearer token.
fn as_token(
    c: &Cluster,
    secret: &str,
    via: u64,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> roomkeeper_e2e::Reply {
    http(
        method,
        &c.node(via).api_addr,
        path,
        body.map(str::as_bytes),
        Some(secret),
        Duration::from_secs(6),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn assert_forbidden(r: &roomkeeper_e2e::Reply, missing: &str, what: &str) {
    assert_eq!(
        (r.status, r.code()),
        (403, "forbidden"),
        "{what}: {:?}",
        r.body
    );
    assert_eq!(r.body["missing_scope"], missing, "{what}: {:?}", r.body);
}

/// Issue 16: a token scoped to room A cannot order in room B or read
/// contact; only `read_contact` gets the contact back in plain text. Three
/// nodes, so writes through a follower are forwarded and re-checked.
#[test]
fn scoped_tokens_reach_only_their_rooms_and_verbs() {
    use roomkeeper_e2e::{write_client_tokens, ScopedToken};
    let tokens = write_client_tokens(&[
        ScopedToken {
            name: "shop-a",
            secret: "shop-a-secret",
            rooms: "room-a",
            verbs: "order",
        },
        ScopedToken {
            name: "support",
            secret: "support-secret",
            rooms: "room-a",
            verbs: "read_contact",
        },
        ScopedToken {
            name: "catalog",
            secret: "catalog-secret",
            rooms: "room-*",
            verbs: "manage_listings",
        },
    ]);
    let tokens_arg = tokens.display().to_string();
    // The harness's --client-token stays the all-scopes `client-token`.
    let c = cluster(3, &["--client-tokens-file", &tokens_arg]);
    c.create_room("room-a", &[("sku-1", 100, 100)]);
    c.create_room("room-b", &[("sku-1", 100, 100)]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let follower = c
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let order = |key: &str| {
        json!({"sku": "sku-1", "buyer": "bob", "qty": 1, "idempotency_key": key, "contact": "MARKER-bob-phone"})
            .to_string()
    };

    // shop-a orders in room A, through the leader and through a follower.
    for via in [leader, follower] {
        let r = as_token(
            &c,
            "shop-a-secret",
            via,
            "POST",
            "/v1/rooms/room-a/orders",
            Some(&order(&format!("a-{via}"))),
        );
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let in_a = as_token(
        &c,
        "shop-a-secret",
        leader,
        "POST",
        "/v1/rooms/room-a/orders",
        Some(&order("a-last")),
    );
    let order_a = in_a.body["order_id"].as_u64().expect("order id");
    // ... but not in room B, through either node, and room B is untouched.
    let stock_b = || {
        c.client("GET", leader, "/v1/rooms/room-b/listings/sku-1", None)
            .expect("listing")
            .body["stock_left"]
            .clone()
    };
    let before = stock_b();
    for via in [leader, follower] {
        let r = as_token(
            &c,
            "shop-a-secret",
            via,
            "POST",
            "/v1/rooms/room-b/orders",
            Some(&order("b-1")),
        );
        assert_forbidden(&r, "order", "shop-a ordering in room B");
    }
    assert_eq!(stock_b(), before);
    // An order in room B (by the all-scopes token) is out of shop-a's reach.
    let r = c
        .client(
            "POST",
            leader,
            "/v1/rooms/room-b/orders",
            Some(&order("b-flag")),
        )
        .expect("order");
    assert_eq!(r.status, 201, "{:?}", r.body);
    let order_b = r.body["order_id"].as_u64().expect("order id");
    for (method, path, missing) in [
        ("POST", format!("/v1/orders/{order_b}/cancel"), "order"),
        ("POST", format!("/v1/orders/{order_b}/pay"), "order"),
        ("GET", format!("/v1/orders/{order_b}"), "room"),
        ("GET", "/v1/rooms/room-b".to_string(), "room"),
        ("GET", "/v1/rooms/room-b/listings/sku-1".to_string(), "room"),
        (
            "GET",
            format!("/v1/orders/{order_a}/contact"),
            "read_contact",
        ),
    ] {
        let r = as_token(&c, "shop-a-secret", follower, method, &path, None);
        assert_forbidden(&r, missing, &format!("shop-a {method} {path}"));
    }
    let put =
        json!({"price_cents": 1, "stock": 5, "per_buyer_limit": 1, "state": "open"}).to_string();
    let r = as_token(
        &c,
        "shop-a-secret",
        leader,
        "PUT",
        "/v1/rooms/room-a/listings/sku-2",
        Some(&put),
    );
    assert_forbidden(&r, "manage_listings", "shop-a managing listings");
    // Its own room's reads work; a buyer's orders are listed for its rooms only.
    let r = as_token(
        &c,
        "shop-a-secret",
        follower,
        "GET",
        "/v1/rooms/room-a/listings/sku-1",
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = as_token(
        &c,
        "shop-a-secret",
        leader,
        "GET",
        "/v1/buyers/bob/orders",
        None,
    );
    let rooms: Vec<&str> = r
        .body
        .as_array()
        .expect("orders")
        .iter()
        .filter_map(|o| o["room"].as_str())
        .collect();
    assert_eq!(rooms, ["room-a"; 3], "{:?}", r.body);
    let r = c
        .client("GET", leader, "/v1/buyers/bob/orders", None)
        .expect("orders");
    assert_eq!(
        r.body.as_array().map(Vec::len),
        Some(4),
        "the all-scopes token sees both rooms"
    );
    let r = as_token(
        &c,
        "shop-a-secret",
        leader,
        "POST",
        &format!("/v1/orders/{order_a}/pay"),
        None,
    );
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("paid")),
        "{:?}",
        r.body
    );

    // Only read_contact opens a contact, and only in its rooms.
    let r = as_token(
        &c,
        "support-secret",
        follower,
        "GET",
        &format!("/v1/orders/{order_a}/contact"),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["contact"], "MARKER-bob-phone");
    let r = as_token(
        &c,
        "support-secret",
        leader,
        "GET",
        &format!("/v1/orders/{order_b}/contact"),
        None,
    );
    assert_forbidden(&r, "read_contact", "support reading room B's contact");
    let r = as_token(
        &c,
        "support-secret",
        leader,
        "POST",
        "/v1/rooms/room-a/orders",
        Some(&order("s-1")),
    );
    assert_forbidden(&r, "order", "support ordering");
    // The plain order view never carries the contact.
    let r = c
        .client("GET", leader, &format!("/v1/orders/{order_a}"), None)
        .expect("order");
    assert!(!r.body.to_string().contains("MARKER"), "{:?}", r.body);

    // catalog manages listings in every room-* room, nothing else.
    let r = as_token(
        &c,
        "catalog-secret",
        follower,
        "PUT",
        "/v1/rooms/room-a/listings/sku-2",
        Some(&put),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let room = json!({"home_region": "region-1", "state": "live"}).to_string();
    let r = as_token(
        &c,
        "catalog-secret",
        leader,
        "PUT",
        "/v1/rooms/other",
        Some(&room),
    );
    assert_forbidden(&r, "manage_listings", "catalog outside room-*");
    let r = as_token(
        &c,
        "catalog-secret",
        leader,
        "POST",
        "/v1/rooms/room-a/orders",
        Some(&order("c-1")),
    );
    assert_forbidden(&r, "order", "catalog ordering");

    // Unknown or missing tokens are 401, whatever the route.
    for secret in ["nope", "shop-a-secre", "shop-a-secret2"] {
        let r = as_token(&c, secret, leader, "GET", "/v1/rooms/room-a", None);
        assert_eq!((r.status, r.code()), (401, "unauthorized"), "{secret}");
    }
    c.wait_converged(Duration::from_secs(10));
    c.assert_invariants();
    let _ = std::fs::remove_file(tokens);
}

/// Issue 16: per-buyer and per-token rate limits engage (429 `rate_limited`
/// with `Retry-After`), spare everyone else, are counted, and recover.
#[test]
fn rate_limits_engage_per_buyer_and_per_token_and_recover() {
    let c = cluster(
        1,
        &[
            "--rate-limit-buyer-per-sec",
            "2",
            "--rate-limit-buyer-burst",
            "3",
            "--rate-limit-token-per-sec",
            "20",
            "--rate-limit-token-burst",
            "40",
        ],
    );
    c.create_room("room-a", &[("sku-1", 1000, 1000)]);
    let order = |buyer: &str, key: &str| {
        c.client(
            "POST",
            1,
            "/v1/rooms/room-a/orders",
            Some(
                &json!({"sku": "sku-1", "buyer": buyer, "qty": 1, "idempotency_key": key})
                    .to_string(),
            ),
        )
        .expect("order")
    };
    // A bot buyer: its burst of 3, then refused; another buyer is not.
    for i in 0..3 {
        let r = order("bot", &format!("bot-{i}"));
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let r = order("bot", "bot-3");
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{:?}", r.body);
    assert_eq!(
        r.retry_after.as_deref(),
        Some("1"),
        "Retry-After in whole seconds"
    );
    let wait = r.body["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=500).contains(&wait), "{wait} ms");
    assert_eq!(
        order("human", "human-1").status,
        201,
        "another buyer is not limited"
    );
    // The refused order left nothing: its key is decided again once allowed.
    std::thread::sleep(Duration::from_millis(wait + 50));
    let r = order("bot", "bot-3");
    assert_eq!(r.status, 201, "the buyer's limit recovers: {:?}", r.body);
    assert!(
        metric(
            &c,
            1,
            "roomkeeper_rate_limited_requests_total{limit=\"buyer\"}"
        ) >= 1.0
    );

    // The token: 40 at once, then 20/s. A burst of reads runs into it.
    let started = Instant::now();
    let mut limited = None;
    for _ in 0..120 {
        let r = c.client("GET", 1, "/v1/rooms/room-a", None).expect("read");
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let r = limited.unwrap_or_else(|| panic!("no 429 in 120 reads over {:?}", started.elapsed()));
    assert_eq!(r.code(), "rate_limited", "{:?}", r.body);
    assert!(r.retry_after.is_some());
    assert!(
        metric(
            &c,
            1,
            "roomkeeper_rate_limited_requests_total{limit=\"token\"}"
        ) >= 1.0
    );
    // ... and recovers.
    std::thread::sleep(Duration::from_millis(1100));
    let r = c.client("GET", 1, "/v1/rooms/room-a", None).expect("read");
    assert_eq!(r.status, 200, "the token's limit recovers: {:?}", r.body);
    c.assert_invariants();
}
