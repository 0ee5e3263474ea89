//! Setup shared by `roomkeeper demo` and `roomkeeper drill`: tokens, a live
//! room with its listings, and the
//! playbook time scale that makes minutes of hold-down pass in seconds.

use std::time::Duration;

use serde_json::json;

/// A listing to create.
#[derive(Debug, Clone)]
pub struct ListingSpec {
    pub sku: String,
    pub stock: u32,
    pub per_buyer_limit: u32,
}

/// Errors of the setup.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{what} failed: {detail}")]
    Request { what: String, detail: String },
}

/// A token unique to this process and moment (local runs only).
pub fn token(prefix: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!("{prefix}-{:x}", now ^ (u64::from(std::process::id()) << 20))
}

/// Creates a live room and its open listings through one node's client API
/// address (the local binding passes the leader's, the operator a pod's).
pub async fn create_sale_at(
    http: &crate::http::JsonClient,
    api: &str,
    token: &str,
    room: &str,
    title: &str,
    home_region: &str,
    listings: &[ListingSpec],
) -> Result<(), SetupError> {
    let t = Some(token);
    let request = |what: String| {
        move |e: crate::http::HttpError| SetupError::Request {
            what,
            detail: e.to_string(),
        }
    };
    let r = http
        .put(
            api,
            &format!("/v1/rooms/{room}"),
            &json!({"title": title, "home_region": home_region, "state": "live"}),
            t,
            Duration::from_secs(5),
        )
        .await
        .map_err(request(format!("creating room {room}")))?;
    if r.status != 200 {
        return Err(SetupError::Request {
            what: format!("creating room {room}"),
            detail: r.body.to_string(),
        });
    }
    for l in listings {
        let what = format!("creating listing {}", l.sku);
        let r = http
            .put(
                api,
                &format!("/v1/rooms/{room}/listings/{}", l.sku),
                &json!({"price_cents": 1999, "stock": l.stock, "per_buyer_limit": l.per_buyer_limit, "state": "open"}),
                t,
                Duration::from_secs(5),
            )
            .await
            .map_err(request(what.clone()))?;
        if r.status != 200 {
            return Err(SetupError::Request {
                what,
                detail: r.body.to_string(),
            });
        }
    }
    Ok(())
}

/// The listings of a drill catalog: `sku-NN` at `stock`, then `hot-NN` at
/// `hotStock` (default 100). Returns the plain and hot skus and all listings.
pub fn catalog_listings(
    cat: &roomkeeper_chaos::drill::CatalogSpec,
) -> (Vec<String>, Vec<String>, Vec<ListingSpec>) {
    let skus: Vec<String> = (1..=cat.skus).map(|i| format!("sku-{i:02}")).collect();
    let hot: Vec<String> = (1..=cat.hot_skus.unwrap_or(0))
        .map(|i| format!("hot-{i:02}"))
        .collect();
    let listing = |sku: &String, stock: u32| ListingSpec {
        sku: sku.clone(),
        stock,
        per_buyer_limit: 5,
    };
    let listings = skus
        .iter()
        .map(|s| listing(s, cat.stock))
        .chain(hot.iter().map(|s| listing(s, cat.hot_stock.unwrap_or(100))))
        .collect();
    (skus, hot, listings)
}

/// Scales every duration of a playbook by `f` (demo, drills and tests run faster clocks).
pub fn scale_playbook(p: &mut roomkeeper_playbook::Playbook, f: f64) {
    let scale = |ms: i64| ((ms as f64) * f).round() as i64;
    for t in &mut p.tiers {
        t.trigger.for_ms = scale(t.trigger.for_ms);
        t.trigger.clear_for_ms = scale(t.trigger.clear_for_ms);
        if let Some(a) = &mut t.approval {
            a.timeout_ms = scale(a.timeout_ms);
        }
    }
    p.guards.cooldown_ms = scale(p.guards.cooldown_ms);
    p.guards.window_ms = scale(p.guards.window_ms);
    let restarts = &mut p.guards.restart_budget;
    restarts.window_ms = scale(restarts.window_ms);
    restarts.backoff_base_ms = scale(restarts.backoff_base_ms);
    let failures = &mut p.guards.failure_budget;
    failures.window_ms = scale(failures.window_ms);
    failures.retry_after_ms = scale(failures.retry_after_ms);
    if let Some(age) = &mut p.guards.max_snapshot_age_ms {
        *age = scale(*age).max(2_000);
    }
}
