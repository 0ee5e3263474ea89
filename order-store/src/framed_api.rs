//! The framed order protocol's listener (`--framed-api-addr`): the client
//! API's order route without HTTP, pipelined (roomkeeper_api::framed for the
//! wire format, docs/framed-api.md for the contract).
//!
//! One task serves a connection. It reads whatever bytes have arrived (many
//! frames per read), starts every whole request it finds, up to
//! `max_inflight` per connection, and writes every answer that is ready in one
//! write. So a client that keeps many orders in flight on one connection costs
//! the node one read and one write per batch, not per order, and its orders
//! meet in the proposer's batches as HTTP orders do. Each order goes through
//! `api::place_order_for`, the same checks, precheck and Raft write as
//! `POST /v1/rooms/{room}/orders`; answers are its statuses and JSON bodies.
//!
//! Limits a hostile client meets, besides the listener's connection caps
//! (`http_server::accept_loop`): HELLO first, with a valid token, or the
//! connection closes; a frame's declared length is checked before its bytes
//! are waited for; a frame must arrive whole within `frame_timeout` and an
//! idle connection closes after `idle_timeout`; a client that stops reading
//! its answers is dropped after `frame_timeout`; per-token and per-buyer rate
//! limits apply per order. A frame that cannot be read is answered once (kind
//! 0xFF) and the connection closes: nothing that follows it can be trusted to
//! be framed right.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::BytesMut;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use prometheus::IntCounterVec;
use roomkeeper_api::client::PlaceOrder;
use roomkeeper_api::framed::{
    self, FrameError, Request, KIND_HELLO, KIND_PROTOCOL_ERROR, PROTOCOL_VERSION, RESPONSE_BIT,
};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::api::{place_order_for, ApiError, Caller};
use crate::auth::Principal;
use crate::http_server::ConnectionServer;
use crate::node::NodeContext;

/// The label of this listener in the edge metrics.
pub const LISTENER: &str = "framed";

/// Deadlines and pipelining depth of one framed connection.
#[derive(Debug, Clone)]
pub struct FramedLimits {
    /// Time a frame has to arrive whole once the connection waits for it,
    /// and time a client has to take its answers.
    pub frame_timeout: Duration,
    /// A connection with nothing in flight and nothing arriving closes after this.
    pub idle_timeout: Duration,
    /// Requests of one connection being worked on at once; the node reads
    /// no further while this many are.
    pub max_inflight: usize,
}

impl Default for FramedLimits {
    fn default() -> Self {
        Self {
            frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_inflight: 256,
        }
    }
}

/// The answer over a cap: a protocol error frame, then the close.
pub fn over_capacity_frame() -> bytes::Bytes {
    let mut out = Vec::new();
    let body = json!({"code": "too_many_connections", "message": "connection limit reached, retry later", "retry_after_ms": 1000});
    // A fixed small body always fits a frame.
    let _ = framed::encode_response(
        &mut out,
        KIND_PROTOCOL_ERROR,
        0,
        StatusCode::SERVICE_UNAVAILABLE.as_u16(),
        body.to_string().as_bytes(),
    );
    out.into()
}

/// Serves framed connections for one node.
#[derive(Clone)]
pub struct FramedConnections {
    pub ctx: Arc<NodeContext>,
    pub limits: FramedLimits,
    pub errors: IntCounterVec,
}

/// One answer ready to frame: kind, id, status, JSON body.
type Answer = (u8, u32, u16, Vec<u8>);
type Pending = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// Why a connection ended early, for `roomkeeper_http_connection_errors_total`.
#[derive(Debug, Clone, Copy)]
enum End {
    Malformed,
    Unauthorized,
    FrameTimeout,
    IdleTimeout,
    Io,
}

impl End {
    fn kind(self) -> &'static str {
        match self {
            End::Malformed => "malformed",
            End::Unauthorized => "unauthorized",
            End::FrameTimeout => "frame_timeout",
            End::IdleTimeout => "idle_timeout",
            End::Io => "io",
        }
    }
}

impl ConnectionServer for FramedConnections {
    async fn serve<I>(self, io: I, peer: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if let Err(end) = Connection::new(self.ctx, self.limits).run(io).await {
            self.errors.with_label_values(&[LISTENER, end.kind()]).inc();
            tracing::debug!(listener = LISTENER, %peer, reason = end.kind(), "framed connection ended");
        }
    }
}

struct Connection {
    ctx: Arc<NodeContext>,
    limits: FramedLimits,
    caller: Option<Arc<Principal>>,
    inflight: FuturesUnordered<Pending>,
    /// Bytes read and not yet taken as frames.
    input: BytesMut,
    /// Answers framed and not yet written.
    output: Vec<u8>,
    /// No more requests are read: the peer closed its side, or a frame could
    /// not be read (`ending` says why; answers in flight are still written).
    reading_done: bool,
    ending: Option<End>,
    /// When the last whole frame arrived or the last answer left.
    progress_at: Instant,
}

impl Connection {
    fn new(ctx: Arc<NodeContext>, limits: FramedLimits) -> Self {
        Self {
            ctx,
            limits,
            caller: None,
            inflight: FuturesUnordered::new(),
            input: BytesMut::with_capacity(64 * 1024),
            output: Vec::with_capacity(16 * 1024),
            reading_done: false,
            ending: None,
            progress_at: Instant::now(),
        }
    }

    async fn run<I>(mut self, mut io: I) -> Result<(), End>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            self.take_frames();
            while let Some(Some(answer)) = self.inflight.next().now_or_never() {
                self.frame_answer(answer);
            }
            if !self.output.is_empty() {
                let write = io.write_all(&self.output);
                match tokio::time::timeout(self.limits.frame_timeout, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(End::Io),
                    Err(_) => return Err(End::FrameTimeout),
                }
                self.output.clear();
                self.progress_at = Instant::now();
            }
            if self.reading_done && self.inflight.is_empty() {
                // A TLS close writes too: a client that reads nothing does
                // not hold the task.
                let _ = tokio::time::timeout(self.limits.frame_timeout, io.shutdown()).await;
                return self.ending.map_or(Ok(()), Err);
            }
            let can_read = !self.reading_done && self.inflight.len() < self.limits.max_inflight;
            let deadline = match (self.inflight.is_empty(), self.input.is_empty()) {
                (false, _) => None,
                (true, true) => Some((
                    self.progress_at + self.limits.idle_timeout,
                    End::IdleTimeout,
                )),
                (true, false) => Some((
                    self.progress_at + self.limits.frame_timeout,
                    End::FrameTimeout,
                )),
            };
            let sleep_until = deadline.map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                |(at, _)| at.into(),
            );
            tokio::select! {
                Some(answer) = self.inflight.next(), if !self.inflight.is_empty() => {
                    self.frame_answer(answer);
                }
                read = io.read_buf(&mut self.input), if can_read => match read {
                    Ok(0) => self.reading_done = true,
                    Ok(_) => {}
                    Err(_) => return Err(End::Io),
                },
                () = tokio::time::sleep_until(sleep_until), if deadline.is_some() => {
                    return Err(deadline.map_or(End::Io, |(_, end)| end));
                }
                // Not reached: with nothing in flight the connection reads or
                // has ended above; kept so a future change cannot panic here.
                else => return Err(End::Io),
            }
        }
    }

    /// Starts every whole request in the input, up to the in-flight cap.
    fn take_frames(&mut self) {
        while self.ending.is_none() && self.inflight.len() < self.limits.max_inflight {
            let used = match framed::next_frame(&self.input) {
                Ok(None) => return,
                Ok(Some((_, used))) => used,
                Err(e) => return self.refuse_frame(&e),
            };
            // Taken off the front without a copy; the buffer's space comes
            // back once the frame is dropped.
            let frame = self.input.split_to(used);
            self.request(&frame[framed::LENGTH_BYTES..]);
            self.progress_at = Instant::now();
        }
    }

    fn request(&mut self, payload: &[u8]) {
        let req = match framed::decode_request(payload) {
            Ok(r) => r,
            Err(e) => return self.refuse_frame(&e),
        };
        let (kind, id) = (RESPONSE_BIT | req.kind(), req.id());
        match req {
            Request::Hello { version, token, .. } => self.hello(id, version, token),
            Request::PlaceOrder { room, body, .. } => {
                let Some(caller) = self.caller.clone() else {
                    return self.close_with(
                        kind,
                        id,
                        StatusCode::BAD_REQUEST,
                        "hello_required",
                        "the first frame of a connection must be HELLO".into(),
                        End::Unauthorized,
                    );
                };
                if let Err(wait) = self.ctx.limiter.check_token(&caller.name, Instant::now()) {
                    let e = ApiError::rate_limited(&self.ctx, "token", wait);
                    return self.answer_error(kind, id, &e);
                }
                let order: PlaceOrder = match serde_json::from_slice(body) {
                    Ok(o) => o,
                    Err(e) => {
                        let e =
                            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string());
                        return self.answer_error(kind, id, &e);
                    }
                };
                let ctx = self.ctx.clone();
                let room = room.to_string();
                let started = Instant::now();
                self.inflight.push(Box::pin(async move {
                    ctx.faults.wait_while_paused().await;
                    let caller = Caller(caller);
                    let (status, body) = match place_order_for(&ctx, &caller, room, order).await {
                        Ok((status, answer)) => match serde_json::to_vec(&answer) {
                            Ok(body) => (status, body),
                            Err(e) => {
                                let e = ApiError::new(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "internal",
                                    e.to_string(),
                                );
                                (e.status(), e.body().to_string().into_bytes())
                            }
                        },
                        Err(e) => (e.status(), e.body().to_string().into_bytes()),
                    };
                    ctx.metrics
                        .framed_request_duration_seconds
                        .with_label_values(&["place_order", status_class(status)])
                        .observe(started.elapsed().as_secs_f64());
                    (kind, id, status.as_u16(), body)
                }));
            }
        }
    }

    fn hello(&mut self, id: u32, version: u8, token: &str) {
        let kind = RESPONSE_BIT | KIND_HELLO;
        if self.caller.is_some() {
            return self.close_with(
                kind,
                id,
                StatusCode::BAD_REQUEST,
                "hello_repeated",
                "HELLO is sent once per connection".into(),
                End::Malformed,
            );
        }
        if version != PROTOCOL_VERSION {
            return self.close_with(
                kind,
                id,
                StatusCode::BAD_REQUEST,
                "unsupported_protocol_version",
                format!("this node speaks version {PROTOCOL_VERSION}, not {version}"),
                End::Malformed,
            );
        }
        let secret = (!token.is_empty()).then_some(token.as_bytes());
        let Some(p) = self.ctx.clients.authenticate_secret(secret).cloned() else {
            return self.close_with(
                kind,
                id,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong token".into(),
                End::Unauthorized,
            );
        };
        self.caller = Some(p);
        let body = json!({"protocol": PROTOCOL_VERSION}).to_string();
        self.frame_answer((kind, id, StatusCode::OK.as_u16(), body.into_bytes()));
    }

    fn answer_error(&mut self, kind: u8, id: u32, e: &ApiError) {
        let body = e.body().to_string().into_bytes();
        self.frame_answer((kind, id, e.status().as_u16(), body));
    }

    /// Answers once, reads nothing more, and closes after the answers in flight.
    fn close_with(
        &mut self,
        kind: u8,
        id: u32,
        status: StatusCode,
        code: &'static str,
        message: String,
        end: End,
    ) {
        self.answer_error(kind, id, &ApiError::new(status, code, message));
        self.reading_done = true;
        self.ending = Some(end);
    }

    fn refuse_frame(&mut self, e: &FrameError) {
        self.close_with(
            KIND_PROTOCOL_ERROR,
            0,
            StatusCode::BAD_REQUEST,
            e.code(),
            e.to_string(),
            End::Malformed,
        );
    }

    fn frame_answer(&mut self, (kind, id, status, body): Answer) {
        if let Err(e) = framed::encode_response(&mut self.output, kind, id, status, &body) {
            // A node's own answer never nears the frame limit; if one did,
            // the client still gets an answer under its id.
            tracing::error!(error = %e, "framed answer too large");
            let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string());
            let body = e.body().to_string().into_bytes();
            let _ = framed::encode_response(&mut self.output, kind, id, e.status().as_u16(), &body);
        }
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_capacity_answer_is_a_protocol_error_frame() {
        let bytes = over_capacity_frame();
        let (payload, used) = framed::next_frame(&bytes).expect("ok").expect("whole");
        assert_eq!(used, bytes.len());
        let r = framed::decode_response(payload).expect("response");
        assert_eq!((r.kind, r.id, r.status), (KIND_PROTOCOL_ERROR, 0, 503));
        let v: serde_json::Value = serde_json::from_slice(r.body).expect("json");
        assert_eq!(v["code"], "too_many_connections");
    }
}
