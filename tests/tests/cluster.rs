//! Multi-process tests of the order store on loopback: clusters form and serve,
//! survive crashes, catch up, recover from disk, and refuse bad input.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roomkeeper_api::client::PlaceOrder;
use roomkeeper_e2e::{
    http, http_via, order_body, run_buyers, to_json, wait_until, Attempt, Cluster, ClusterOptions,
    Reply, CLIENT_TOKEN,
};
use serde_json::{json, Value};

fn join_all(handles: Vec<std::thread::JoinHandle<Vec<Attempt>>>) -> Vec<Attempt> {
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("buyer thread panicked"))
        .collect()
}

/// Every acknowledged order must be readable (linearizably) with the buyer and
/// quantity the client was told. Returns how many were checked.
fn assert_acknowledged_orders_present(c: &Cluster, attempts: &[Attempt]) -> usize {
    let leader = c.wait_leader(Duration::from_secs(15));
    let mut checked = 0;
    for a in attempts {
        if let Attempt::Acked {
            order_id,
            buyer,
            qty,
            key,
        } = a
        {
            let r = c
                .client("GET", leader, &format!("/v1/orders/{order_id}"), None)
                .expect("read order");
            assert_eq!(
                r.status, 200,
                "acknowledged order {order_id} (key {key}) is lost: {:?}",
                r.body
            );
            assert_eq!(
                r.body["buyer"],
                json!(buyer),
                "order {order_id} belongs to someone else"
            );
            assert_eq!(
                r.body["qty"].as_u64(),
                Some(*qty),
                "order {order_id} changed quantity"
            );
            checked += 1;
        }
    }
    checked
}

/// Order ids are unique: two acknowledgements never share an order.
fn assert_no_double_acks(attempts: &[Attempt]) {
    let mut seen = BTreeMap::new();
    for a in attempts {
        if let Attempt::Acked { order_id, key, .. } = a {
            if let Some(other) = seen.insert(*order_id, key.clone()) {
                panic!("order {order_id} acknowledged for two keys: {other} and {key}");
            }
        }
    }
}

fn acked(attempts: &[Attempt]) -> usize {
    attempts
        .iter()
        .filter(|a| matches!(a, Attempt::Acked { .. }))
        .count()
}

/// A converged 3-node cluster with a room of one listing (`sku-1`, `stock`
/// units, 10 per buyer), its leader and one follower.
fn three_nodes_and_a_follower(room: &str, stock: u32) -> (Cluster, u64, u64) {
    let c = Cluster::start_initialized(ClusterOptions::nodes(3));
    c.create_room(room, &[("sku-1", stock, 10)]);
    c.wait_converged(Duration::from_secs(10));
    let leader = c.wait_leader(Duration::from_secs(5));
    let follower = c
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("follower");
    (c, leader, follower)
}

fn listing(c: &Cluster, id: u64, room: &str, sku: &str) -> Value {
    c.client("GET", id, &format!("/v1/rooms/{room}/listings/{sku}"), None)
        .expect("read listing")
        .body
}

#[test]
fn three_node_cluster_forms_serves_and_agrees() {
    let c = Cluster::start_initialized(ClusterOptions::nodes(3));
    c.create_room("room-a", &[("sku-1", 5, 2)]);
    let follower = c
        .ids()
        .into_iter()
        .find(|id| Some(*id) != c.leader())
        .expect("a follower");
    let ann = to_json(&PlaceOrder {
        sku: "sku-1".into(),
        buyer: "ann".into(),
        qty: 2,
        idempotency_key: "k1".into(),
        contact: "ann@example.com".into(),
    });
    // A follower forwards the write to the leader.
    let r = c
        .client("POST", follower, "/v1/rooms/room-a/orders", Some(&ann))
        .expect("order");
    assert_eq!(r.status, 201, "{:?}", r.body);
    // Read-your-writes on the follower with the default linearizable read.
    assert_eq!(
        listing(&c, follower, "room-a", "sku-1")["stock_left"],
        json!(3)
    );
    // Same key again returns the first outcome, not a second order.
    let again = c
        .client("POST", follower, "/v1/rooms/room-a/orders", Some(&ann))
        .expect("repeat");
    assert_eq!(again.status, 200);
    assert_eq!(again.body["replayed"], json!(true));
    assert_eq!(again.body["order_id"], r.body["order_id"]);
    let limited = c
        .client(
            "POST",
            follower,
            "/v1/rooms/room-a/orders",
            Some(&order_body("sku-1", "ann", 1, "k2")),
        )
        .expect("limit");
    assert_eq!((limited.status, limited.code()), (409, "limit_exceeded"));
    c.wait_converged(Duration::from_secs(10));
    for id in c.ids() {
        let s = c.status(id).expect("status");
        assert_eq!(s["voters"], json!([1, 2, 3]));
        assert_eq!(s["region"], json!(format!("region-{id}")));
        let l = c
            .client(
                "GET",
                id,
                "/v1/rooms/room-a/listings/sku-1?consistency=stale",
                None,
            )
            .expect("stale read");
        assert_eq!(l.body["stock_left"], json!(3), "node {id} disagrees");
    }
    c.assert_invariants();
    // Every node's log reports its fsyncs (mirrored once a second): at least
    // the membership, the room, the listing and the order were made durable.
    for id in c.ids() {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let fsyncs = c.metric(id, "roomkeeper_log_fsyncs_total", "");
            let busy = c.metric(id, "roomkeeper_log_fsync_busy_seconds_total", "");
            if fsyncs >= 4.0 && busy > 0.0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {id}: {fsyncs} fsyncs, {busy} s in fsync reported"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Nodes run with two glibc arenas and without transparent huge pages:
    // `roomkeeper node` re-executes itself with both set (D56).
    for id in c.ids() {
        let pid = c.node(id).pid().expect("node running");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        for var in ["MALLOC_ARENA_MAX=2", "MIMALLOC_ALLOW_THP=0"] {
            assert!(
                environ.split(|b| *b == 0).any(|e| e == var.as_bytes()),
                "node {id} runs without {var}"
            );
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status.contains("THP_enabled:") {
            assert!(
                status.contains("THP_enabled:\t0"),
                "node {id}: transparent huge pages still enabled"
            );
        } else {
            eprintln!("this kernel does not report THP_enabled: its check is skipped");
        }
    }
    // The contact never reaches disk in plain text.
    for id in c.ids() {
        for entry in roomkeeper_e2e::files_under(&c.node(id).data_dir) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            assert!(
                !bytes.windows(15).any(|w| w == b"ann@example.com"),
                "plain-text contact found in {}",
                entry.display()
            );
        }
    }
}

#[test]
fn five_node_cluster_survives_two_crashes() {
    let mut c = Cluster::start_initialized(ClusterOptions::nodes(5));
    c.create_room("room-5", &[("sku-1", 100_000, 1_000)]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let others: Vec<u64> = c
        .ids()
        .into_iter()
        .filter(|&i| i != leader)
        .take(2)
        .collect();
    for id in &others {
        c.kill(*id);
    }
    let view = c.client_view();
    let stop = Arc::new(AtomicBool::new(false));
    let handles = run_buyers(view, "room-5", vec!["sku-1".into()], 4, stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let attempts = join_all(handles);
    assert!(
        acked(&attempts) > 20,
        "three of five voters must keep taking orders"
    );
    assert_acknowledged_orders_present(&c, &attempts);
    c.assert_invariants();
}

#[test]
fn leader_killed_mid_load_loses_no_acknowledged_order() {
    let mut c = Cluster::start_initialized(ClusterOptions::nodes(3));
    c.create_room(
        "room-k",
        &[("sku-1", 1_000_000, 100_000), ("sku-2", 1_000_000, 100_000)],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let handles = run_buyers(
        c.client_view(),
        "room-k",
        vec!["sku-1".into(), "sku-2".into()],
        8,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let old = c.wait_leader(Duration::from_secs(5));
    c.kill(old);
    let killed_at = Instant::now();
    let mut new_leader = None;
    wait_until(Duration::from_secs(10), "a new leader", || {
        new_leader = c.leader().filter(|&l| l != old);
        new_leader.is_some()
    });
    eprintln!("new leader {new_leader:?} after {:?}", killed_at.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    c.spawn(old);
    c.wait_healthy(old);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let attempts = join_all(handles);
    assert!(
        acked(&attempts) > 100,
        "too few orders acknowledged: {}",
        acked(&attempts)
    );
    assert_no_double_acks(&attempts);
    let checked = assert_acknowledged_orders_present(&c, &attempts);
    c.wait_converged(Duration::from_secs(20));
    c.assert_invariants();
    eprintln!("checked {checked} acknowledged orders after a leader kill");
}

#[test]
fn lagging_follower_catches_up_through_a_snapshot() {
    let mut opts = ClusterOptions::nodes(3);
    opts.snapshot_every_entries = 100;
    opts.keep_entries_after_snapshot = 20;
    let mut c = Cluster::start_initialized(opts);
    c.create_room("room-s", &[("sku-1", 1_000_000, 100_000)]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let lagging = c
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("follower");
    c.kill(lagging);
    let stop = Arc::new(AtomicBool::new(false));
    let handles = run_buyers(
        c.client_view(),
        "room-s",
        vec!["sku-1".into()],
        2,
        stop.clone(),
    );
    wait_until(
        Duration::from_secs(60),
        "the leader to purge past the lagging follower",
        || {
            c.status(leader)
                .map(|s| s["purged_index"].as_u64().unwrap_or(0) > 300)
                .unwrap_or(false)
        },
    );
    stop.store(true, Ordering::Relaxed);
    let attempts = join_all(handles);
    c.spawn(lagging);
    c.wait_healthy(lagging);
    c.wait_converged(Duration::from_secs(30));
    let s = c.status(lagging).expect("status");
    assert!(
        s["snapshot_index"].as_u64().unwrap_or(0) > 0,
        "the follower never installed a snapshot: {s}"
    );
    let leader_orders = c.status(leader).expect("leader")["orders"].clone();
    assert_eq!(
        s["orders"], leader_orders,
        "follower state differs from the leader's"
    );
    assert_acknowledged_orders_present(&c, &attempts);
    c.assert_invariants();
}

#[test]
fn every_node_killed_mid_load_then_restarted_holds_every_acknowledged_order() {
    let mut opts = ClusterOptions::nodes(3);
    opts.snapshot_every_entries = 300;
    opts.keep_entries_after_snapshot = 50;
    let mut c = Cluster::start_initialized(opts);
    c.create_room(
        "room-x",
        &[("sku-1", 500, 3), ("sku-2", 1_000_000, 100_000)],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let handles = run_buyers(
        c.client_view(),
        "room-x",
        vec!["sku-1".into(), "sku-2".into()],
        6,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_secs(3));
    for id in c.ids() {
        c.kill(id);
    }
    stop.store(true, Ordering::Relaxed);
    // Buyers retry against dead nodes until their deadline; give up now.
    let attempts = join_all(handles);
    for id in c.ids() {
        c.spawn(id);
    }
    for id in c.ids() {
        c.wait_healthy(id);
    }
    c.wait_leader(Duration::from_secs(15));
    c.wait_converged(Duration::from_secs(30));
    let checked = assert_acknowledged_orders_present(&c, &attempts);
    assert!(
        checked > 50,
        "too few acknowledged orders to mean anything: {checked}"
    );
    assert_no_double_acks(&attempts);
    // Limited stock was never oversold.
    let l = listing(&c, c.wait_leader(Duration::from_secs(5)), "room-x", "sku-1");
    assert!(l["stock_left"].as_u64().is_some(), "{l}");
    c.assert_invariants();
}

fn newest_wal(dir: &std::path::Path) -> std::path::PathBuf {
    let mut wals: Vec<_> = roomkeeper_e2e::files_under(&dir.join("log"))
        .into_iter()
        .filter(|p| p.extension().map(|e| e == "wal").unwrap_or(false))
        .collect();
    wals.sort();
    wals.pop().expect("a wal file")
}

#[test]
fn torn_log_tail_is_truncated_and_the_node_catches_up() {
    let mut c = Cluster::start_initialized(ClusterOptions::nodes(3));
    c.create_room("room-t", &[("sku-1", 1_000, 1_000)]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let victim = c
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("follower");
    for i in 0..20 {
        let body = order_body("sku-1", &format!("b{i}"), 1, &format!("k{i}"));
        assert_eq!(
            c.client("POST", leader, "/v1/rooms/room-t/orders", Some(&body))
                .expect("order")
                .status,
            201
        );
    }
    c.wait_converged(Duration::from_secs(10));
    c.kill(victim);
    let wal = newest_wal(&c.node(victim).data_dir);
    let len = std::fs::metadata(&wal).expect("wal").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("open wal");
    f.set_len(len - 5).expect("tear the tail");
    drop(f);
    c.spawn(victim);
    c.wait_healthy(victim);
    c.wait_converged(Duration::from_secs(15));
    assert_eq!(c.status(victim).expect("status")["orders"], json!(20));
    c.assert_invariants();
}

#[test]
fn damaged_log_refuses_to_start_with_a_clear_error() {
    let (mut c, leader, victim) = three_nodes_and_a_follower("room-g", 10);
    c.kill(victim);
    let wal = newest_wal(&c.node(victim).data_dir);
    let mut bytes = std::fs::read(&wal).expect("read wal");
    bytes.extend_from_slice(&[0xAB; 64]);
    std::fs::write(&wal, bytes).expect("damage wal");
    c.spawn(victim);
    let mut child = c.nodes[(victim - 1) as usize].child.take().expect("child");
    let mut status = None;
    wait_until(Duration::from_secs(10), "the damaged node to exit", || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    assert!(
        !status.map(|s| s.success()).unwrap_or(true),
        "a damaged log must not start"
    );
    let log = c.node_log(victim);
    assert!(
        log.contains("damaged"),
        "the error must say the log is damaged:\n{log}"
    );
    // The other two keep serving.
    let r = c
        .client(
            "POST",
            leader,
            "/v1/rooms/room-g/orders",
            Some(&order_body("sku-1", "z", 1, "z")),
        )
        .expect("order");
    assert_eq!(r.status, 201);
}

#[test]
fn a_member_whose_volume_was_wiped_stays_out_of_raft_under_its_old_id() {
    let (mut c, leader, victim) = three_nodes_and_a_follower("room-w", 10);
    c.kill(victim);
    let data_dir = c.node(victim).data_dir.clone();
    std::fs::remove_dir_all(&data_dir).expect("wipe the volume");
    // The operator's record: every node id here has been a member.
    let joined = c.dir.join("joined-ids");
    std::fs::write(&joined, "# node ids that have been Raft members\n1\n2\n3\n").expect("write");
    c.opts.extra_args = vec!["--joined-ids-file".into(), joined.display().to_string()];
    c.spawn(victim);
    c.wait_healthy(victim);

    let r = c
        .admin("GET", victim, "/admin/status", None)
        .expect("status");
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.code(), "wiped_volume", "{:?}", r.body);
    assert_eq!(r.body["node_id"], json!(victim));
    let r = c
        .admin("POST", victim, "/admin/init", Some(r#"{"members":{}}"#))
        .expect("init");
    assert_eq!(r.status, 409, "every admin call is refused: {:?}", r.body);
    let r = http(
        "GET",
        &c.node(victim).admin_addr,
        "/admin/status",
        None,
        None,
        Duration::from_secs(2),
    )
    .expect("status without a token");
    assert_eq!(r.status, 401, "the admin token is still required");
    let r = http(
        "GET",
        &c.node(victim).admin_addr,
        "/readyz",
        None,
        None,
        Duration::from_secs(2),
    )
    .expect("readyz");
    assert_eq!(r.status, 503);
    let r = http(
        "GET",
        &c.node(victim).admin_addr,
        "/metrics",
        None,
        None,
        Duration::from_secs(2),
    )
    .expect("metrics");
    assert!(
        r.body.to_string().contains("roomkeeper_node_quarantined"),
        "{:?}",
        r.body
    );
    // It speaks no Raft and serves no clients under the old id, and leaves
    // the directory as it found it.
    for addr in [&c.node(victim).raft_addr, &c.node(victim).api_addr] {
        assert!(
            std::net::TcpStream::connect(addr.as_str()).is_err(),
            "{addr} must not listen"
        );
    }
    assert!(
        std::fs::read_dir(&data_dir).map_or(true, |mut d| d.next().is_none()),
        "the quarantined node wrote into its data directory"
    );
    assert!(
        c.node_log(victim).contains("wiped"),
        "{}",
        c.node_log(victim)
    );
    // The other two keep serving, and still count the member as absent.
    let r = c
        .client(
            "POST",
            leader,
            "/v1/rooms/room-w/orders",
            Some(&order_body("sku-1", "w", 1, "w")),
        )
        .expect("order");
    assert_eq!(r.status, 201, "{:?}", r.body);
    // A node that kept its volume is not affected by the same file.
    let other = c
        .ids()
        .into_iter()
        .find(|&i| i != leader && i != victim)
        .unwrap_or(leader);
    c.restart(other);
    c.wait_healthy(other);
    let r = c
        .admin("GET", other, "/admin/status", None)
        .expect("status");
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[test]
fn hostile_client_input_gets_a_4xx_with_a_code_and_changes_nothing() {
    let c = Cluster::start_initialized(ClusterOptions::nodes(3));
    c.create_room("room-h", &[("sku-1", 10, 5)]);
    let l = c.wait_leader(Duration::from_secs(5));
    let before = listing(&c, l, "room-h", "sku-1");
    let big = format!(
        r#"{{"sku":"sku-1","buyer":"x","qty":1,"idempotency_key":"k","contact":"{}"}}"#,
        "a".repeat(64 * 1024)
    );
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/v1/rooms/room-h/orders",
            "{not json".into(),
            400,
            "invalid_json",
        ),
        (
            "/v1/rooms/room-h/orders",
            r#"{"sku":"sku-1","buyer":"x","qty":-1,"idempotency_key":"k"}"#.into(),
            422,
            "invalid_json",
        ),
        (
            "/v1/rooms/room-h/orders",
            r#"{"sku":"sku-1","buyer":"x","qty":99999999999,"idempotency_key":"k"}"#.into(),
            422,
            "invalid_json",
        ),
        (
            "/v1/rooms/room-h/orders",
            r#"{"sku":"sku-1","buyer":"x","qty":0,"idempotency_key":"k"}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/v1/rooms/room-h/orders",
            r#"{"sku":"sku-1","buyer":"x","qty":1000000,"idempotency_key":"k"}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/v1/rooms/room-h/orders",
            r#"{"sku":"sku-1","buyer":"","qty":1,"idempotency_key":"k"}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/v1/rooms/room-h/orders",
            r#"{"sku":"sku-1","buyer":"x y","qty":1,"idempotency_key":"k"}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/v1/rooms/room-h/orders",
            r#"{"sku":"sku-1","buyer":"x","qty":1,"idempotency_key":"k","admin":true}"#.into(),
            422,
            "invalid_json",
        ),
        (
            "/v1/rooms/nope/orders",
            r#"{"sku":"sku-1","buyer":"x","qty":1,"idempotency_key":"k1"}"#.into(),
            404,
            "room_not_found",
        ),
        (
            "/v1/rooms/room-h/orders",
            r#"{"sku":"nope","buyer":"x","qty":1,"idempotency_key":"k2"}"#.into(),
            404,
            "listing_not_found",
        ),
        ("/v1/rooms/room-h/orders", big, 413, "body_too_large"),
    ];
    for (path, body, status, code) in cases {
        let r = c.client("POST", l, path, Some(&body)).expect("request");
        assert_eq!(
            (r.status, r.code()),
            (status, code),
            "{path} {}: {:?}",
            &body[..body.len().min(80)],
            r.body
        );
    }
    let r = c.client("GET", l, "/v1/orders/abc", None).expect("bad id");
    assert_eq!((r.status, r.code()), (400, "invalid_request"));
    let r = c
        .client(
            "GET",
            l,
            "/v1/rooms/room-h/listings/sku-1?consistency=maybe",
            None,
        )
        .expect("bad query");
    assert_eq!((r.status, r.code()), (400, "invalid_query"));
    let r = http(
        "POST",
        &c.node(l).api_addr,
        "/v1/rooms/room-h/orders",
        Some(br#"{"sku":"sku-1","buyer":"x","qty":1,"idempotency_key":"k"}"#),
        Some("wrong"),
        Duration::from_secs(2),
    )
    .expect("unauth");
    assert_eq!((r.status, r.code()), (401, "unauthorized"));
    let r = http(
        "GET",
        &c.node(l).admin_addr,
        "/admin/status",
        None,
        Some(CLIENT_TOKEN),
        Duration::from_secs(2),
    )
    .expect("admin unauth");
    assert_eq!(
        r.status, 401,
        "the client token must not open the admin API"
    );
    let r = c
        .admin("POST", l, "/admin/voters", Some(r#"{"voters":[]}"#))
        .expect("empty voters");
    assert_eq!(r.status, 400);
    for (path, body) in [
        ("/admin/transfer-leader", "not json"),
        ("/admin/learners", r#"{"node_id":"x"}"#),
    ] {
        let r = c
            .admin("POST", l, path, Some(body))
            .expect("bad admin body");
        assert!(r.status == 400 || r.status == 422, "{path}: {:?}", r.body);
        assert_eq!(r.code(), "invalid_json", "{path}: {:?}", r.body);
    }
    assert_eq!(
        listing(&c, l, "room-h", "sku-1"),
        before,
        "hostile input changed the listing"
    );
    assert_eq!(c.status(l).expect("status")["orders"], json!(0));
    c.assert_invariants();
}

/// A member that comes back on other addresses (a pod recreated with a new IP)
/// is unreachable until the leader records them; then it catches up and votes.
#[test]
fn a_member_that_moved_is_reached_again_once_its_addresses_are_updated() {
    let (mut c, leader, moved) = three_nodes_and_a_follower("room-m", 1000);
    c.kill(moved);
    {
        let n = &mut c.nodes[(moved - 1) as usize];
        for addr in [&mut n.raft_addr, &mut n.api_addr, &mut n.admin_addr] {
            let (new, reserved) = roomkeeper_e2e::reserve_addr();
            *addr = new;
            n.reserved.push(reserved);
        }
    }
    c.spawn(moved);
    c.wait_healthy(moved);
    let order = |c: &Cluster, i: u32| {
        c.client(
            "POST",
            leader,
            "/v1/rooms/room-m/orders",
            Some(&order_body("sku-1", &format!("m{i}"), 1, &format!("m{i}"))),
        )
        .expect("order")
    };
    for i in 0..5 {
        assert_eq!(order(&c, i).status, 201);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let target = c.status(leader).expect("leader status")["committed_index"]
        .as_u64()
        .unwrap_or(0);
    let applied = c.status(moved).expect("moved status")["applied_index"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        applied < target,
        "the leader cannot reach the old address, yet the moved node applied {applied} of {target}"
    );

    // Refusals: not a member, another region.
    let mut info = c.node(moved).info();
    let r = c
        .admin(
            "POST",
            leader,
            "/admin/addresses",
            Some(&json!({"node_id": 99, "node": info}).to_string()),
        )
        .expect("unknown id");
    assert_eq!((r.status, r.code()), (404, "not_a_member"), "{:?}", r.body);
    info.region = "elsewhere".into();
    let r = c
        .admin(
            "POST",
            leader,
            "/admin/addresses",
            Some(&json!({"node_id": moved, "node": info}).to_string()),
        )
        .expect("region change");
    assert_eq!(r.status, 400, "{:?}", r.body);

    let body = json!({"node_id": moved, "node": c.node(moved).info()}).to_string();
    let r = c
        .admin("POST", leader, "/admin/addresses", Some(&body))
        .expect("update");
    assert_eq!(
        (r.status, &r.body["changed"]),
        (200, &json!(true)),
        "{:?}",
        r.body
    );
    let r = c
        .admin("POST", leader, "/admin/addresses", Some(&body))
        .expect("update again");
    assert_eq!(
        (r.status, &r.body["changed"]),
        (200, &json!(false)),
        "{:?}",
        r.body
    );
    for i in 5..10 {
        assert_eq!(order(&c, i).status, 201);
    }
    c.wait_converged(Duration::from_secs(10));
    let members = &c.status(moved).expect("status")["members"];
    assert_eq!(
        members[moved.to_string()]["raft_addr"],
        json!(c.node(moved).raft_addr),
        "every node learns the new address: {members}"
    );
    // It votes again: with the third node down, the leader still commits.
    let third = c
        .ids()
        .into_iter()
        .find(|&i| i != leader && i != moved)
        .expect("third");
    c.kill(third);
    assert_eq!(
        order(&c, 10).status,
        201,
        "the moved node completes the quorum"
    );
    c.assert_invariants();
}

#[test]
fn lost_quorum_fails_orders_fast_with_a_reason_and_recovers() {
    let mut c = Cluster::start_initialized(ClusterOptions::nodes(3));
    c.create_room("room-q", &[("sku-1", 100, 10)]);
    let leader = c.wait_leader(Duration::from_secs(5));
    let others: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    for id in &others {
        c.kill(*id);
    }
    std::thread::sleep(Duration::from_millis(2500));
    let started = Instant::now();
    let r = c
        .client(
            "POST",
            leader,
            "/v1/rooms/room-q/orders",
            Some(&order_body("sku-1", "q", 1, "q1")),
        )
        .expect("order without quorum");
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(
        matches!(r.code(), "no_quorum" | "no_leader"),
        "{:?}",
        r.body
    );
    assert!(
        r.body["message"].as_str().unwrap_or("").contains("quorum"),
        "the reason must name quorum: {:?}",
        r.body
    );
    assert!(r.retry_after.is_some(), "503 must carry Retry-After");
    assert!(
        took < Duration::from_secs(1),
        "no-quorum refusal took {took:?}: must fail fast"
    );
    let r = c
        .client("GET", leader, "/v1/rooms/room-q/listings/sku-1", None)
        .expect("read");
    assert_eq!(
        r.status, 503,
        "a linearizable read without quorum must refuse: {:?}",
        r.body
    );
    for id in &others {
        c.spawn(*id);
    }
    let l = c.wait_leader(Duration::from_secs(15));
    let mut ok = false;
    wait_until(Duration::from_secs(10), "orders to resume", || {
        ok = c
            .client(
                "POST",
                l,
                "/v1/rooms/room-q/orders",
                Some(&order_body("sku-1", "q", 1, "q2")),
            )
            .map(|r| r.status == 201 || r.status == 200)
            .unwrap_or(false);
        ok
    });
    c.assert_invariants();
}

#[test]
fn leadership_moves_on_demand_and_membership_changes_one_step_at_a_time() {
    let mut opts = ClusterOptions::nodes(4);
    opts.regions = vec![
        "region-1".into(),
        "region-2".into(),
        "region-3".into(),
        "region-3".into(),
    ];
    let c = Cluster::start(opts);
    // Bootstrap with three voters; node 4 joins as a learner, is promoted, then removed.
    let members: std::collections::BTreeMap<String, roomkeeper_api::NodeInfo> = c.nodes[..3]
        .iter()
        .map(|n| (n.id.to_string(), n.info()))
        .collect();
    let r = c
        .admin(
            "POST",
            1,
            "/admin/init",
            Some(&json!({"members": members}).to_string()),
        )
        .expect("init");
    assert_eq!(r.status, 200, "{:?}", r.body);
    let leader = c.wait_leader(Duration::from_secs(10));
    let body = json!({"node_id": 4, "node": c.node(4).info()}).to_string();
    let r = c
        .admin("POST", leader, "/admin/learners", Some(&body))
        .expect("add learner");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(c.status(leader).expect("s")["learners"], json!([4]));
    let r = c
        .admin("POST", leader, "/admin/promote", Some(r#"{"node_id":4}"#))
        .expect("promote");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(c.status(leader).expect("s")["voters"], json!([1, 2, 3, 4]));
    let target = c
        .ids()
        .into_iter()
        .find(|&i| i != leader && i != 4)
        .expect("target");
    let r = c
        .admin(
            "POST",
            leader,
            "/admin/transfer-leader",
            Some(&json!({"to": target}).to_string()),
        )
        .expect("transfer");
    assert_eq!(r.status, 202, "{:?}", r.body);
    wait_until(Duration::from_secs(10), "leadership to move", || {
        c.leader() == Some(target)
    });
    let r = c
        .admin("POST", target, "/admin/remove", Some(r#"{"node_id":4}"#))
        .expect("remove");
    assert_eq!(r.status, 200, "{:?}", r.body);
    wait_until(Duration::from_secs(5), "node 4 to leave", || {
        c.status(target)
            .map(|s| s["voters"] == json!([1, 2, 3]) && s["learners"] == json!([]))
            .unwrap_or(false)
    });
    let r = c
        .admin(
            "POST",
            target,
            "/admin/transfer-leader",
            Some(r#"{"to":42}"#),
        )
        .expect("bad transfer");
    assert_eq!(r.status, 400, "{:?}", r.body);
}

#[test]
fn overload_is_refused_fast_with_429_and_retry_after() {
    let mut opts = ClusterOptions::nodes(3);
    opts.extra_args = vec!["--max-inflight-writes".into(), "4".into()];
    let c = Cluster::start_initialized(opts);
    c.create_room("room-o", &[("sku-1", 100_000, 100_000)]);
    let leader = c.wait_leader(Duration::from_secs(5));
    // A stalled disk on the leader makes every write slow; the node must refuse
    // what it cannot hold instead of queueing without bound.
    c.faults(leader, json!({"fsync_delay_ms": 400}));
    let addr = c.node(leader).api_addr.clone();
    let handles: Vec<_> = (0..24)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let body = order_body("sku-1", &format!("o{i}"), 1, &format!("o{i}"));
                let started = Instant::now();
                let r = http(
                    "POST",
                    &addr,
                    "/v1/rooms/room-o/orders",
                    Some(body.as_bytes()),
                    Some(CLIENT_TOKEN),
                    Duration::from_secs(10),
                );
                (r, started.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let refused: Vec<_> = results
        .iter()
        .filter_map(|(r, took)| {
            r.as_ref()
                .ok()
                .filter(|r| r.status == 429)
                .map(|r| (r.clone(), *took))
        })
        .collect();
    assert!(
        !refused.is_empty(),
        "24 concurrent writes against 4 slots: some must get 429"
    );
    for (r, took) in &refused {
        assert_eq!(r.code(), "overloaded");
        assert!(r.retry_after.is_some(), "429 must carry Retry-After");
        assert!(
            *took < Duration::from_millis(300),
            "a refusal must be fast, took {took:?}"
        );
    }
    let accepted = results
        .iter()
        .filter(|(r, _)| r.as_ref().map(|r| r.status == 201).unwrap_or(false))
        .count();
    assert!(
        accepted >= 1,
        "the slots that were free must still be served"
    );
    c.faults(leader, json!({"fsync_delay_ms": 0}));
    c.wait_converged(Duration::from_secs(10));
    assert_eq!(c.status(leader).expect("status")["orders"], json!(accepted));
    c.assert_invariants();
}

/// A one-voter cluster is its own quorum: after an idle spell longer than the
/// quorum timeout (no heartbeats go anywhere, so openraft's quorum-ack clock
/// only moves on writes) it must still take orders, not answer `no_quorum`
/// for ever.
#[test]
fn a_single_voter_cluster_takes_orders_after_idling() {
    let c = Cluster::start_initialized(ClusterOptions::nodes(1));
    c.create_room("room-solo", &[("sku-1", 10, 5)]);
    let leader = c.wait_leader(Duration::from_secs(10));
    for (i, idle) in [0u64, 2_500, 2_500].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(idle));
        let body = order_body("sku-1", &format!("solo-{i}"), 1, &format!("solo-k{i}"));
        let r = c
            .client("POST", leader, "/v1/rooms/room-solo/orders", Some(&body))
            .expect("order");
        assert_eq!(
            r.status, 201,
            "order {i} after {idle} ms idle: {:?}",
            r.body
        );
    }
}

/// The `paused` fault hook is `pauseNode` where no SIGSTOP reaches the
/// process (a pod): the paused leader answers nothing, probes included, but
/// the one call that lifts the pause; its Raft timers stop, the others elect a
/// leader and go on taking orders; unpaused, it follows the new leader and
/// holds every order.
#[test]
fn a_paused_node_answers_nothing_until_its_pause_is_lifted() {
    let c = Cluster::start_initialized(ClusterOptions::nodes(3));
    c.create_room("room-p", &[("sku-1", 1_000, 1_000)]);
    let old = c.wait_leader(Duration::from_secs(5));
    c.faults(old, json!({"paused": true}));
    let quiet = Duration::from_millis(800);
    let probe = http_via(
        c.admin_tls.as_ref(),
        "GET",
        &c.node(old).admin_addr,
        "/healthz",
        None,
        None,
        quiet,
    );
    assert!(probe.is_err(), "a paused node answered /healthz: {probe:?}");
    let order = http_via(
        c.client_tls.as_ref(),
        "POST",
        &c.node(old).api_addr,
        "/v1/rooms/room-p/orders",
        Some(order_body("sku-1", "p", 1, "p-paused").as_bytes()),
        Some(CLIENT_TOKEN),
        quiet,
    );
    assert!(order.is_err(), "a paused node answered an order: {order:?}");
    // The pause itself is still readable: the call that lifts it must work.
    let faults = c.admin("GET", old, "/admin/faults", None).expect("faults");
    assert_eq!(faults.body["paused"], json!(true), "{:?}", faults.body);

    let others: Vec<u64> = c.ids().into_iter().filter(|&i| i != old).collect();
    let new = leader_among(&c, &others);
    let r = c
        .client(
            "POST",
            new,
            "/v1/rooms/room-p/orders",
            Some(&order_body("sku-1", "p", 1, "p-1")),
        )
        .expect("order to the new leader");
    assert_eq!(r.status, 201, "{:?}", r.body);

    // Its port still takes connections, so nobody lifted its lease (D49).
    for &i in &others {
        let lifted = c.metric(i, "roomkeeper_raft_dead_leader_total", "");
        assert_eq!(lifted, 0.0, "node {i} treated a paused leader as dead");
    }

    c.faults(old, json!({}));
    wait_until(Duration::from_secs(10), "the old leader to follow", || {
        c.node_status(old)
            .is_some_and(|s| s.role == "follower" && s.leader_id == Some(new))
    });
    c.wait_converged(Duration::from_secs(10));
    c.assert_invariants();
}

/// A killed leader's port refuses connections: a follower starts an election
/// without waiting out its lease, the other lifts the lease for that vote,
/// and both say so in `roomkeeper_raft_dead_leader_total` (D49). Every
/// acknowledged order survives, and the killed node follows when it returns.
#[test]
fn a_killed_leaders_followers_elect_without_waiting_out_its_lease() {
    let mut c = Cluster::start_initialized(ClusterOptions::nodes(3));
    c.create_room("room-k", &[("sku-1", 1_000, 1_000), ("sku-last", 1, 1)]);
    let old = c.wait_leader(Duration::from_secs(5));
    for i in 0..20 {
        let r = place(&c, old, "sku-1", &format!("b{i}"), 1, &format!("k-{i}")).expect("order");
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    c.kill(old);
    let others: Vec<u64> = c.ids().into_iter().filter(|&i| i != old).collect();
    let new = leader_among(&c, &others);
    let follower = others.iter().copied().find(|&i| i != new).unwrap_or(0);
    let started = c.metric(
        new,
        "roomkeeper_raft_dead_leader_total",
        "event=\"election_started\"",
    );
    let vouched = c.metric(
        follower,
        "roomkeeper_raft_dead_leader_total",
        "event=\"vote_vouched\"",
    );
    assert!(
        started >= 1.0 && vouched >= 1.0,
        "the new leader {new} started {started} dead-leader elections, node {follower} vouched {vouched} votes: \
         the election waited out the lease"
    );
    let r = place(&c, new, "sku-1", "after", 1, "k-after").expect("order to the new leader");
    assert_eq!(r.status, 201, "{:?}", r.body);
    // The new leader still refuses what must fail from its own state: its
    // quorum acknowledged it recently enough (the precheck's rule, D49).
    let r = place(&c, new, "sku-last", "first", 1, "k-last-1").expect("the last unit");
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(
        sold_out_refused_early(&c, new, 1),
        1.0,
        "the sold-out order went through Raft instead of the precheck"
    );
    c.spawn(old);
    c.wait_healthy(old);
    wait_until(Duration::from_secs(10), "the old leader to follow", || {
        c.node_status(old)
            .is_some_and(|s| s.role == "follower" && s.leader_id == Some(new))
    });
    c.wait_converged(Duration::from_secs(10));
    c.assert_invariants();
    for i in 0..20 {
        let r = c
            .client("GET", new, &format!("/v1/buyers/b{i}/orders"), None)
            .expect("orders of a buyer");
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(
            r.body.to_string().contains("sku-1"),
            "buyer b{i}'s order is gone: {:?}",
            r.body
        );
    }
}

/// A leader whose quorum answers slower than half an election timeout (a
/// slow WAN) cannot reuse its last quorum acknowledgement for the sold-out
/// precheck; it confirms its leadership with one heartbeat round instead and
/// still refuses from its own state, rather than sending every refusal of a
/// sold-out flood through the log (D49, "What it costs").
#[test]
fn a_leader_a_slow_wan_from_its_quorum_still_refuses_sold_out_orders_early() {
    // Heartbeats time out after one interval, so the interval must outlast
    // the delay below for followers to hear the leader at all.
    let mut opts = ClusterOptions::nodes(3);
    opts.extra_args = [
        "--heartbeat-ms=200",
        "--election-timeout-min-ms=300",
        "--election-timeout-max-ms=600",
    ]
    .map(String::from)
    .to_vec();
    let c = Cluster::start_initialized(opts);
    c.create_room("room-k", &[("sku-last", 1, 1)]);
    let leader = c.wait_leader(Duration::from_secs(5));
    // 160 ms before every Raft message leaves the leader: a quorum
    // acknowledgement is always older than E/2 = 150 ms, yet heartbeats
    // arrive inside the election timeout.
    let delays: serde_json::Map<String, serde_json::Value> = c
        .ids()
        .into_iter()
        .filter(|&i| i != leader)
        .map(|i| (i.to_string(), json!(160)))
        .collect();
    c.faults(leader, json!({ "peer_delay_ms": delays }));
    let r = place(&c, leader, "sku-last", "first", 1, "k-1").expect("the last unit");
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(
        sold_out_refused_early(&c, leader, 5),
        5.0,
        "sold-out orders went through Raft: the precheck gave up on a slow quorum"
    );
    assert_eq!(
        c.wait_leader(Duration::from_secs(5)),
        leader,
        "the delay cost the leadership"
    );
    c.faults(leader, json!({}));
    c.wait_converged(Duration::from_secs(10));
    c.assert_invariants();
}

/// Places `n` orders for the sold-out `sku-last` on `node`, checks each is
/// refused `sold_out`, and returns how many of them the precheck answered
/// (`roomkeeper_order_early_refusals_total` before and after).
fn sold_out_refused_early(c: &Cluster, node: u64, n: usize) -> f64 {
    let early = "roomkeeper_order_early_refusals_total";
    let before = c.metric(node, early, "");
    for i in 0..n {
        let r = place(
            c,
            node,
            "sku-last",
            &format!("late-{i}"),
            1,
            &format!("k-late-{i}"),
        )
        .expect("an order for a sold-out listing");
        assert_eq!(r.body["code"], "sold_out", "{:?}", r.body);
    }
    c.metric(node, early, "") - before
}

/// `POST /v1/rooms/room-k/orders` to `node`.
fn place(
    c: &Cluster,
    node: u64,
    sku: &str,
    buyer: &str,
    qty: u32,
    key: &str,
) -> std::io::Result<Reply> {
    c.client(
        "POST",
        node,
        "/v1/rooms/room-k/orders",
        Some(&order_body(sku, buyer, qty, key)),
    )
}

/// Waits (10 s at most) for one of `nodes` to lead; its id.
fn leader_among(c: &Cluster, nodes: &[u64]) -> u64 {
    let mut new = 0;
    wait_until(
        Duration::from_secs(10),
        "a new leader among the others",
        || {
            new = nodes
                .iter()
                .filter_map(|&i| c.node_status(i))
                .find(|s| s.role == "leader")
                .map_or(0, |s| s.node_id);
            new != 0
        },
    );
    new
}
