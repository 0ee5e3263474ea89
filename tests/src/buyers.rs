//! Buyers of an operator-managed cluster, for the failover end-to-end tests:
//! a client's credentials on the pods' APIs ([`Auth`]), single calls, a
//! steady sale load recorded for the drills' history checker ([`SaleLoad`]),
//! and the checker's verdict on it once the cluster has healed
//! ([`judge_sale`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use kube::Client;
use roomkeeper_chaos::history::{FinalOrder, History, OpKind, OpResult};
use roomkeeper_chaos::recorder::Recorder;
use serde_json::{json, Value};

use crate::http_client;

/// A client's credentials on the pods' APIs: its bearer token, and TLS as
/// the operator speaks it (the cluster's CA, an operator certificate).
#[derive(Clone)]
pub struct Auth {
    pub token: String,
    pub tls: http_client::Tls,
}

impl Auth {
    /// `token` with TLS under the CA of cluster `ns/cluster` (read through
    /// `admin`, in the operator's cluster).
    pub async fn new(token: String, admin: &Client, ns: &str, cluster: &str) -> Result<Self> {
        let tls = crate::operator::node_tls(admin, ns, cluster).await?;
        Ok(Self { token, tls })
    }

    /// `http_client::request` over TLS.
    pub async fn request(
        &self,
        addr: &str,
        req: http::Request<http_body_util::Full<bytes::Bytes>>,
        timeout: Duration,
    ) -> std::io::Result<http_client::Response> {
        http_client::request_tls(addr, &self.tls, req, timeout).await
    }
}

/// One call to a pod's client API; a non-2xx answer is an error.
pub async fn client_call(
    ip: &str,
    token: &Auth,
    method: &str,
    path: &str,
    body: Value,
) -> Result<Value> {
    let addr = format!("{ip}:7201");
    let text = body.to_string();
    let req = http_client::build(
        method,
        &addr,
        path,
        Some(text.as_bytes()),
        Some(&token.token),
    )?;
    let r = token.request(&addr, req, Duration::from_secs(5)).await?;
    ensure!(
        r.status < 300,
        "{method} {path}: HTTP {} {}",
        r.status,
        r.text()
    );
    Ok(serde_json::from_slice(&r.body)?)
}

/// Opens a sale through the pod at `ip`: room `room` (live, homed in
/// `home_region`) with one listing of `stock` units, one per buyer.
pub async fn open_sale(
    ip: &str,
    token: &Auth,
    (room, sku, stock): (&str, &str, u32),
    home_region: &str,
) -> Result<()> {
    client_call(
        ip,
        token,
        "PUT",
        &format!("/v1/rooms/{room}"),
        json!({"title": "evacuate", "home_region": home_region, "state": "live"}),
    )
    .await?;
    client_call(
        ip,
        token,
        "PUT",
        &format!("/v1/rooms/{room}/listings/{sku}"),
        json!({"price_cents": 100, "stock": stock, "per_buyer_limit": 1, "state": "open"}),
    )
    .await?;
    Ok(())
}

/// GET on the first pod that answers 200 (ten rounds, 300 ms apart).
pub async fn read_any(ips: &[String], token: &Auth, path: &str) -> Result<Value> {
    let mut last = String::new();
    for _ in 0..10 {
        for ip in ips {
            let addr = format!("{ip}:7201");
            let req = http_client::build("GET", &addr, path, None, Some(&token.token))?;
            match token.request(&addr, req, Duration::from_secs(3)).await {
                Ok(r) if r.status == 200 => return Ok(serde_json::from_slice(&r.body)?),
                Ok(r) => last = format!("{addr}: HTTP {} {}", r.status, r.text()),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("GET {path}: {last}")
}

/// What an order's answer means to the history checker.
pub fn order_result(status: u16, body: &Value) -> OpResult {
    let code = body["code"].as_str().unwrap_or_default().to_string();
    match status {
        200..=299 => match body["order_id"].as_u64() {
            Some(id) => OpResult::Placed {
                order_id: id.to_string(),
            },
            None => OpResult::Unknown,
        },
        // A definite refusal: the store did not act.
        400..=499 if !code.is_empty() => OpResult::Rejected { code },
        503 if [
            "no_leader",
            "no_quorum",
            "overloaded",
            "not_leader",
            "sales_paused",
        ]
        .contains(&code.as_str()) =>
        {
            OpResult::Rejected { code }
        }
        _ => OpResult::Unknown,
    }
}

/// A steady sale: `clients` buyers' clients, one order each 150 ms, each
/// order its own buyer and key, sent round-robin to the pod addresses in
/// `targets` (which the caller keeps current, as a storefront following the
/// route would), every call recorded.
pub struct SaleLoad {
    pub rec: Arc<Recorder>,
    pub targets: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<(String, String)>>>,
}

impl SaleLoad {
    pub fn start(
        clients: u32,
        token: &Auth,
        room: &str,
        sku: &str,
        targets: Vec<String>,
    ) -> SaleLoad {
        let rec = Arc::new(Recorder::new());
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(targets));
        let handles = (0..clients)
            .map(|client| {
                let (rec, stop, shared, token) =
                    (rec.clone(), stop.clone(), shared.clone(), token.clone());
                let (room, sku) = (room.to_string(), sku.to_string());
                tokio::spawn(async move {
                    let mut buyers = Vec::new();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let ip = {
                            let t = shared.lock().map(|t| t.clone()).unwrap_or_default();
                            (!t.is_empty()).then(|| t[(n + client as usize) % t.len()].clone())
                        };
                        let Some(ip) = ip else {
                            tokio::time::sleep(Duration::from_millis(150)).await;
                            continue;
                        };
                        let (buyer, key) = (format!("b{client}-{n}"), format!("k{client}-{n}"));
                        let pending = rec.invoke(
                            client,
                            OpKind::PlaceOrder {
                                sku: sku.clone(),
                                buyer: buyer.clone(),
                                qty: 1,
                                key: key.clone(),
                            },
                        );
                        let body = json!({
                            "sku": sku, "buyer": buyer, "qty": 1, "idempotency_key": key,
                            "contact": "+1-555-0000",
                        })
                        .to_string();
                        let addr = format!("{ip}:7201");
                        let path = format!("/v1/rooms/{room}/orders");
                        let result = match http_client::build(
                            "POST",
                            &addr,
                            &path,
                            Some(body.as_bytes()),
                            Some(&token.token),
                        ) {
                            Ok(req) => {
                                match token.request(&addr, req, Duration::from_secs(2)).await {
                                    Ok(r) => order_result(
                                        r.status,
                                        &serde_json::from_slice(&r.body).unwrap_or(Value::Null),
                                    ),
                                    Err(_) => OpResult::Unknown,
                                }
                            }
                            Err(_) => OpResult::Unknown,
                        };
                        rec.complete(pending, result);
                        buyers.push((buyer, key));
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(150)).await;
                    }
                    buyers
                })
            })
            .collect();
        SaleLoad {
            rec,
            targets: shared,
            stop,
            clients: handles,
        }
    }

    /// Sends the next orders to `targets`.
    pub fn retarget(&self, targets: Vec<String>) {
        if let Ok(mut t) = self.targets.lock() {
            *t = targets;
        }
    }

    /// Stops the clients; every (buyer, key) they ordered with.
    pub async fn stop(self) -> Result<(Arc<Recorder>, Vec<(String, String)>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut buyers = Vec::new();
        for c in self.clients {
            buyers.extend(c.await?);
        }
        Ok((self.rec, buyers))
    }
}

/// The drills' history checker on a finished sale of `stock` units of
/// `room`/`sku`, reading the final state linearizably from `live` pods.
pub async fn judge_sale(
    rec: &Recorder,
    buyers: &[(String, String)],
    live: &[String],
    token: &Auth,
    (room, sku, stock): (&str, &str, u32),
) -> Result<roomkeeper_chaos::checker::Report> {
    let mut history = History {
        ops: rec.ops(),
        ..History::default()
    };
    let listing = read_any(
        live,
        token,
        &format!("/v1/rooms/{room}/listings/{sku}?consistency=linearizable"),
    )
    .await?;
    history.listings.insert(sku.into(), stock);
    history.final_stock_left.insert(
        sku.into(),
        u32::try_from(listing["stock_left"].as_u64().context("stock_left")?)?,
    );
    for (buyer, key) in buyers {
        let orders = read_any(
            live,
            token,
            &format!("/v1/buyers/{buyer}/orders?consistency=linearizable"),
        )
        .await?;
        for o in orders.as_array().into_iter().flatten() {
            if o["status"] == "cancelled" || o["room"] != room {
                continue;
            }
            if let Some(id) = o["order_id"].as_u64() {
                history.final_orders.insert(
                    id.to_string(),
                    FinalOrder {
                        sku: sku.into(),
                        buyer: buyer.clone(),
                        qty: 1,
                        key: key.clone(),
                    },
                );
            }
        }
    }
    Ok(roomkeeper_chaos::checker::check(&history))
}

/// Prints the checker's verdict on a sale under `label` and fails unless
/// something was acknowledged, nothing acknowledged was lost and the history
/// is valid (nothing oversold, no double effect).
pub fn require_clean(
    label: &str,
    rec: &Recorder,
    report: &roomkeeper_chaos::checker::Report,
) -> Result<()> {
    eprintln!(
        "{label}: {} orders sent, {} acknowledged, {} unknown, {} lost, valid {}, longest gap between acknowledgements {} ms",
        rec.ops().len(),
        report.acknowledged,
        rec.unknown(),
        report.lost.len(),
        report.valid,
        report.rto_ms
    );
    ensure!(report.acknowledged > 0, "nothing acknowledged");
    ensure!(
        report.valid && report.lost.is_empty(),
        "the history checker: {:?}",
        report.violations
    );
    Ok(())
}
