//! One HTTP/1.1 keep-alive connection per simulated client (hyper 1 low-level
//! client), reconnected lazily after an error. Closed-loop clients have at
//! most one request in flight, so a pool would only add contention.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Default bound on one request (connect + send + full body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// From the `Retry-After` header (seconds), in milliseconds.
    pub retry_after_ms: Option<u64>,
    pub body: Bytes,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {}: body is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            )
        })
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned()
    }
}

/// TLS to the nodes' client and admin APIs (`--http-tls`), set once when the
/// bench starts nodes with TLS.
pub struct BenchTls {
    /// Trusts the bench's CA.
    pub client: tokio_rustls::TlsConnector,
    /// Also presents the operator's certificate (the admin API's only identity).
    pub admin: tokio_rustls::TlsConnector,
}

static TLS: std::sync::RwLock<Option<std::sync::Arc<BenchTls>>> = std::sync::RwLock::new(None);

/// Makes every later connection TLS with `tls` (each cluster the bench
/// starts has its own CA).
pub fn use_tls(tls: BenchTls) {
    *TLS.write().unwrap_or_else(|e| e.into_inner()) = Some(std::sync::Arc::new(tls));
}

fn current_tls() -> Option<std::sync::Arc<BenchTls>> {
    TLS.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The connector for client-API connections when the bench speaks TLS.
pub fn client_tls() -> Option<tokio_rustls::TlsConnector> {
    current_tls().map(|t| t.client.clone())
}

pub struct HttpConn {
    addr: SocketAddr,
    /// Present the operator's certificate (admin API) under TLS.
    admin: bool,
    host: HeaderValue,
    auth: Option<HeaderValue>,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

impl HttpConn {
    pub fn new(addr: SocketAddr, bearer: Option<&str>) -> Result<Self> {
        let host = HeaderValue::from_str(&addr.to_string()).context("host header")?;
        let auth = match bearer {
            Some(t) => Some(
                HeaderValue::from_str(&format!("Bearer {t}"))
                    .context("token is not a valid header value")?,
            ),
            None => None,
        };
        Ok(Self {
            addr,
            admin: false,
            host,
            auth,
            sender: None,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// A connection to an admin API (under TLS: with the operator's certificate).
    pub fn new_admin(addr: SocketAddr, bearer: Option<&str>) -> Result<Self> {
        let mut c = Self::new(addr, bearer)?;
        c.admin = true;
        Ok(c)
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Points the connection at another server (drops the current socket).
    pub fn retarget(&mut self, addr: SocketAddr) -> Result<()> {
        if addr != self.addr {
            self.addr = addr;
            self.host = HeaderValue::from_str(&addr.to_string()).context("host header")?;
            self.sender = None;
        }
        Ok(())
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        if let Some(sender) = &self.sender {
            if sender.is_closed() {
                self.sender = None;
            }
        }
        if self.sender.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect {}", self.addr))?;
            stream.set_nodelay(true).context("TCP_NODELAY")?;
            let addr = self.addr;
            let sender = match current_tls() {
                None => {
                    let (sender, conn) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream))
                            .await
                            .with_context(|| format!("HTTP handshake with {addr}"))?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%addr, error = %e, "bench HTTP connection closed");
                        }
                    });
                    sender
                }
                Some(tls) => {
                    let connector = if self.admin {
                        tls.admin.clone()
                    } else {
                        tls.client.clone()
                    };
                    let name =
                        tokio_rustls::rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                    let stream = connector
                        .connect(name, stream)
                        .await
                        .with_context(|| format!("TLS handshake with {addr}"))?;
                    let (sender, conn) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream))
                            .await
                            .with_context(|| format!("HTTP handshake with {addr}"))?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%addr, error = %e, "bench HTTPS connection closed");
                        }
                    });
                    sender
                }
            };
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| anyhow!("no connection to {}", self.addr))
    }

    async fn send_inner(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let req = match body {
            Some(b) => req
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(b))),
            None => req.body(Full::new(Bytes::new())),
        }
        .context("building request")?;
        let addr = self.addr;
        let sender = self.connect().await?;
        sender
            .ready()
            .await
            .with_context(|| format!("connection to {addr} not ready"))?;
        let resp = sender
            .send_request(req)
            .await
            .with_context(|| format!("request to {addr}"))?;
        let status = resp.status().as_u16();
        let retry_after_ms = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|secs| (secs * 1000.0) as u64);
        let body = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading response body from {addr}"))?
            .to_bytes();
        Ok(Response {
            status,
            retry_after_ms,
            body,
        })
    }

    /// Sends one request and reads the whole answer. Any error (including a
    /// timeout) drops the connection; the next call reconnects.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response> {
        let timeout = self.timeout;
        let addr = self.addr;
        let result = match tokio::time::timeout(timeout, self.send_inner(method, path, body)).await
        {
            Ok(r) => r,
            Err(_) => Err(anyhow!("request to {addr} timed out after {timeout:?}")),
        };
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    pub async fn get(&mut self, path: &str) -> Result<Response> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post_json(&mut self, path: &str, body: &serde_json::Value) -> Result<Response> {
        let bytes = serde_json::to_vec(body).context("encoding JSON body")?;
        self.send(Method::POST, path, Some(bytes)).await
    }
}
