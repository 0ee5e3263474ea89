//! A small JSON-over-HTTP/1.1 client with keep-alive, timeouts and bearer tokens,
//! used to talk to node admin and client APIs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Errors setting up TLS for a client.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("TLS client configuration: {0}")]
    Config(String),
}

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

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// Plain HTTP, or TLS to every node (`https://`).
#[derive(Clone)]
enum Pool {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<Https, Full<Bytes>>),
}

fn tcp() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_millis(500)));
    connector
}

fn builder() -> hyper_util::client::legacy::Builder {
    let mut b = Client::builder(TokioExecutor::new());
    // Below the nodes' keep-alive idle limit (`--http-header-timeout-ms`, 10 s
    // by default), so a pooled connection is dropped here before the node
    // closes it and no request races that close.
    b.pool_idle_timeout(Duration::from_secs(5));
    b
}

/// A pooled client; clone freely.
#[derive(Clone)]
pub struct JsonClient {
    client: Pool,
}

impl Default for JsonClient {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonClient {
    pub fn new() -> Self {
        Self {
            client: Pool::Plain(builder().build(tcp())),
        }
    }

    /// A client that speaks TLS to every node: trusts the `ca.crt` of `dir`
    /// (the cert-manager layout) and, with `present_cert`, presents its
    /// `tls.crt`/`tls.key` — the operator's certificate, which a node's TLS
    /// admin API requires (`roomkeeper raft-certs operator`).
    pub fn with_tls(dir: &Path, present_cert: bool) -> Result<Self, TlsSetupError> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let read_err = |path: &Path, e: &dyn std::fmt::Display| TlsSetupError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let ca = dir.join("ca.crt");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca).map_err(|e| read_err(&ca, &e))? {
            roots
                .add(cert.map_err(|e| read_err(&ca, &e))?)
                .map_err(|e| read_err(&ca, &e))?;
        }
        let config = |e: rustls::Error| TlsSetupError::Config(e.to_string());
        let builder_tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(config)?
        .with_root_certificates(roots);
        // hyper-rustls sets ALPN (http/1.1) from `enable_http1`.
        let tls = if present_cert {
            let crt = dir.join("tls.crt");
            let key = dir.join("tls.key");
            let chain = CertificateDer::pem_file_iter(&crt)
                .map_err(|e| read_err(&crt, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| read_err(&crt, &e))?;
            let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| read_err(&key, &e))?;
            builder_tls
                .with_client_auth_cert(chain, key)
                .map_err(config)?
        } else {
            builder_tls.with_no_client_auth()
        };
        let mut http = tcp();
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Pool::Tls(builder().build(https)),
        })
    }

    /// One call to `http://{addr}{path}` (`https://` with TLS).
    pub async fn call(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<JsonReply, HttpError> {
        let scheme = match self.client {
            Pool::Plain(_) => "http",
            Pool::Tls(_) => "https",
        };
        let url = format!("{scheme}://{addr}{path}");
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
            let resp = match &self.client {
                Pool::Plain(c) => c.request(req).await,
                Pool::Tls(c) => c.request(req).await,
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use roomkeeper_api::raft_identity::ClusterCa;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    /// A TLS server on loopback that, like a node's admin API, requires a
    /// client certificate of `ca`, and answers every request `{}`.
    async fn server(ca: &ClusterCa) -> String {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = ca
            .server_cert(&["127.0.0.1".to_string()])
            .expect("server cert");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("ca"))
            .expect("root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("crt")],
                PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key"),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                              content-length: 2\r\nconnection: close\r\n\r\n{}",
                        )
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_tls_client_with_the_operator_certificate_is_served_and_others_are_not() {
        let ca = ClusterCa::generate("shop").expect("ca");
        let tmp = tempfile::tempdir().expect("tempdir");
        let op = tmp.path().join("operator");
        ca.write_dir(&ca.operator_cert().expect("operator"), &op)
            .expect("write");
        let addr = server(&ca).await;
        let t = Duration::from_secs(5);
        let with_cert = JsonClient::with_tls(&op, true).expect("client");
        let r = with_cert
            .get(&addr, "/healthz", None, t)
            .await
            .expect("served");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, serde_json::json!({}));
        let no_cert = JsonClient::with_tls(&op, false).expect("client");
        assert!(no_cert.get(&addr, "/healthz", None, t).await.is_err());
        assert!(JsonClient::new()
            .get(&addr, "/healthz", None, t)
            .await
            .is_err());
        // A client that trusts another CA refuses the server.
        let other = ClusterCa::generate("shop").expect("other ca");
        let stranger = tmp.path().join("stranger");
        other
            .write_dir(&other.operator_cert().expect("operator"), &stranger)
            .expect("write");
        let wrong = JsonClient::with_tls(&stranger, true).expect("client");
        assert!(wrong.get(&addr, "/healthz", None, t).await.is_err());
    }
}
