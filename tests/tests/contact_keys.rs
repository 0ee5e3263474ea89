//! Contact key rotation on real node processes (issue 16 part 4): the key
//! file changes under running nodes, new orders are sealed under the newest
//! key, old ones stay readable, a re-seal through Raft moves every contact to
//! the newest key while orders keep coming, `roomkeeper contact-keys check`
//! fails while a retired key is in use and passes after, and the old key can
//! then be removed with every contact still readable. A marker contact is in
//! no file of the cluster (data dirs, node logs) at any point.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roomkeeper_api::admin::{ContactKeysReport, ResealReply};
use roomkeeper_api::client::{OrderContact, PlaceOrder};
use roomkeeper_e2e::{
    assert_in_no_file, binary, to_json, wait_until, Cluster, ClusterOptions, ADMIN_TOKEN,
};

const KEY_1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEY_2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const MARKER: &str = "MARKER-rotate-5f3a";

fn report(c: &Cluster, id: u64) -> ContactKeysReport {
    let r = c
        .admin("GET", id, "/admin/contact-keys", None)
        .expect("contact keys report");
    assert_eq!(r.status, 200, "{:?}", r.body);
    serde_json::from_value(r.body).expect("a contact keys report")
}

/// The sum of a metric's series with `label` on a node (0 when absent).
fn metric(c: &Cluster, id: u64, name: &str, label: &str) -> f64 {
    c.metric(id, name, label)
}

/// Writes the key file and waits until every node judged it: `accepted`
/// (its reload counter moved, and it seals under `sealing`) or refused.
fn write_keys(c: &Cluster, text: &str, accepted: bool, sealing: u8) {
    const NAME: &str = "roomkeeper_contact_key_reloads_total";
    let series = if accepted {
        "result=\"ok\""
    } else {
        "result=\"refused\""
    };
    let before: Vec<f64> = c
        .ids()
        .iter()
        .map(|&id| metric(c, id, NAME, series))
        .collect();
    std::fs::write(c.contact_key_file(), text).expect("write the contact key file");
    for (i, id) in c.ids().into_iter().enumerate() {
        wait_until(
            Duration::from_secs(10),
            &format!("node {id} judged the key file ({series})"),
            || metric(c, id, NAME, series) > before[i],
        );
        assert_eq!(report(c, id).sealing_key_id, sealing, "node {id}");
    }
}

/// Places an order with a marker contact through `via`; returns its id.
fn order(c: &Cluster, via: u64, n: usize) -> u64 {
    let body = to_json(&PlaceOrder {
        sku: "sku-1".into(),
        buyer: format!("buyer-{n}"),
        qty: 1,
        idempotency_key: format!("key-{n}"),
        contact: format!("{MARKER}-{n}"),
    });
    let mut last = None;
    for _ in 0..20 {
        match c.client("POST", via, "/v1/rooms/room-k/orders", Some(&body)) {
            Ok(r) if r.status == 201 || r.status == 200 => {
                return r.body["order_id"].as_u64().expect("order id")
            }
            other => last = Some(other),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("order {n} through node {via} failed: {last:?}");
}

fn contact_of(c: &Cluster, via: u64, order_id: u64) -> String {
    let r = c
        .client("GET", via, &format!("/v1/orders/{order_id}/contact"), None)
        .expect("read contact");
    assert_eq!(
        r.status, 200,
        "order {order_id} via node {via}: {:?}",
        r.body
    );
    let oc: OrderContact = serde_json::from_value(r.body).expect("an order contact");
    oc.contact
}

fn contact_keys_cli(c: &Cluster, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(binary());
    cmd.arg("contact-keys").args(args);
    for n in &c.nodes {
        cmd.args(["--admin", &n.admin_addr]);
    }
    cmd.env("ROOMKEEPER_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run roomkeeper contact-keys")
}

fn records(r: &ContactKeysReport, key: &str) -> u64 {
    r.records.get(key).copied().unwrap_or(0)
}

#[test]
fn contact_keys_rotate_live_reseal_through_raft_and_the_old_key_can_go() {
    let mut opts = ClusterOptions::nodes(3);
    opts.extra_args = vec!["--contact-key-reload-ms".into(), "200".into()];
    let mut c = Cluster::start_initialized(opts);
    let leader = c.wait_leader(Duration::from_secs(10));
    let follower = c.ids().into_iter().find(|&i| i != leader).unwrap_or(1);

    // Key 1 only; orders through the leader and a follower seal under it.
    write_keys(&c, &format!("1 {KEY_1}\n"), true, 1);
    c.create_room("room-k", &[("sku-1", 100_000, 100_000)]);
    let mut ids: Vec<(u64, usize)> = Vec::new();
    for n in 0..20 {
        let via = if n % 2 == 0 { leader } else { follower };
        ids.push((order(&c, via, n), n));
    }
    c.wait_converged(Duration::from_secs(10));
    for id in c.ids() {
        let r = report(&c, id);
        assert_eq!(records(&r, "1"), 20, "node {id}: {r:?}");
        assert!(r.ok, "{r:?}");
    }
    let out = contact_keys_cli(&c, &["check"]);
    assert!(
        out.status.success(),
        "check with no retired key: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A bad file is refused and the keys in use are kept; so is a file that
    // drops key 1 while contacts still use it.
    write_keys(&c, "2 not-a-key\n", false, 1);
    write_keys(&c, &format!("2 {KEY_2}\n"), false, 1);
    ids.push((order(&c, follower, 20), 20));

    // Stage key 2 on every node first (it opens, key 1 still seals), then
    // rotate: key 2 is the newest; key 1 retired, still opens. No restart.
    write_keys(&c, &format!("1 {KEY_1}\n2 {KEY_2} staged\n"), true, 1);
    let staged = report(&c, leader);
    assert!(staged
        .keys
        .iter()
        .any(|k| k.id == 2 && k.staged && !k.retired));
    write_keys(&c, &format!("1 {KEY_1} retired\n2 {KEY_2}\n"), true, 2);
    for n in 21..31 {
        let via = if n % 2 == 0 { leader } else { follower };
        ids.push((order(&c, via, n), n));
    }
    c.wait_converged(Duration::from_secs(10));
    let r = report(&c, follower);
    assert_eq!((records(&r, "1"), records(&r, "2")), (21, 10), "{r:?}");
    assert_eq!(r.under_retired_keys, 21);
    assert!(!r.ok);
    for &(order_id, n) in &ids {
        assert_eq!(contact_of(&c, follower, order_id), format!("{MARKER}-{n}"));
    }
    let out = contact_keys_cli(&c, &["check"]);
    assert!(
        !out.status.success(),
        "check must fail while contacts use the retired key 1: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Re-seal in small batches while buyers keep ordering.
    let stop = Arc::new(AtomicBool::new(false));
    let during = {
        let api = c.node(follower).api_addr.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut placed = Vec::new();
            let mut n = 1000;
            while !stop.load(Ordering::Relaxed) {
                let body = to_json(&PlaceOrder {
                    sku: "sku-1".into(),
                    buyer: format!("buyer-{n}"),
                    qty: 1,
                    idempotency_key: format!("key-{n}"),
                    contact: format!("{MARKER}-{n}"),
                });
                let r = roomkeeper_e2e::http(
                    "POST",
                    &api,
                    "/v1/rooms/room-k/orders",
                    Some(body.as_bytes()),
                    Some(roomkeeper_e2e::CLIENT_TOKEN),
                    Duration::from_secs(6),
                );
                placed.push((n, r.map(|r| (r.status, r.body["order_id"].as_u64()))));
                n += 1;
            }
            placed
        })
    };
    let out = contact_keys_cli(&c, &["reseal", "--batch", "4"]);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let placed = during.join().expect("buyers during the re-seal");
    assert!(
        out.status.success(),
        "reseal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: ResealReply = serde_json::from_slice(&out.stdout).expect("a re-seal reply");
    assert_eq!(reply.sealing_key_id, 2);
    assert_eq!(reply.resealed, 21, "{reply:?}");
    assert!(reply.batches >= 6, "batches of 4: {reply:?}");
    assert_eq!(reply.unreadable, 0);
    assert!(!placed.is_empty());
    for (n, r) in &placed {
        match r {
            Ok((201 | 200, Some(order_id))) => ids.push((*order_id, *n)),
            other => panic!("order {n} during the re-seal: {other:?}"),
        }
    }
    c.wait_converged(Duration::from_secs(10));
    let total = ids.len() as u64;
    for id in c.ids() {
        let r = report(&c, id);
        assert_eq!(records(&r, "1"), 0, "node {id}: {r:?}");
        assert_eq!(records(&r, "2"), total, "node {id}: {r:?}");
        assert!(r.ok, "{r:?}");
    }
    let out = contact_keys_cli(&c, &["check"]);
    assert!(
        out.status.success(),
        "check after the re-seal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Again: nothing left to move.
    let again = contact_keys_cli(&c, &["reseal"]);
    let again: ResealReply = serde_json::from_slice(&again.stdout).expect("a re-seal reply");
    assert_eq!((again.resealed, again.batches), (0, 0), "{again:?}");

    // Key 1 leaves the file; every contact still reads, through every node,
    // and through a node restarted (it replays the log: orders, then re-seals).
    write_keys(&c, &format!("2 {KEY_2}\n"), true, 2);
    c.restart(follower);
    c.wait_converged(Duration::from_secs(15));
    for id in c.ids() {
        assert_eq!(report(&c, id).keys.len(), 1);
        for &(order_id, n) in &ids {
            assert_eq!(contact_of(&c, id, order_id), format!("{MARKER}-{n}"));
        }
    }
    c.assert_invariants();
    // The marker is in no data file (log and snapshot) and no node log.
    for id in c.ids() {
        let r = c
            .admin("POST", id, "/admin/snapshot", None)
            .expect("snapshot");
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    for id in c.ids() {
        wait_until(
            Duration::from_secs(10),
            &format!("node {id} took a snapshot"),
            || c.node_status(id).is_some_and(|s| s.snapshot_index > 0),
        );
    }
    assert_in_no_file(&c.dir, MARKER.as_bytes());
}
