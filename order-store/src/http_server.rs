//! The accept loop of the client and admin HTTP listeners, with the limits a
//! hostile client meets (docs/security.md, "Client and admin edges"):
//!
//! - a request head must arrive within `header_read_timeout`; hyper's timer
//!   starts whenever the connection waits for a head, so the same limit closes
//!   keep-alive connections that sit idle (slow-loris headers, idle floods);
//! - a request body must arrive within `body_timeout` and fit `max_body_bytes`
//!   (a body shorter than its `Content-Length` is answered 408 and the
//!   connection closed);
//! - at most `max_connections` open connections per listener, and at most
//!   `max_connections_per_peer` from one IP address; a connection over a cap
//!   gets a canned 503 JSON body and is closed at once, counted in
//!   `roomkeeper_http_connections_refused_total{listener,reason}`;
//! - every refusal the router makes is the documented JSON error body
//!   (`{code, message}`), including axum's own plain-text rejections (405,
//!   invalid UTF-8 in a path, …). hyper answers malformed request heads itself
//!   (400, 414, 431) with an empty body before any service runs: those are the
//!   only refusals without a JSON body (documented in `api/openapi.yaml`).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::http_tls::{Edge, HttpTls};

/// Limits of one HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time a client has to send a whole request head; also how long a
    /// keep-alive connection may sit idle between requests.
    pub header_read_timeout: Duration,
    /// Time a client has to send a whole request body once its head arrived.
    pub body_timeout: Duration,
    /// Open connections on the listener.
    pub max_connections: usize,
    /// Open connections from one IP address.
    pub max_connections_per_peer: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_peer: 256,
        }
    }
}

/// Metrics of the HTTP edges, registered on the node's registry.
#[derive(Clone)]
pub struct EdgeMetrics {
    pub open_connections: IntGaugeVec,
    pub connections_refused_total: IntCounterVec,
    pub connection_errors_total: IntCounterVec,
    /// Certificate reloads of the TLS listeners, by result (`loaded`, `refused`).
    pub tls_reloads_total: IntCounterVec,
}

impl EdgeMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            open_connections: IntGaugeVec::new(
                Opts::new(
                    "roomkeeper_http_open_connections",
                    "Client-edge connections (HTTP, and listener=framed) open on a listener",
                ),
                &["listener"],
            )?,
            connections_refused_total: IntCounterVec::new(
                Opts::new(
                    "roomkeeper_http_connections_refused_total",
                    "Client-edge connections (HTTP, and listener=framed) refused at \
                     accept, by listener and cap reached",
                ),
                &["listener", "reason"],
            )?,
            connection_errors_total: IntCounterVec::new(
                Opts::new(
                    "roomkeeper_http_connection_errors_total",
                    "Client-edge connections (HTTP, and listener=framed) ended by an \
                     error: header_timeout, body_timeout, malformed (hyper answered \
                     400/414/431, or a frame refused), tls_handshake (no TLS, a refused \
                     or missing client certificate), io; framed also unauthorized, \
                     frame_timeout, idle_timeout",
                ),
                &["listener", "kind"],
            )?,
            tls_reloads_total: IntCounterVec::new(
                Opts::new(
                    "roomkeeper_http_tls_reloads_total",
                    "Changed TLS certificate files of the client and admin listeners, \
                     by result: loaded, refused (the previous pair stays in use)",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(m.open_connections.clone()))?;
        registry.register(Box::new(m.connections_refused_total.clone()))?;
        registry.register(Box::new(m.connection_errors_total.clone()))?;
        registry.register(Box::new(m.tls_reloads_total.clone()))?;
        Ok(m)
    }
}

/// The body of the canned answer to a connection over a cap.
const OVER_CAPACITY: &str = "HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 81\r\n\r\n\
{\"code\":\"too_many_connections\",\"message\":\"connection limit reached, retry later\"}";

/// Serves `router` on `listener` until the process ends. `name` labels metrics
/// and logs (`client`, `admin`). With `tls`, every connection is a TLS one
/// (the handshake must finish within the head timeout), made with the
/// certificate in use when it was accepted; without, plain HTTP.
pub async fn serve(
    listener: TcpListener,
    name: &'static str,
    router: Router,
    limits: HttpLimits,
    max_body_bytes: usize,
    metrics: EdgeMetrics,
    tls: Option<(HttpTls, Edge)>,
) {
    let body_limits = BodyLimits {
        timeout: limits.body_timeout,
        max_bytes: max_body_bytes,
        listener: name,
        metrics: metrics.clone(),
    };
    let router = router
        .layer(middleware::from_fn_with_state(body_limits, buffer_body))
        .layer(middleware::from_fn(json_refusals));
    let server = HttpConnections {
        router,
        header_timeout: limits.header_read_timeout,
        name,
        errors: metrics.connection_errors_total.clone(),
    };
    let refusal = Bytes::from_static(OVER_CAPACITY.as_bytes());
    accept_loop(listener, name, &limits, metrics, tls, refusal, server).await
}

/// What a listener does with each connection it accepted, plain or TLS.
pub trait ConnectionServer: Clone + Send + Sync + 'static {
    fn serve<I>(self, io: I, peer: SocketAddr) -> impl Future<Output = ()> + Send
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static;
}

/// Accepts connections on `listener` until the process ends and hands each
/// to `server` on a task of its own, within the listener's connection caps
/// (a connection over a cap gets `refusal`, if plain, and is closed) and, with
/// `tls`, after a TLS handshake that must finish within the head timeout.
pub async fn accept_loop<S: ConnectionServer>(
    listener: TcpListener,
    name: &'static str,
    limits: &HttpLimits,
    metrics: EdgeMetrics,
    tls: Option<(HttpTls, Edge)>,
    refusal: Bytes,
    server: S,
) {
    let total = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let peers = PeerCounts::default();
    let open = metrics.open_connections.with_label_values(&[name]);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let plain = tls.is_none();
        let Ok(permit) = total.clone().try_acquire_owned() else {
            refuse(stream, name, "max_connections", &metrics, plain, &refusal);
            continue;
        };
        let Some(peer_slot) = peers.acquire(peer.ip(), limits.max_connections_per_peer) else {
            refuse(
                stream,
                name,
                "max_connections_per_peer",
                &metrics,
                plain,
                &refusal,
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let handshake_timeout = limits.header_read_timeout;
        let open = open.clone();
        let errors = metrics.connection_errors_total.clone();
        // The acceptor is taken now: a connection accepted after a reload
        // gets the new certificate.
        let acceptor = tls.as_ref().map(|(t, edge)| t.acceptor(*edge));
        open.inc();
        tokio::spawn(async move {
            match acceptor {
                None => server.serve(stream, peer).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => server.serve(tls_stream, peer).await,
                        Ok(Err(e)) => {
                            errors.with_label_values(&[name, "tls_handshake"]).inc();
                            tracing::debug!(listener = name, %peer, error = %e, "TLS handshake refused");
                        }
                        Err(_) => {
                            errors.with_label_values(&[name, "header_timeout"]).inc();
                        }
                    }
                }
            }
            open.dec();
            drop(peer_slot);
            drop(permit);
        });
    }
}

/// Serves each connection with hyper's http1 until it ends.
#[derive(Clone)]
struct HttpConnections {
    router: Router,
    header_timeout: Duration,
    name: &'static str,
    errors: IntCounterVec,
}

impl ConnectionServer for HttpConnections {
    async fn serve<I>(self, io: I, peer: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = TowerToHyperService::new(self.router);
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .serve_connection(TokioIo::new(io), service);
        if let Err(e) = conn.await {
            let kind = if e.is_timeout() {
                "header_timeout"
            } else if e.is_parse() || e.is_parse_too_large() {
                "malformed"
            } else {
                "io"
            };
            self.errors.with_label_values(&[self.name, kind]).inc();
            tracing::debug!(listener = self.name, %peer, error = %e, "HTTP connection ended");
        }
    }
}

fn refuse(
    stream: TcpStream,
    name: &'static str,
    reason: &'static str,
    metrics: &EdgeMetrics,
    plain: bool,
    refusal: &[u8],
) {
    metrics
        .connections_refused_total
        .with_label_values(&[name, reason])
        .inc();
    // A fresh socket's send buffer is empty: this never blocks, and a peer that
    // does not read is not waited for. A TLS client could not read a plain
    // answer: it is only closed.
    if plain {
        let _ = stream.try_write(refusal);
    }
}

/// Open connections per peer address.
#[derive(Clone, Default)]
struct PeerCounts(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection's place in `PeerCounts`, given back on drop.
struct PeerSlot {
    counts: PeerCounts,
    ip: IpAddr,
}

impl PeerCounts {
    fn acquire(&self, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> usize {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

#[derive(Clone)]
struct BodyLimits {
    timeout: Duration,
    max_bytes: usize,
    listener: &'static str,
    metrics: EdgeMetrics,
}

/// The JSON error body of the client and admin APIs.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message.into()})),
    )
        .into_response()
}

/// Reads the whole body within the time and size limits before any handler
/// runs, so a body that trickles in, stops short of its `Content-Length` or
/// is too large is refused here with the documented JSON error.
async fn buffer_body(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return too_large(limits.max_bytes);
    }
    let read = Limited::new(body, limits.max_bytes).collect();
    let bytes = match tokio::time::timeout(limits.timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => return too_large(limits.max_bytes),
        Ok(Err(e)) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("the request body could not be read: {e}"),
            )
        }
        Err(_) => {
            limits
                .metrics
                .connection_errors_total
                .with_label_values(&[limits.listener, "body_timeout"])
                .inc();
            let mut resp = error_response(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} ms",
                    limits.timeout.as_millis()
                ),
            );
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large(max: usize) -> Response {
    let mut resp = error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is larger than {max} bytes"),
    );
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Turns every refusal that is not already JSON (axum's plain-text rejections,
/// empty 404/405s) into the documented error body, keeping the status.
async fn json_refusals(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match Limited::new(body, 4096).collect().await {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("refused").to_string()
    } else {
        text
    };
    let mut out = error_response(status, code_for_status(status), message);
    for name in [header::ALLOW, header::RETRY_AFTER, header::CONNECTION] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// The error code of a refusal that only has a status.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "body_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_json",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::TOO_MANY_REQUESTS => "overloaded",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_slots_cap_one_address_and_come_back_on_drop() {
        let peers = PeerCounts::default();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = peers.acquire(a, 2);
        let second = peers.acquire(a, 2);
        assert!(first.is_some() && second.is_some());
        assert!(peers.acquire(a, 2).is_none(), "third slot for one peer");
        assert!(peers.acquire(b, 2).is_some(), "another peer is not capped");
        drop(first);
        assert_eq!(peers.count(a), 1);
        assert!(peers.acquire(a, 2).is_some());
        drop(second);
        assert_eq!(peers.count(b), 0, "dropped slots leave no entry");
    }

    #[test]
    fn the_canned_refusal_is_well_formed_json() {
        let (head, body) = OVER_CAPACITY.split_once("\r\n\r\n").expect("head");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        assert_eq!(len, body.len());
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["code"], "too_many_connections");
    }

    #[test]
    fn every_refusal_status_has_a_code() {
        for s in 400..600u16 {
            let status = StatusCode::from_u16(s).expect("status");
            let code = code_for_status(status);
            assert!(!code.is_empty());
            assert_eq!(code == "internal", s >= 500 && s != 503);
        }
    }
}
