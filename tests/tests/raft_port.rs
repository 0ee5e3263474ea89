//! The Raft port as a hostile client sees it: whatever reaches it, a node's
//! memory and file descriptors stay bounded and its peers stay served.
//! Real node processes, raw TCP from other loopback addresses.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use roomkeeper_e2e::{raft_probe as probe, wait_until, Cluster, ClusterOptions};
use serde_json::json;

/// A TCP connection to `to` from the loopback address `from` (Linux routes
/// all of 127/8 to lo), so the test's connections count against their own
/// per-address limit, not the peers' 127.0.0.1.
fn connect_from(from: &str, to: &str) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let from: SocketAddr = format!("{from}:0").parse().map_err(std::io::Error::other)?;
    let to: SocketAddr = to.parse().map_err(std::io::Error::other)?;
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(from)?;
        sock.connect(to).await
    })?;
    let std = s.into_std()?;
    std.set_nonblocking(false)?;
    Ok(std)
}

fn proc_field_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The value of one counter series of a node's /metrics (0 when absent).
fn metric(c: &Cluster, id: u64, name: &str, label: &str) -> f64 {
    let r = c.admin("GET", id, "/metrics", None).expect("metrics");
    let text = r.body.as_str().unwrap_or_default().to_string();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

/// True once the server closed the connection (read gives EOF or an error).
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let _ = s.set_read_timeout(Some(within));
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn order(c: &Cluster, via: u64, key: &str) -> u16 {
    let body =
        json!({"sku": "sku-1", "buyer": key, "qty": 1, "idempotency_key": key, "contact": "x"})
            .to_string();
    c.client("POST", via, "/v1/rooms/room-a/orders", Some(&body))
        .map(|r| r.status)
        .unwrap_or(0)
}

#[test]
fn hostile_raft_connections_leave_memory_and_fds_bounded_and_peers_served() {
    let mut opts = ClusterOptions::nodes(3);
    // Plaintext, so the raw bytes reach the frame reader itself; with TLS
    // they would stop at the handshake (same deadline and caps).
    opts.extra_args = [
        "--insecure-plaintext-raft",
        "--raft-frame-timeout-ms",
        "1500",
        "--raft-max-connections-per-address",
        "16",
    ]
    .map(String::from)
    .to_vec();
    let c = Cluster::start_initialized(opts);
    c.create_room("room-a", &[("sku-1", 1000, 1000)]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let target = c
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let raft_addr = c.node(target).raft_addr.clone();
    let pid = c.node(target).pid().expect("pid");
    assert_eq!(order(&c, target, "before"), 201);
    let rss_before = proc_field_kib(pid, "VmRSS:");
    let fds_before = open_fds(pid);

    // 1. Huge announced lengths: 12 connections each announce 60 MiB and send
    //    1 KiB of it. Before the fix each one made the node zero 60 MiB.
    let mut huge = Vec::new();
    for _ in 0..12 {
        let mut s = connect_from("127.0.0.9", &raft_addr).expect("connect");
        s.write_all(&(60u32 * 1024 * 1024).to_be_bytes())
            .expect("len");
        s.write_all(&[7u8; 1024]).expect("part of the body");
        huge.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_during = proc_field_kib(pid, "VmRSS:");
    eprintln!("follower RSS: {rss_before} KiB before, {rss_during} KiB with 12 connections announcing 60 MiB");
    assert!(
        rss_during < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_during} KiB on announced lengths alone"
    );
    // Peers are still served while those connections hang.
    assert_eq!(order(&c, target, "during-huge"), 201);

    // 2. Half-sent frames are dropped once the frame deadline passes.
    for s in huge.iter_mut() {
        assert!(
            closed_by_server(s, Duration::from_secs(5)),
            "a half-sent frame was held past the deadline"
        );
    }
    assert!(
        metric(
            &c,
            target,
            "roomkeeper_raft_requests_refused_total",
            "frame_timeout"
        ) >= 12.0
    );

    // 3. A length over the frame limit is refused at once.
    let mut over = connect_from("127.0.0.10", &raft_addr).expect("connect");
    over.write_all(&u32::MAX.to_be_bytes()).expect("len");
    assert!(closed_by_server(&mut over, Duration::from_secs(2)));
    wait_until(Duration::from_secs(3), "frame_too_large counted", || {
        metric(
            &c,
            target,
            "roomkeeper_raft_requests_refused_total",
            "frame_too_large",
        ) >= 1.0
    });

    // 4. Many idle connections from one address: 16 are held (until the
    //    first-frame deadline), the rest closed at once and counted.
    let mut idle = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = connect_from("127.0.0.11", &raft_addr) {
            idle.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let fds_during = open_fds(pid);
    eprintln!("follower fds: {fds_before} before, {fds_during} with 200 idle connections from one address");
    assert!(
        fds_during <= fds_before + 16 + 8,
        "fds went from {fds_before} to {fds_during} with 200 idle connections"
    );
    assert!(
        metric(
            &c,
            target,
            "roomkeeper_raft_connections_refused_total",
            "address_limit"
        ) >= 150.0
    );
    assert_eq!(order(&c, target, "during-idle"), 201);
    assert_eq!(order(&c, leader, "during-idle-leader"), 201);
    // Idle connections that never send a frame are closed at the deadline.
    let started = Instant::now();
    wait_until(Duration::from_secs(6), "idle connections closed", || {
        open_fds(pid) <= fds_before + 4
    });
    assert!(started.elapsed() < Duration::from_secs(6));
    drop(idle);

    // The cluster still replicates and agrees.
    assert_eq!(order(&c, target, "after"), 201);
    c.wait_converged(Duration::from_secs(10));
    c.assert_invariants();
    assert!(proc_field_kib(pid, "VmRSS:") < rss_before + 32 * 1024);
}

fn stock_left(c: &Cluster, id: u64) -> serde_json::Value {
    c.client("GET", id, "/v1/rooms/room-a/listings/sku-1", None)
        .expect("listing")
        .body["stock_left"]
        .clone()
}

#[test]
fn only_certified_members_of_this_cluster_reach_raft_and_forwarded_contacts_stay_sealed() {
    use roomkeeper_e2e::{raft_certs, CLUSTER_ID};
    let c = Cluster::start_initialized(ClusterOptions::nodes(3));
    c.create_room("room-a", &[("sku-1", 100, 100)]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let follower = c
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let laddr = c.node(leader).raft_addr.clone();
    let faddr = c.node(follower).raft_addr.clone();
    let d = |p: &str| c.dir.join(p).display().to_string();
    // The cluster works with certificates: a follower forwards an order.
    assert_eq!(order(&c, follower, "via-follower"), 201);
    let stock = stock_left(&c, leader);
    let term = c.status(leader).expect("status")["term"].clone();

    // Credentials an attacker might hold.
    raft_certs(&["ca", "--cluster-id", CLUSTER_ID, "--out", &d("rogue-ca")]);
    raft_certs(&[
        "node",
        "--cluster-id",
        CLUSTER_ID,
        "--ca-dir",
        &d("rogue-ca"),
        "--id",
        &follower.to_string(),
        "--out",
        &d("rogue-ca-member"),
    ]);
    raft_certs(&[
        "node",
        "--cluster-id",
        CLUSTER_ID,
        "--ca-dir",
        &d("raft-ca"),
        "--id",
        &follower.to_string(),
        "--name-cluster",
        "other",
        "--out",
        &d("other-cluster-member"),
    ]);
    raft_certs(&[
        "node",
        "--cluster-id",
        CLUSTER_ID,
        "--ca-dir",
        &d("raft-ca"),
        "--id",
        "9",
        "--out",
        &d("non-member-9"),
    ]);
    let member_cert = d(&format!("node-{follower}-tls"));

    let marker = "MARKER-contact-7c1e";
    let forward = [
        "forward-order",
        "--room",
        "room-a",
        "--sku",
        "sku-1",
        "--buyer",
        "mallory",
        "--contact",
        marker,
    ];
    let as_member = (CLUSTER_ID, follower, leader);
    // No certificate at all: plain TCP, or TLS without a client certificate.
    for tls in [&[][..], &["--tls-no-cert"][..]] {
        let r = probe(&laddr, tls, as_member, &forward);
        assert!(r.is_err(), "{tls:?} was answered: {r:?}");
        assert!(probe(&laddr, tls, as_member, &["read-index"]).is_err());
        assert!(probe(
            &faddr,
            tls,
            (CLUSTER_ID, leader, follower),
            &["append", "--leader", &leader.to_string(), "--term", "1000"]
        )
        .is_err());
        assert!(probe(
            &faddr,
            tls,
            (CLUSTER_ID, 9, follower),
            &["vote", "--candidate", "9", "--term", "1000"]
        )
        .is_err());
    }
    // A certificate from another CA, or from this CA for another cluster,
    // naming a real member: refused at the handshake or right after it.
    for cert in [d("rogue-ca-member"), d("other-cluster-member")] {
        let tls = ["--tls-dir", cert.as_str()];
        assert!(probe(&laddr, &tls, as_member, &forward).is_err(), "{cert}");
        assert!(
            probe(&laddr, &tls, as_member, &["read-index"]).is_err(),
            "{cert}"
        );
        assert!(
            probe(
                &faddr,
                &tls,
                (CLUSTER_ID, leader, follower),
                &["append", "--leader", &leader.to_string(), "--term", "1000"]
            )
            .is_err(),
            "{cert}"
        );
        assert!(
            probe(
                &faddr,
                &tls,
                (CLUSTER_ID, follower, leader),
                &[
                    "vote",
                    "--candidate",
                    &follower.to_string(),
                    "--term",
                    "1000"
                ]
            )
            .is_err(),
            "{cert}"
        );
    }
    // A valid certificate for node 9 claiming to be a member, or a leader:
    // the connection is closed on the first frame.
    let tls9 = ["--tls-dir", &d("non-member-9")];
    assert!(probe(&laddr, &tls9, as_member, &forward).is_err());
    assert!(probe(
        &faddr,
        &tls9,
        (CLUSTER_ID, 9, follower),
        &["append", "--leader", &leader.to_string(), "--term", "1000"]
    )
    .is_err());
    // As itself, node 9 is not a member: no forward, no read index, and no
    // stale-term append or vote.
    let as9 = (CLUSTER_ID, 9, leader);
    let r = probe(&laddr, &tls9, as9, &forward).expect("an answer");
    assert!(r.contains("not_member"), "{r}");
    let r = probe(&laddr, &tls9, as9, &["read-index"]).expect("an answer");
    assert!(r.contains("not_member"), "{r}");
    let r = probe(
        &faddr,
        &tls9,
        (CLUSTER_ID, 9, follower),
        &["append", "--leader", "9", "--term", "0"],
    )
    .expect("an answer");
    assert!(r.contains("not_member"), "{r}");
    let r = probe(
        &faddr,
        &tls9,
        (CLUSTER_ID, 9, follower),
        &["vote", "--candidate", "9", "--term", "0"],
    )
    .expect("an answer");
    assert!(r.contains("not_member"), "{r}");
    // A member's own certificate, but a frame for another cluster or node.
    let tlsm = ["--tls-dir", member_cert.as_str()];
    assert!(probe(&laddr, &tlsm, ("other", follower, leader), &forward).is_err());
    assert!(probe(&laddr, &tlsm, (CLUSTER_ID, follower, 77), &forward).is_err());
    // Or for a shard (Raft group) the node does not host.
    let tlsm_shard = ["--tls-dir", member_cert.as_str(), "--shard", "7"];
    assert!(probe(&laddr, &tlsm_shard, as_member, &forward).is_err());
    // Even a member cannot forward a contact that is not sealed.
    let r = probe(&laddr, &tlsm, as_member, &forward).expect("an answer");
    assert!(r.contains("unsealed_contact"), "{r}");
    // A member may ask for a read index.
    let r = probe(&laddr, &tlsm, as_member, &["read-index"]).expect("an answer");
    assert!(r.contains("ReadIndex(Ok"), "{r}");

    // Nothing changed: no order, no new term, and every refusal counted.
    assert_eq!(stock_left(&c, leader), stock);
    assert_eq!(c.status(leader).expect("status")["term"], term);
    assert_eq!(c.status(follower).expect("status")["term"], term);
    for reason in [
        "identity_mismatch",
        "not_member",
        "wrong_cluster",
        "wrong_node",
        "wrong_shard",
        "unsealed_contact",
    ] {
        let n = metric(&c, leader, "roomkeeper_raft_requests_refused_total", reason)
            + metric(
                &c,
                follower,
                "roomkeeper_raft_requests_refused_total",
                reason,
            );
        assert!(n >= 1.0, "no refusal counted as {reason}");
    }
    let handshakes = metric(
        &c,
        leader,
        "roomkeeper_raft_connections_refused_total",
        "tls_handshake",
    ) + metric(
        &c,
        leader,
        "roomkeeper_raft_connections_refused_total",
        "no_node_identity",
    );
    assert!(handshakes >= 6.0, "{handshakes} handshake refusals counted");

    // The cluster still works, and a contact written through a follower is
    // sealed before it leaves it: it is in no file under any data dir.
    let body = json!({"sku": "sku-1", "buyer": "zoe", "qty": 1, "idempotency_key": "zoe-1", "contact": marker}).to_string();
    let r = c
        .client("POST", follower, "/v1/rooms/room-a/orders", Some(&body))
        .expect("order");
    assert_eq!(r.status, 201, "{:?}", r.body);
    c.wait_converged(Duration::from_secs(10));
    c.assert_invariants();
    for id in c.ids() {
        for file in roomkeeper_e2e::files_under(&c.node(id).data_dir) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "plain-text contact in {}",
                file.display()
            );
        }
    }
}

/// The hole this closes, shown on a plaintext cluster: a forwarded order with
/// an unsealed contact from a made-up node is still refused (the leader opens
/// every forwarded contact), and a non-member's forward and read index too.
#[test]
fn a_plaintext_cluster_still_refuses_non_members_and_unsealed_contacts() {
    let mut opts = ClusterOptions::nodes(3);
    opts.extra_args = vec!["--insecure-plaintext-raft".into()];
    let c = Cluster::start_initialized(opts);
    c.create_room("room-a", &[("sku-1", 100, 100)]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let follower = c
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let laddr = c.node(leader).raft_addr.clone();
    let stock = stock_left(&c, leader);
    let forward = [
        "forward-order",
        "--room",
        "room-a",
        "--sku",
        "sku-1",
        "--buyer",
        "mallory",
        "--contact",
        "MARKER-plain",
    ];
    // Plaintext nodes of the harness keep the default cluster id.
    let cluster = "local";
    let r = probe(&laddr, &[], ("other", 9, leader), &forward);
    assert!(
        r.is_err(),
        "a frame for another cluster was answered: {r:?}"
    );
    let r = probe(&laddr, &[], (cluster, 9, leader), &forward).expect("answer");
    assert!(r.contains("not_member"), "{r}");
    let r = probe(&laddr, &[], (cluster, 9, leader), &["read-index"]).expect("answer");
    assert!(r.contains("not_member"), "{r}");
    // Without TLS a made-up sender can claim a member's id: the contact check
    // still holds, but nothing else would (that is why TLS is the default).
    let r = probe(&laddr, &[], (cluster, follower, leader), &forward).expect("answer");
    assert!(r.contains("unsealed_contact"), "{r}");
    assert_eq!(stock_left(&c, leader), stock);
    assert_eq!(order(&c, follower, "plain-ok"), 201);
}

/// Issue 16: `Forward` carries the client's token name and scope, and the
/// leader authorizes every forwarded command again against its own token
/// table. A member's certificate (a compromised follower) forwarding an
/// order for room B on behalf of a room-A token is refused — also when it
/// claims a wider scope, or a token the leader does not know.
#[test]
fn a_forwarded_order_outside_the_token_scope_is_refused_by_the_leader() {
    use roomkeeper_e2e::{write_client_tokens, ScopedToken, CLUSTER_ID};
    let tokens = write_client_tokens(&[ScopedToken {
        name: "shop-a",
        secret: "shop-a-secret",
        rooms: "room-a",
        verbs: "order",
    }]);
    let mut opts = ClusterOptions::nodes(3);
    opts.extra_args = vec!["--client-tokens-file".into(), tokens.display().to_string()];
    let c = Cluster::start_initialized(opts);
    c.create_room("room-a", &[("sku-1", 100, 100)]);
    c.create_room("room-b", &[("sku-1", 100, 100)]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let follower = c
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let laddr = c.node(leader).raft_addr.clone();
    let member_cert = c
        .dir
        .join(format!("node-{follower}-tls"))
        .display()
        .to_string();
    let key = c.dir.join("contact.key").display().to_string();
    let tls = ["--tls-dir", member_cert.as_str()];
    let as_member = (CLUSTER_ID, follower, leader);
    let stock = |room: &str| {
        c.client(
            "GET",
            leader,
            &format!("/v1/rooms/{room}/listings/sku-1"),
            None,
        )
        .expect("listing")
        .body["stock_left"]
            .clone()
    };
    let forward = |room: &str, buyer: &str, name: &str, rooms: &str, verbs: &str| {
        probe(
            &laddr,
            &tls,
            as_member,
            &[
                "forward-order",
                "--room",
                room,
                "--sku",
                "sku-1",
                "--buyer",
                buyer,
                "--contact",
                "sealed-by-the-probe",
                "--seal-with",
                &key,
                "--token-name",
                name,
                "--token-rooms",
                rooms,
                "--token-verbs",
                verbs,
            ],
        )
        .expect("an answer")
    };
    let (a_before, b_before) = (stock("room-a"), stock("room-b"));
    // The frame itself is good: the same forward for room A is carried out.
    let r = forward("room-a", "alice", "shop-a", "room-a", "order");
    assert!(r.contains("Order {"), "{r}");
    assert_ne!(stock("room-a"), a_before);
    // Room B: as sent, with a widened scope, or for an unknown token.
    for (name, rooms, verbs) in [
        ("shop-a", "room-a", "order"),
        ("shop-a", "*", "*"),
        ("shop-a", "room-b", "order"),
        ("mallory", "*", "*"),
    ] {
        let r = forward("room-b", "mallory", name, rooms, verbs);
        assert!(r.contains("Forbidden"), "{name} {rooms} {verbs}: {r}");
        assert!(!r.contains("Order {"), "{r}");
    }
    assert_eq!(
        stock("room-b"),
        b_before,
        "a refused forward changed room B"
    );
    let n = metric(
        &c,
        leader,
        "roomkeeper_raft_requests_refused_total",
        "forbidden",
    );
    assert!(n >= 4.0, "{n} forbidden forwards counted");
    // Honest forwarding through a follower still works for the token's room.
    let body =
        json!({"sku": "sku-1", "buyer": "zoe", "qty": 1, "idempotency_key": "zoe-1"}).to_string();
    let r = roomkeeper_e2e::http(
        "POST",
        &c.node(follower).api_addr,
        "/v1/rooms/room-a/orders",
        Some(body.as_bytes()),
        Some("shop-a-secret"),
        Duration::from_secs(6),
    )
    .expect("order");
    assert_eq!(r.status, 201, "{:?}", r.body);
    c.wait_converged(Duration::from_secs(10));
    c.assert_invariants();
    let _ = std::fs::remove_file(tokens);
}
