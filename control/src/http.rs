//! A small JSON-over-HTTP/1.1 client with keep-alive, timeouts and bearer tokens,
//! used to talk to node admin and client APIs.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Errors of a call.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{method} {url}: timed out after {timeout:?}")]
    Timeout {
        method: Method,
        url: String,
        timeout: Duration,
    },
    #[error("{method} {url}: {message}")]
    Transport {
        method: Method,
        url: String,
        message: String,
    },
}

/// A response: status and JSON body (a JSON string when the body is not JSON).
#[derive(Debug, Clone)]
pub struct JsonReply {
    pub status: u16,
    pub body: Value,
}

impl JsonReply {
    pub fn code(&self) -> &str {
        self.body.get("code").and_then(Value::as_str).unwrap_or("")
    }
}

/// A pooled client; clone freely.
#[derive(Clone)]
pub struct JsonClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for JsonClient {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        let client = Client::builder(TokioExecutor::new())
            // Below the nodes' keep-alive idle limit (`--http-header-timeout-ms`,
            // 10 s by default), so a pooled connection is dropped here before
            // the node closes it and no request races that close.
            .pool_idle_timeout(Duration::from_secs(5))
            .build(connector);
        Self { client }
    }

    /// One call to `http://{addr}{path}`.
    pub async fn call(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<JsonReply, HttpError> {
        let url = format!("http://{addr}{path}");
        let transport = |message: String| HttpError::Transport {
            method: method.clone(),
            url: url.clone(),
            message,
        };
        let payload = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).map_err(|e| transport(e.to_string()))?),
            None => Bytes::new(),
        };
        let mut req = Request::builder().method(method.clone()).uri(&url);
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(payload))
            .map_err(|e| transport(e.to_string()))?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| transport(e.to_string()))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(e.to_string()))?
                .to_bytes();
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            Ok(JsonReply { status, body })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout {
                method,
                url,
                timeout,
            }),
        }
    }

    pub async fn get(
        &self,
        addr: &str,
        path: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<JsonReply, HttpError> {
        self.call(Method::GET, addr, path, None, token, timeout)
            .await
    }

    pub async fn post(
        &self,
        addr: &str,
        path: &str,
        body: &Value,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<JsonReply, HttpError> {
        self.call(Method::POST, addr, path, Some(body), token, timeout)
            .await
    }

    pub async fn put(
        &self,
        addr: &str,
        path: &str,
        body: &Value,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<JsonReply, HttpError> {
        self.call(Method::PUT, addr, path, Some(body), token, timeout)
            .await
    }
}
