//! The framed order protocol (docs/framed-api.md) against real node
//! processes over real sockets: pipelined orders on one connection are each
//! answered once, under their own id, with the HTTP API's statuses and
//! bodies, and never oversell; followers forward; TLS is the client API's;
//! hostile framing is refused and the connection closed.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use roomkeeper_api::framed::{
    self, KIND_HELLO, KIND_PLACE_ORDER, KIND_PROTOCOL_ERROR, RESPONSE_BIT,
};
use roomkeeper_e2e::{http_client, order_body, Cluster, ClusterOptions, CLIENT_TOKEN};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const ROOM: &str = "framed-room";

/// One answer: kind, id, status, JSON body.
type Answer = (u8, u32, u16, Value);

/// Nodes with a framed listener each (a port of their own choosing, read
/// back from their status) and a short frame deadline.
fn cluster(nodes: usize, http_tls: bool) -> Cluster {
    let mut opts = ClusterOptions::nodes(nodes);
    opts.http_tls = http_tls;
    opts.extra_args = [
        "--framed-api-addr",
        "127.0.0.1:0",
        "--http-header-timeout-ms",
        "1500",
    ]
    .map(String::from)
    .to_vec();
    Cluster::start_initialized(opts)
}

fn framed_addr(c: &Cluster, id: u64) -> String {
    c.node_status(id)
        .and_then(|s| s.framed_api_addr)
        .unwrap_or_else(|| panic!("node {id} reports no framed_api_addr"))
}

/// Writes `bytes` at once, then reads answers until `want` arrived or the
/// node closed the connection; `closed` says which.
async fn exchange<S>(io: &mut S, bytes: &[u8], want: usize) -> io::Result<(Vec<Answer>, bool)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(bytes).await?;
    let mut input = Vec::new();
    let mut answers = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some((payload, used)) =
            framed::next_frame(&input).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            let r = framed::decode_response(payload)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let body = serde_json::from_slice(r.body).unwrap_or(Value::Null);
            answers.push((r.kind, r.id, r.status, body));
            input.drain(..used);
        }
        if answers.len() >= want {
            return Ok((answers, false));
        }
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Ok((answers, true));
        }
        input.extend_from_slice(&chunk[..n]);
    }
}

/// Plain TCP: connect, send, collect (10 s at most).
fn plain(addr: &str, bytes: &[u8], want: usize) -> (Vec<Answer>, bool) {
    let addr = addr.to_string();
    let bytes = bytes.to_vec();
    http_client::block_on(async move {
        let mut s = TcpStream::connect(&addr).await?;
        tokio::time::timeout(Duration::from_secs(10), exchange(&mut s, &bytes, want))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answers in 10 s"))?
    })
    .expect("framed exchange")
}

fn hello(token: &str) -> Vec<u8> {
    let mut out = Vec::new();
    framed::encode_hello(&mut out, 0, token).expect("hello");
    out
}

fn order(out: &mut Vec<u8>, id: u32, sku: &str, buyer: &str, key: &str) {
    framed::encode_place_order(out, id, ROOM, order_body(sku, buyer, 1, key).as_bytes())
        .expect("order frame");
}

#[test]
fn pipelined_orders_are_each_answered_once_and_never_oversell() {
    let c = cluster(3, false);
    c.create_room(ROOM, &[("lipstick", 50, 1)]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let addr = framed_addr(&c, leader);

    // 80 buyers' orders for 50 units in one write, on one connection.
    let mut bytes = hello(CLIENT_TOKEN);
    for i in 0..80u32 {
        order(
            &mut bytes,
            1000 + i,
            "lipstick",
            &format!("b{i}"),
            &format!("k{i}"),
        );
    }
    let (answers, closed) = plain(&addr, &bytes, 81);
    assert!(!closed, "the node closed a good connection: {answers:?}");
    let (first, orders) = answers.split_first().expect("hello answer");
    assert_eq!(
        (first.0, first.2, first.3["protocol"].as_u64()),
        (RESPONSE_BIT | KIND_HELLO, 200, Some(1)),
        "{first:?}"
    );
    let mut by_id: BTreeMap<u32, &Answer> = BTreeMap::new();
    for a in orders {
        assert_eq!(a.0, RESPONSE_BIT | KIND_PLACE_ORDER, "{a:?}");
        assert!(by_id.insert(a.1, a).is_none(), "id {} answered twice", a.1);
    }
    assert_eq!(
        by_id.keys().copied().collect::<Vec<_>>(),
        (1000..1080).collect::<Vec<_>>(),
        "every request answered under its own id"
    );
    let accepted: Vec<&&Answer> = by_id.values().filter(|a| a.2 == 201).collect();
    let sold_out = by_id
        .values()
        .filter(|a| a.2 == 409 && a.3["code"] == "sold_out")
        .count();
    assert_eq!((accepted.len(), sold_out), (50, 30), "{by_id:?}");

    // The answers are the HTTP API's: an accepted order reads back over HTTP
    // as the framed answer gave it, and its key replays it.
    let won = accepted[0];
    let order_id = won.3["order_id"].as_u64().expect("order_id");
    let r = c
        .client("GET", leader, &format!("/v1/orders/{order_id}"), None)
        .expect("GET order");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["buyer"], won.3["buyer"]);
    let buyer = won.3["buyer"].as_str().expect("buyer").to_string();
    let key = format!("k{}", &buyer[1..]);
    let mut again = hello(CLIENT_TOKEN);
    order(&mut again, 7, "lipstick", &buyer, &key);
    let (answers, _) = plain(&addr, &again, 2);
    let replay = &answers[1];
    assert_eq!(
        (
            replay.1,
            replay.2,
            replay.3["replayed"].as_bool(),
            replay.3["order_id"].as_u64()
        ),
        (7, 200, Some(true), Some(order_id)),
        "{replay:?}"
    );
    let listing = c
        .client(
            "GET",
            leader,
            &format!("/v1/rooms/{ROOM}/listings/lipstick"),
            None,
        )
        .expect("GET listing");
    assert_eq!(listing.body["stock_left"], 0, "{:?}", listing.body);

    // A follower's framed listener forwards writes like its HTTP API.
    let follower = c
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("follower");
    c.create_room(ROOM, &[("mascara", 5, 1)]);
    let mut via_follower = hello(CLIENT_TOKEN);
    for i in 0..8u32 {
        order(
            &mut via_follower,
            i,
            "mascara",
            &format!("f{i}"),
            &format!("fk{i}"),
        );
    }
    let (answers, _) = plain(&framed_addr(&c, follower), &via_follower, 9);
    let statuses: Vec<u16> = answers[1..].iter().map(|a| a.2).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        5,
        "{answers:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 409).count(),
        3,
        "{answers:?}"
    );
    c.wait_converged(Duration::from_secs(10));
    c.assert_invariants();
}

#[test]
fn hostile_framing_is_refused_and_the_connection_closed() {
    let c = cluster(1, false);
    c.create_room(ROOM, &[("lipstick", 100, 5)]);
    let addr = framed_addr(&c, 1);

    // A wrong token: 401 on HELLO, then the close.
    let (answers, closed) = plain(&addr, &hello("not-the-token"), 2);
    assert!(closed, "{answers:?}");
    assert_eq!(
        (answers[0].2, answers[0].3["code"].as_str()),
        (401, Some("unauthorized"))
    );

    // An order before HELLO: refused, closed; the order is not placed.
    let mut bytes = Vec::new();
    order(&mut bytes, 3, "lipstick", "b1", "early");
    let (answers, closed) = plain(&addr, &bytes, 2);
    assert!(closed);
    assert_eq!(
        (answers[0].1, answers[0].2, answers[0].3["code"].as_str()),
        (3, 400, Some("hello_required"))
    );

    // A length no frame may have is refused before its bytes are awaited.
    let mut bytes = hello(CLIENT_TOKEN);
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    let (answers, closed) = plain(&addr, &bytes, 3);
    assert!(closed, "{answers:?}");
    assert_eq!(
        (answers[1].0, answers[1].3["code"].as_str()),
        (KIND_PROTOCOL_ERROR, Some("frame_too_large"))
    );

    // An unknown kind: refused, closed.
    let mut bytes = hello(CLIENT_TOKEN);
    bytes.extend_from_slice(&[0, 0, 0, 5, 0x42, 0, 0, 0, 1]);
    let (answers, closed) = plain(&addr, &bytes, 3);
    assert!(closed);
    assert_eq!(answers[1].3["code"], "unknown_frame_kind", "{answers:?}");

    // A bad body is the request's fault, not the framing's: answered like
    // HTTP's 400, and the connection goes on to the next order.
    let mut bytes = hello(CLIENT_TOKEN);
    framed::encode_place_order(&mut bytes, 1, ROOM, b"{not json").expect("frame");
    order(&mut bytes, 2, "lipstick", "b2", "after-bad-json");
    let (answers, closed) = plain(&addr, &bytes, 3);
    assert!(!closed);
    let by_id: BTreeMap<u32, u16> = answers[1..].iter().map(|a| (a.1, a.2)).collect();
    assert_eq!(by_id, BTreeMap::from([(1, 400), (2, 201)]), "{answers:?}");

    // Half a frame, then silence: closed after the frame deadline (1.5 s).
    let mut bytes = hello(CLIENT_TOKEN);
    let mut one = Vec::new();
    order(&mut one, 9, "lipstick", "b3", "trickle");
    bytes.extend_from_slice(&one[..one.len() / 2]);
    let started = std::time::Instant::now();
    let (answers, closed) = plain(&addr, &bytes, 2);
    assert!(closed && answers.len() == 1, "{answers:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let trickled = c
        .client(
            "GET",
            1,
            &format!("/v1/rooms/{ROOM}/listings/lipstick"),
            None,
        )
        .expect("listing");
    assert_eq!(
        trickled.body["stock_left"], 99,
        "only the one good order sold: {:?}",
        trickled.body
    );
}

#[test]
fn framed_connections_take_the_client_apis_tls() {
    let c = cluster(1, true);
    c.create_room(ROOM, &[("lipstick", 10, 1)]);
    let addr = framed_addr(&c, 1);

    // Plaintext to a TLS listener gets no framed answer, only the close
    // (and perhaps a TLS alert, which is no frame).
    let bytes = hello(CLIENT_TOKEN);
    let got = http_client::block_on(async {
        let mut s = TcpStream::connect(&addr).await?;
        s.write_all(&bytes).await?;
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "not closed in 10 s"))??;
        Ok(got)
    })
    .expect("plaintext attempt");
    let answered = framed::next_frame(&got)
        .ok()
        .flatten()
        .and_then(|(p, _)| framed::decode_response(p).ok())
        .is_some_and(|r| r.status == 200);
    assert!(!answered, "a TLS listener answered plaintext: {got:?}");

    let tls = c.client_tls.as_ref().expect("client TLS");
    let mut bytes = hello(CLIENT_TOKEN);
    order(&mut bytes, 1, "lipstick", "b1", "tls-1");
    let (answers, _) = http_client::block_on(async {
        let mut s = tls.connect(&addr).await?;
        exchange(&mut s, &bytes, 2).await
    })
    .expect("TLS exchange");
    assert_eq!(
        answers.iter().map(|a| a.2).collect::<Vec<_>>(),
        vec![200, 201],
        "{answers:?}"
    );
}
