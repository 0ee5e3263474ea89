//! The client API (HTTP/JSON): rooms, listings, orders. `openapi.yaml` at the
//! crate root is its contract. Every refusal is JSON `{code, message, ...}` with
//! a stable code; nothing malformed reaches the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use openraft::async_runtime::WatchReceiver;
pub use roomkeeper_api::client::{
    Consistency, OrderResponse, PlaceOrder, PutListing, PutRoom, ReadParams,
};
use roomkeeper_order_state::{
    Command, InvalidField, ListingView, OrderView, Outcome, RejectCode, RoomView,
};
use serde_json::json;

use crate::auth::{Principal, Verb};
use crate::node::NodeContext;
use crate::precheck::early_refusal;
use crate::proposer::WriteError;
use crate::transport::leader_read_index;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Staleness a follower accepts for `consistency=stale` unless the client asks otherwise.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(1);

/// A refusal as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
    retry_after: Option<Duration>,
    /// The verb a `forbidden` refusal lacked.
    missing_scope: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            missing_scope: None,
        }
    }

    /// 429 `rate_limited`: over the per-token or per-buyer limit; counted.
    pub(crate) fn rate_limited(ctx: &NodeContext, limit: &'static str, wait: Duration) -> Self {
        ctx.metrics
            .rate_limited_requests_total
            .with_label_values(&[limit])
            .inc();
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("over the per-{limit} rate limit; retry later"),
        );
        err.retry_after = Some(wait.max(Duration::from_millis(1)));
        err
    }

    /// 403 `forbidden`: the caller's token lacks `verb` for `room`.
    fn forbidden(caller: &Principal, verb: Option<Verb>, room: &str) -> Self {
        let what = verb.map_or("any scope", Verb::as_str);
        let mut err = Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token {} lacks {what} for room {room}", caller.name),
        );
        err.missing_scope = Some(verb.map_or("room", Verb::as_str));
        err
    }

    fn invalid(e: InvalidField) -> Self {
        let mut err = Self::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string());
        err.field = Some(e.field);
        err
    }

    fn rejected(code: RejectCode) -> Self {
        let status = match code {
            RejectCode::RoomNotFound | RejectCode::ListingNotFound | RejectCode::OrderNotFound => {
                StatusCode::NOT_FOUND
            }
            RejectCode::InvalidRequest => StatusCode::BAD_REQUEST,
            RejectCode::Forbidden => StatusCode::FORBIDDEN,
            _ => StatusCode::CONFLICT,
        };
        Self::new(status, code.as_str(), code.to_string())
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        let status = match e {
            WriteError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut err = Self::new(status, e.code(), e.to_string());
        err.retry_after = Some(e.retry_after());
        err
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_json",
        };
        Self::new(status, code, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())
    }
}

impl ApiError {
    /// The HTTP status (the framed protocol's status too).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON error body, the same on every edge.
    pub fn body(&self) -> serde_json::Value {
        let mut body = json!({"code": self.code, "message": self.message});
        if let Some(f) = self.field {
            body["field"] = json!(f);
        }
        if let Some(r) = self.retry_after {
            body["retry_after_ms"] = json!(r.as_millis() as u64);
        }
        if let Some(m) = self.missing_scope {
            body["missing_scope"] = json!(m);
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(r) = self.retry_after {
            let secs = r.as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Builds the client router.
pub fn router(ctx: Arc<NodeContext>) -> Router {
    Router::new()
        .route("/v1/rooms/{room}", put(put_room).get(get_room))
        .route("/v1/rooms/{room}/listings", get(list_listings))
        .route(
            "/v1/rooms/{room}/listings/{sku}",
            put(put_listing).get(get_listing),
        )
        .route("/v1/rooms/{room}/orders", post(place_order))
        .route("/v1/orders/{order_id}", get(get_order))
        .route("/v1/orders/{order_id}/cancel", post(cancel_order))
        .route("/v1/orders/{order_id}/pay", post(pay_order))
        .route("/v1/orders/{order_id}/contact", get(get_contact))
        .route("/v1/buyers/{buyer}/orders", get(orders_of_buyer))
        .fallback(|_: Caller| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
        })
        .layer(middleware::from_fn_with_state(ctx.clone(), measure))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ctx)
}

/// The authenticated caller of a request (docs in `auth.rs`): every handler
/// takes one first, so a request without a valid token is refused with 401
/// before anything else is looked at.
pub struct Caller(pub Arc<Principal>);

impl Caller {
    /// Refuses with 403 unless the token allows `verb` in `room`.
    fn require(&self, verb: Verb, room: &str) -> ApiResult<()> {
        match self.0.scope.allows(verb, room) {
            true => Ok(()),
            false => Err(ApiError::forbidden(&self.0, Some(verb), room)),
        }
    }

    /// Refuses with 403 unless the token reaches `room` with some verb (reads).
    fn require_room(&self, room: &str) -> ApiResult<()> {
        match self.0.scope.covers_room(room) {
            true => Ok(()),
            false => Err(ApiError::forbidden(&self.0, None, room)),
        }
    }
}

impl axum::extract::FromRequestParts<Arc<NodeContext>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        ctx: &Arc<NodeContext>,
    ) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let Some(p) = ctx.clients.authenticate(header) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            ));
        };
        if let Err(wait) = ctx.limiter.check_token(&p.name, Instant::now()) {
            return Err(ApiError::rate_limited(ctx, "token", wait));
        }
        Ok(Caller(p.clone()))
    }
}

async fn measure(
    State(ctx): State<Arc<NodeContext>>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    // A node paused by the `paused` fault hook answers nothing, as a frozen
    // process would (here rather than in a layer of its own: no extra work
    // per order on the hot path).
    ctx.faults.wait_while_paused().await;
    let route = route_label(req.uri().path(), req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    let class = match resp.status().as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    ctx.metrics
        .http_request_duration_seconds
        .with_label_values(&[route, class])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Constant-time comparison of the bearer token.
pub fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(got) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (got.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn route_label(path: &str, method: &axum::http::Method) -> &'static str {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["v1", "rooms", _, "orders"]) => "place_order",
        (_, ["v1", "rooms", _]) => "room",
        (_, ["v1", "rooms", _, "listings", ..]) => "listing",
        ("GET", ["v1", "orders", _]) => "get_order",
        ("POST", ["v1", "orders", _, _]) => "order_transition",
        (_, ["v1", "buyers", ..]) => "buyer_orders",
        _ => "other",
    }
}

async fn write(ctx: &NodeContext, caller: &Caller, command: Command) -> ApiResult<Outcome> {
    command.validate().map_err(ApiError::invalid)?;
    let Ok(_permit) = ctx.write_slots.try_acquire() else {
        ctx.metrics
            .http_overload_rejections_total
            .with_label_values(&["inflight_limit"])
            .inc();
        return Err(WriteError::Overloaded.into());
    };
    ctx.metrics.http_inflight_requests.inc();
    let res = ctx.proposer.submit(command, caller.0.clone()).await;
    ctx.metrics.http_inflight_requests.dec();
    match res {
        Ok(Outcome::Rejected { code, .. }) => Err(ApiError::rejected(code)),
        Ok(o) => Ok(o),
        Err(e) => {
            if matches!(
                e,
                WriteError::Overloaded | WriteError::NoQuorum | WriteError::NoLeader
            ) {
                ctx.metrics
                    .http_overload_rejections_total
                    .with_label_values(&[e.code()])
                    .inc();
            }
            Err(e.into())
        }
    }
}

/// Waits until this node may serve a read at the requested consistency.
async fn ready_to_read(ctx: &NodeContext, params: &ReadParams) -> ApiResult<()> {
    let m = ctx.raft.metrics().borrow_watched().clone();
    match params.consistency {
        Consistency::Stale => {
            if m.current_leader == Some(m.id) {
                return Ok(());
            }
            let bound = params
                .max_staleness_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_MAX_STALENESS);
            match ctx.contact.since_last() {
                Some(age) if age <= bound => Ok(()),
                _ => Err(ApiError {
                    retry_after: Some(Duration::from_millis(250)),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too_stale",
                        format!(
                            "this replica has not heard from a leader within {} ms",
                            bound.as_millis()
                        ),
                    )
                }),
            }
        }
        Consistency::Linearizable => {
            let index = match m.current_leader {
                Some(l) if l == m.id => leader_read_index(&ctx.raft).await?,
                Some(l) => {
                    let addr = m
                        .membership_config
                        .membership()
                        .get_node(&l)
                        .map(|n| n.raft_addr.clone())
                        .ok_or(WriteError::NoLeader)?;
                    ctx.pool.read_index(l, &addr).await?
                }
                None => return Err(WriteError::NoLeader.into()),
            };
            let mut applied = ctx.sm.subscribe_applied();
            let caught_up =
                tokio::time::timeout(Duration::from_secs(3), applied.wait_for(|&a| a >= index))
                    .await
                    .map(|r| r.is_ok())
                    .unwrap_or(false);
            match caught_up {
                true => Ok(()),
                false => Err(WriteError::Unavailable(
                    "replica did not catch up with the leader in time".into(),
                )
                .into()),
            }
        }
    }
}

async fn put_room(
    caller: Caller,
    State(ctx): State<Arc<NodeContext>>,
    Path(room): Path<String>,
    body: Result<Json<PutRoom>, JsonRejection>,
) -> ApiResult<Json<RoomView>> {
    caller.require(Verb::ManageListings, &room)?;
    let Json(b) = body?;
    let cmd = match b.live_windows {
        None => Command::UpsertRoom {
            room,
            title: b.title,
            home_region: b.home_region,
            state: b.state,
        },
        Some(live_windows) => Command::UpsertRoomWithWindows {
            room,
            title: b.title,
            home_region: b.home_region,
            state: b.state,
            live_windows,
        },
    };
    match write(&ctx, &caller, cmd).await? {
        Outcome::Room(v) => Ok(Json(v)),
        other => Err(unexpected(other)),
    }
}

async fn get_room(
    caller: Caller,
    State(ctx): State<Arc<NodeContext>>,
    Path(room): Path<String>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult<Json<RoomView>> {
    caller.require_room(&room)?;
    let Query(params) = params?;
    ready_to_read(&ctx, &params).await?;
    ctx.sm
        .read(|s| s.room(&room))
        .map(Json)
        .ok_or_else(|| ApiError::rejected(RejectCode::RoomNotFound))
}

async fn put_listing(
    caller: Caller,
    State(ctx): State<Arc<NodeContext>>,
    Path((room, sku)): Path<(String, String)>,
    body: Result<Json<PutListing>, JsonRejection>,
) -> ApiResult<Json<ListingView>> {
    caller.require(Verb::ManageListings, &room)?;
    let Json(b) = body?;
    let cmd = Command::UpsertListing {
        room,
        sku,
        price_cents: b.price_cents,
        stock_total: b.stock,
        per_buyer_limit: b.per_buyer_limit,
        state: b.state,
    };
    match write(&ctx, &caller, cmd).await? {
        Outcome::Listing(v) => Ok(Json(v)),
        other => Err(unexpected(other)),
    }
}

async fn get_listing(
    caller: Caller,
    State(ctx): State<Arc<NodeContext>>,
    Path((room, sku)): Path<(String, String)>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult<Response> {
    caller.require_room(&room)?;
    let Query(params) = params?;
    ready_to_read(&ctx, &params).await?;
    let applied = ctx.sm.applied_index();
    let view = ctx
        .sm
        .read(|s| s.listing(&room, &sku))
        .ok_or_else(|| ApiError::rejected(RejectCode::ListingNotFound))?;
    let mut resp = Json(view).into_response();
    if let Ok(v) = HeaderValue::from_str(&applied.to_string()) {
        resp.headers_mut().insert("x-roomkeeper-applied-index", v);
    }
    Ok(resp)
}

async fn list_listings(
    caller: Caller,
    State(ctx): State<Arc<NodeContext>>,
    Path(room): Path<String>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult<Json<Vec<ListingView>>> {
    caller.require_room(&room)?;
    let Query(params) = params?;
    ready_to_read(&ctx, &params).await?;
    Ok(Json(ctx.sm.read(|s| s.listings_of_room(&room))))
}

async fn place_order(
    caller: Caller,
    State(ctx): State<Arc<NodeContext>>,
    Path(room): Path<String>,
    body: Result<Json<PlaceOrder>, JsonRejection>,
) -> ApiResult<Response> {
    caller.require(Verb::Order, &room)?;
    let Json(b) = body?;
    let (status, answer) = place_order_for(&ctx, &caller, room, b).await?;
    Ok((status, Json(answer)).into_response())
}

/// Places an order for an authenticated caller whose body is already read:
/// the HTTP route and the framed protocol (`framed_api.rs`) share every check
/// from here on. 201 for a new order, 200 for a replay of an earlier one.
pub(crate) async fn place_order_for(
    ctx: &NodeContext,
    caller: &Caller,
    room: String,
    b: PlaceOrder,
) -> ApiResult<(StatusCode, OrderResponse)> {
    caller.require(Verb::Order, &room)?;
    if ctx
        .edge_sales_paused
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(ApiError::rejected(RejectCode::SalesPaused));
    }
    if let Err(wait) = ctx.limiter.check_buyer(&b.buyer, Instant::now()) {
        return Err(ApiError::rate_limited(ctx, "buyer", wait));
    }
    if b.contact.len() > 512 {
        return Err(ApiError::invalid(InvalidField {
            field: "contact",
            reason: "must be at most 512 bytes".into(),
        }));
    }
    let mut cmd = Command::PlaceOrder {
        room,
        sku: b.sku,
        buyer: b.buyer,
        qty: b.qty,
        idempotency_key: b.idempotency_key,
        contact: Vec::new(),
    };
    cmd.validate().map_err(ApiError::invalid)?;
    // Orders that must fail are answered before sealing or Raft (precheck.rs).
    if let Some(code) = early_refusal(ctx, &cmd).await {
        return Err(ApiError::rejected(code));
    }
    let sealed = ctx.keyring.get().seal(b.contact.as_bytes()).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "sealing_failed",
            e.to_string(),
        )
    })?;
    if let Command::PlaceOrder { contact, .. } = &mut cmd {
        *contact = sealed;
    }
    match write(ctx, caller, cmd).await? {
        Outcome::Order { order, replayed } => {
            let status = if replayed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, OrderResponse { order, replayed }))
        }
        other => Err(unexpected(other)),
    }
}

/// An order id from a path segment: a positive integer.
pub fn parse_order_id(raw: &str) -> ApiResult<u64> {
    raw.parse::<u64>().ok().filter(|&id| id > 0).ok_or_else(|| {
        ApiError::invalid(InvalidField {
            field: "order_id",
            reason: "must be a positive integer".into(),
        })
    })
}

async fn get_order(
    caller: Caller,
    State(ctx): State<Arc<NodeContext>>,
    Path(order_id): Path<String>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult<Json<OrderView>> {
    let Query(params) = params?;
    let id = parse_order_id(&order_id)?;
    ready_to_read(&ctx, &params).await?;
    let order = ctx
        .sm
        .read(|s| s.order_view(id))
        .ok_or_else(|| ApiError::rejected(RejectCode::OrderNotFound))?;
    caller.require_room(&order.room)?;
    Ok(Json(order))
}

/// Refuses unless the caller may use `verb` on the order's room. A token of
/// every room needs no lookup; otherwise an order this replica has not
/// applied yet is waited for (a linearizable read) before it is judged.
async fn require_on_order(
    ctx: &NodeContext,
    caller: &Caller,
    verb: Verb,
    order_id: u64,
) -> ApiResult<()> {
    let scope = &caller.0.scope;
    if scope.every_room() && scope.verbs.contains(verb) {
        return Ok(());
    }
    let check = |ctx: &NodeContext| {
        ctx.sm.read(|s| {
            s.order_room(order_id)
                .map(|room| caller.require(verb, room))
        })
    };
    match check(ctx) {
        Some(r) => r,
        None => {
            ready_to_read(ctx, &ReadParams::default()).await?;
            check(ctx).unwrap_or_else(|| Err(ApiError::rejected(RejectCode::OrderNotFound)))
        }
    }
}

async fn transition(
    ctx: &NodeContext,
    caller: &Caller,
    raw: &str,
    pay: bool,
) -> ApiResult<Json<OrderView>> {
    let order_id = parse_order_id(raw)?;
    require_on_order(ctx, caller, Verb::Order, order_id).await?;
    let cmd = if pay {
        Command::PayOrder { order_id }
    } else {
        Command::CancelOrder { order_id }
    };
    match write(ctx, caller, cmd).await? {
        Outcome::Order { order, .. } => Ok(Json(order)),
        other => Err(unexpected(other)),
    }
}

async fn cancel_order(
    caller: Caller,
    State(ctx): State<Arc<NodeContext>>,
    Path(id): Path<String>,
) -> ApiResult<Json<OrderView>> {
    transition(&ctx, &caller, &id, false).await
}

async fn pay_order(
    caller: Caller,
    State(ctx): State<Arc<NodeContext>>,
    Path(id): Path<String>,
) -> ApiResult<Json<OrderView>> {
    transition(&ctx, &caller, &id, true).await
}

/// `GET /v1/orders/{id}/contact`: the buyer's contact in plain text, only
/// for a token with `read_contact` on the order's room.
async fn get_contact(
    caller: Caller,
    State(ctx): State<Arc<NodeContext>>,
    Path(order_id): Path<String>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult<Json<roomkeeper_api::client::OrderContact>> {
    let Query(params) = params?;
    let id = parse_order_id(&order_id)?;
    ready_to_read(&ctx, &params).await?;
    let sealed = ctx.sm.read(|s| {
        s.order_room(id)
            .map(|room| caller.require(Verb::ReadContact, room))
            .map(|allowed| allowed.map(|()| s.order_contact(id).map(<[u8]>::to_vec)))
    });
    let sealed = sealed
        .ok_or_else(|| ApiError::rejected(RejectCode::OrderNotFound))??
        .unwrap_or_default();
    let contact = match sealed.is_empty() {
        true => String::new(),
        false => {
            let plain = ctx.keyring.get().open(&sealed).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "unsealing_failed",
                    e.to_string(),
                )
            })?;
            String::from_utf8_lossy(&plain).into_owned()
        }
    };
    Ok(Json(roomkeeper_api::client::OrderContact {
        order_id: id,
        contact,
    }))
}

async fn orders_of_buyer(
    caller: Caller,
    State(ctx): State<Arc<NodeContext>>,
    Path(buyer): Path<String>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult<Json<Vec<OrderView>>> {
    let Query(params) = params?;
    ready_to_read(&ctx, &params).await?;
    let mut orders = ctx.sm.read(|s| s.orders_of_buyer(&buyer));
    // A token sees the buyer's orders in its own rooms only.
    orders.retain(|o| caller.0.scope.covers_room(&o.room));
    Ok(Json(orders))
}

fn unexpected(o: Outcome) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("unexpected outcome {}", o.label()),
    )
}

#[cfg(test)]
mod fuzz {
    //! Client bodies are hostile by default: any bytes either decode into a
    //! request that `Command::validate` then judges, or are refused; no panic.
    use proptest::prelude::*;

    use super::{PlaceOrder, PutListing, PutRoom};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bodies_never_panic_the_decoders(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = serde_json::from_slice::<PlaceOrder>(&body);
            let _ = serde_json::from_slice::<PutListing>(&body);
            let _ = serde_json::from_slice::<PutRoom>(&body);
        }

        #[test]
        fn json_shaped_orders_decode_or_refuse(qty in any::<i64>(), buyer in ".{0,200}", extra in prop::bool::ANY) {
            let mut v = serde_json::json!({"sku": "s", "buyer": buyer, "qty": qty, "idempotency_key": "k"});
            if extra { v["surprise"] = serde_json::json!(1); }
            match serde_json::from_value::<PlaceOrder>(v) {
                Ok(o) => prop_assert!(!extra && qty >= 0 && qty <= i64::from(u32::MAX) && o.qty as i64 == qty),
                Err(_) => prop_assert!(extra || qty < 0 || qty > i64::from(u32::MAX)),
            }
        }
    }
}
