//! A small JSON-over-HTTP/1.1 client with keep-alive, timeouts and bearer tokens,
//! used to talk to node admin and client APIs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
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

/// Plain HTTP, TLS to every node (`https://`), or TLS to the hosts routed
/// to a pool and plain HTTP to the rest.
#[derive(Clone)]
enum Pool {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<Https, Full<Bytes>>),
    Routed {
        plain: Client<HttpConnector, Full<Bytes>>,
        routes: Arc<RwLock<HashMap<String, TlsPool>>>,
    },
}

/// A TLS connection pool to the nodes of one cluster: trusts one CA, may
/// present a client certificate, and may expect one fixed server name
/// whatever address it dials (the operator dials pods by IP).
#[derive(Clone)]
pub struct TlsPool(Client<Https, Full<Bytes>>);

impl TlsPool {
    /// From PEM: the CA to trust, the client certificate and key to present
    /// (if any), and the server name to expect instead of the dialled host.
    pub fn from_pem(
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
        server_name: Option<&str>,
    ) -> Result<Self, TlsSetupError> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let bad = |what: &str, e: &dyn std::fmt::Display| TlsSetupError::Read {
            path: what.to_string(),
            reason: e.to_string(),
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(cert.map_err(|e| bad("ca.crt", &e))?)
                .map_err(|e| bad("ca.crt", &e))?;
        }
        if roots.is_empty() {
            return Err(bad("ca.crt", &"no certificate in it"));
        }
        let config = |e: rustls::Error| TlsSetupError::Config(e.to_string());
        let builder_tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(config)?
        .with_root_certificates(roots);
        // hyper-rustls sets ALPN (http/1.1) from `enable_http1`.
        let tls = match identity {
            Some((crt, key)) => {
                let chain = CertificateDer::pem_slice_iter(crt)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("tls.crt", &e))?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("tls.key", &e))?;
                builder_tls
                    .with_client_auth_cert(chain, key)
                    .map_err(config)?
            }
            None => builder_tls.with_no_client_auth(),
        };
        let mut http = tcp();
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let https = match server_name {
            Some(name) => {
                let name = ServerName::try_from(name.to_string())
                    .map_err(|e| TlsSetupError::Config(format!("server name {name:?}: {e}")))?;
                https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => https,
        };
        let https = https.enable_http1().wrap_connector(http);
        Ok(Self(builder().build(https)))
    }
}

/// The host part of `host:port` (`[v6]:port` without its brackets).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
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
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| TlsSetupError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let ca = read("ca.crt")?;
        let identity = if present_cert {
            Some((read("tls.crt")?, read("tls.key")?))
        } else {
            None
        };
        let pool = TlsPool::from_pem(
            &ca,
            identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
            None,
        )?;
        Ok(Self {
            client: Pool::Tls(pool.0),
        })
    }

    /// A client that speaks plain HTTP to every host except those given a TLS
    /// pool with [`Self::route_tls`]: for a caller (the operator) that reaches
    /// the nodes of many clusters, each with its own CA, and learns from each
    /// pod's spec whether it serves TLS. Clones share the routes.
    pub fn routed() -> Self {
        Self {
            client: Pool::Routed {
                plain: builder().build(tcp()),
                routes: Arc::default(),
            },
        }
    }

    /// From now on, calls to `host` (an IP or name, without the port) speak
    /// TLS through `pool`. False (and nothing changes) unless the client is
    /// [`Self::routed`].
    pub fn route_tls(&self, host: &str, pool: &TlsPool) -> bool {
        let Pool::Routed { routes, .. } = &self.client else {
            return false;
        };
        if let Ok(mut r) = routes.write() {
            r.insert(host.to_string(), pool.clone());
        }
        true
    }

    /// From now on, calls to `host` speak plain HTTP. False unless routed.
    pub fn route_plain(&self, host: &str) -> bool {
        let Pool::Routed { routes, .. } = &self.client else {
            return false;
        };
        if let Ok(mut r) = routes.write() {
            r.remove(host);
        }
        true
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
        enum Via<'a> {
            Plain(&'a Client<HttpConnector, Full<Bytes>>),
            Tls(&'a Client<Https, Full<Bytes>>),
        }
        let routed = match &self.client {
            Pool::Routed { routes, .. } => routes
                .read()
                .ok()
                .and_then(|r| r.get(host_of(addr)).map(|p| p.0.clone())),
            _ => None,
        };
        let via = match (&self.client, &routed) {
            (_, Some(c)) => Via::Tls(c),
            (Pool::Plain(c), None) => Via::Plain(c),
            (Pool::Tls(c), None) => Via::Tls(c),
            (Pool::Routed { plain, .. }, None) => Via::Plain(plain),
        };
        let scheme = match via {
            Via::Plain(_) => "http",
            Via::Tls(_) => "https",
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
            let resp = match &via {
                Via::Plain(c) => c.request(req).await,
                Via::Tls(c) => c.request(req).await,
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
        server_named(ca, &["127.0.0.1".to_string()]).await
    }

    /// [`server`] with a certificate naming `names`.
    async fn server_named(ca: &ClusterCa, names: &[String]) -> String {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = ca.server_cert(names).expect("server cert");
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

    #[tokio::test]
    async fn a_routed_client_speaks_tls_only_to_routed_hosts_and_checks_the_fixed_name() {
        use roomkeeper_api::raft_identity::api_server_name;
        let ca = ClusterCa::generate("local").expect("ca");
        let op = ca.operator_cert().expect("operator");
        // The server's certificate names the cluster's API name only, not
        // the address it is dialled at (pods are dialled by IP).
        let addr = server_named(&ca, &[api_server_name("local")]).await;
        let t = Duration::from_secs(5);
        let pool = |name: &str| {
            TlsPool::from_pem(
                ca.cert_pem.as_bytes(),
                Some((op.cert_pem.as_bytes(), op.key_pem.as_bytes())),
                Some(name),
            )
            .expect("pool")
        };
        let client = JsonClient::routed();
        // Not routed yet: plain HTTP, which a TLS server does not answer.
        assert!(client.get(&addr, "/healthz", None, t).await.is_err());
        assert!(client.route_tls("127.0.0.1", &pool(&api_server_name("local"))));
        let r = client.clone().get(&addr, "/healthz", None, t).await;
        assert_eq!(r.expect("served over TLS").status, 200);
        // Another name than the certificate's is refused.
        assert!(client.route_tls("127.0.0.1", &pool(&api_server_name("other"))));
        assert!(client.get(&addr, "/healthz", None, t).await.is_err());
        // Back to plain: refused again.
        assert!(client.route_plain("127.0.0.1"));
        assert!(client.get(&addr, "/healthz", None, t).await.is_err());
        // A client that is not routed says so instead of ignoring a route.
        assert!(!JsonClient::new().route_tls("127.0.0.1", &pool("x")));
        // A CA that is not PEM is a setup error, not a client that trusts nothing.
        assert!(TlsPool::from_pem(b"not pem", None, None).is_err());
    }
}
