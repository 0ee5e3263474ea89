//! HTTP/1.1 for the tests, through hyper's client connection (already in the
//! dependency tree through kube and the node): one connection per request, as
//! a client that just arrived would open, or a request on a connection the
//! caller opened (a pod's network namespace, a kept-alive connection).
//!
//! The harness is mostly synchronous (threads of buyers, polling loops), so
//! [`block_on`] runs a request on a small current-thread runtime of the calling
//! thread, or on a fresh thread when called from inside a Tokio runtime.

use std::cell::OnceCell;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::rt::{Read, Write};
use hyper_util::rt::TokioIo;

/// A complete answer: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Builds a request for `path` on `host` with an optional JSON body and bearer token.
pub fn build(
    method: &str,
    host: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
) -> io::Result<Request<Full<Bytes>>> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{method}: {e}")))?;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host);
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}{path}: {e}")))
}

/// Sends `req` on an open connection and reads the whole answer. The
/// connection is closed afterwards.
pub async fn exchange<S>(io: S, req: Request<Full<Bytes>>) -> io::Result<Response>
where
    S: Read + Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(hyper_error)?;
    let ask = async move {
        let res = sender.send_request(req).await.map_err(hyper_error)?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(hyper_error)?.to_bytes();
        Ok::<_, io::Error>(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    };
    // The connection future drives the socket; it ends once `sender` is gone.
    let (answer, _closed) = tokio::join!(ask, conn);
    answer
}

/// Connects to `addr` and sends one request; the whole exchange (connect,
/// request, full body) must finish within `timeout`.
pub async fn request(
    addr: &str,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> io::Result<Response> {
    let what = format!("{} http://{addr}{}", req.method(), req.uri());
    let work = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("connecting to {addr}: {e}")))?;
        exchange(TokioIo::new(stream), req).await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("{what}: {e}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: no full answer within {timeout:?}"),
        )),
    }
}

/// TLS to a node's client or admin API: the CA to trust and, for the admin
/// API, the client certificate to present (the operator's).
#[derive(Clone)]
pub struct Tls {
    pub connector: tokio_rustls::TlsConnector,
    /// The name to expect from the server instead of the dialled host (the
    /// operator's pods are dialled by IP and name the cluster's API name).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Trusts the `ca.crt` of `dir`; presents its `tls.crt`/`tls.key` when
    /// `with_cert` (a directory in the cert-manager layout).
    pub fn from_dir(dir: &std::path::Path, with_cert: bool) -> io::Result<Self> {
        Self::from_files(
            &dir.join("ca.crt"),
            with_cert.then(|| (dir.join("tls.crt"), dir.join("tls.key"))),
        )
    }

    /// Trusts the CA in `ca`; presents the certificate and key in `cert`.
    pub fn from_files(
        ca: &std::path::Path,
        cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> io::Result<Self> {
        let ca = std::fs::read(ca)?;
        let cert = match cert {
            Some((crt, key)) => Some((std::fs::read(crt)?, std::fs::read(key)?)),
            None => None,
        };
        Self::from_pem(
            &ca,
            cert.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        )
    }

    /// The same from PEM bytes.
    pub fn from_pem(ca: &[u8], cert: Option<(&[u8], &[u8])>) -> io::Result<Self> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad =
            |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca) {
            roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_root_certificates(roots);
        let config = match cert {
            None => builder.with_no_client_auth(),
            Some((crt, key)) => {
                let chain = CertificateDer::pem_slice_iter(crt)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(&e))?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad(&e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad(&e))?
            }
        };
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
            server_name: None,
        })
    }

    /// Expects `name` from every server, whatever address is dialled.
    pub fn expecting(mut self, name: &str) -> Self {
        self.server_name = Some(name.to_string());
        self
    }

    /// Connects and completes the handshake with the host of `addr`
    /// (`ip:port`) as the server name.
    pub async fn connect(
        &self,
        addr: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let host = match &self.server_name {
            Some(n) => n.as_str(),
            None => addr.rsplit_once(':').map_or(addr, |(h, _)| h),
        };
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("connecting to {addr}: {e}")))?;
        self.connector
            .connect(name, stream)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("TLS to {addr}: {e}")))
    }

    /// The DER of the certificate `addr` presents to a new connection.
    pub async fn peer_certificate(&self, addr: &str) -> io::Result<Vec<u8>> {
        let s = self.connect(addr).await?;
        s.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .ok_or_else(|| io::Error::other(format!("{addr} presented no certificate")))
    }
}

/// [`request`] over TLS.
pub async fn request_tls(
    addr: &str,
    tls: &Tls,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> io::Result<Response> {
    let what = format!("{} https://{addr}{}", req.method(), req.uri());
    let work = async {
        let stream = tls.connect(addr).await?;
        exchange(TokioIo::new(stream), req).await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("{what}: {e}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: no full answer within {timeout:?}"),
        )),
    }
}

/// Runs an I/O future to completion from synchronous code.
pub fn block_on<F, T>(fut: F) -> io::Result<T>
where
    F: std::future::Future<Output = io::Result<T>> + Send,
    T: Send,
{
    thread_local! {
        static RUNTIME: OnceCell<tokio::runtime::Runtime> = const { OnceCell::new() };
    }
    let fresh = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        // A runtime may not be driven from a thread of another: use a fresh
        // one on a thread of its own.
        return std::thread::scope(|s| s.spawn(|| fresh()?.block_on(fut)).join())
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
    }
    RUNTIME.with(|cell| {
        if cell.get().is_none() {
            let _ = cell.set(fresh()?);
        }
        match cell.get() {
            Some(rt) => rt.block_on(fut),
            None => Err(io::Error::other("no Tokio runtime on this thread")),
        }
    })
}

fn hyper_error(e: hyper::Error) -> io::Error {
    // Keep the kind of an underlying I/O error (refused, reset, timed out).
    let kind = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .map_or(io::ErrorKind::Other, io::Error::kind);
    io::Error::new(kind, e)
}
