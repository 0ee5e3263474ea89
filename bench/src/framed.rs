//! A client of roomkeeper's framed order protocol (roomkeeper_api::framed,
//! docs/framed-api.md): one connection carries many buyers' orders at once.
//!
//! A caller frames its request into the connection's shared output buffer
//! and wakes the writer task, which writes everything gathered since its last
//! write in one system call; the reader task reads many answers per call and
//! hands each to its caller by request id. So a connection costs one read and
//! one write per batch of orders on both sides, as Redis's pipelined clients
//! do. If the connection breaks, every order waiting on it gets an error and
//! the connection reports itself dead; the caller opens a new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use roomkeeper_api::framed::{self, KIND_HELLO, KIND_PROTOCOL_ERROR, RESPONSE_BIT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

use crate::http::Response;

type Waiters = Mutex<HashMap<u32, oneshot::Sender<Response>>>;

/// One framed connection, shared by many callers.
pub struct FramedConn {
    addr: SocketAddr,
    next_id: AtomicU32,
    waiters: Arc<Waiters>,
    output: Arc<Mutex<Vec<u8>>>,
    wake_writer: Arc<Notify>,
    dead: Arc<AtomicBool>,
    timeout: Duration,
}

impl FramedConn {
    /// Connects, says HELLO with `token` and waits for the node's yes.
    pub async fn connect(addr: SocketAddr, token: Option<&str>, timeout: Duration) -> Result<Self> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr}: timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        let _ = tcp.set_nodelay(true);
        match crate::http::client_tls() {
            None => Self::start(addr, tcp, token, timeout).await,
            Some(tls) => {
                let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let stream = tokio::time::timeout(timeout, tls.connect(name, tcp))
                    .await
                    .map_err(|_| anyhow!("TLS to {addr}: timed out"))?
                    .with_context(|| format!("TLS to {addr}"))?;
                Self::start(addr, stream, token, timeout).await
            }
        }
    }

    async fn start<S>(
        addr: SocketAddr,
        mut io: S,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut hello = Vec::new();
        framed::encode_hello(&mut hello, 0, token.unwrap_or(""))?;
        io.write_all(&hello).await.context("sending HELLO")?;
        let mut input = BytesMut::with_capacity(64 * 1024);
        let answer = tokio::time::timeout(timeout, read_frame(&mut io, &mut input))
            .await
            .map_err(|_| anyhow!("no answer to HELLO from {addr}"))??;
        if answer.status != 200 {
            bail!(
                "{addr} refused HELLO: {} {}",
                answer.status,
                answer.body_text()
            );
        }
        let (rd, wr) = tokio::io::split(io);
        let conn = Self {
            addr,
            next_id: AtomicU32::new(1),
            waiters: Arc::default(),
            output: Arc::new(Mutex::new(Vec::with_capacity(16 * 1024))),
            wake_writer: Arc::new(Notify::new()),
            dead: Arc::new(AtomicBool::new(false)),
            timeout,
        };
        tokio::spawn(read_answers(
            rd,
            input,
            conn.waiters.clone(),
            conn.dead.clone(),
            conn.wake_writer.clone(),
        ));
        tokio::spawn(write_requests(
            wr,
            conn.output.clone(),
            conn.wake_writer.clone(),
            conn.dead.clone(),
        ));
        Ok(conn)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connection broke; its callers must open another.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// Places one order (`body`: the JSON of a `PlaceOrder`) and waits for its answer.
    pub async fn place_order(&self, room: &str, body: &[u8]) -> Result<Response> {
        if self.is_dead() {
            bail!("connection to {} is closed", self.addr);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(id, tx);
        // The reader marks the connection dead before it drops the waiters:
        // a waiter added after that drop would otherwise wait out the timeout.
        if self.is_dead() {
            lock(&self.waiters).remove(&id);
            bail!("connection to {} is closed", self.addr);
        }
        {
            let mut out = lock(&self.output);
            if let Err(e) = framed::encode_place_order(&mut out, id, room, body) {
                drop(out);
                lock(&self.waiters).remove(&id);
                return Err(e.into());
            }
        }
        self.wake_writer.notify_one();
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => bail!("connection to {} closed before the answer", self.addr),
            Err(_) => {
                lock(&self.waiters).remove(&id);
                bail!("no answer from {} within {:?}", self.addr, self.timeout)
            }
        }
    }
}

impl Drop for FramedConn {
    fn drop(&mut self) {
        // Ends the writer, which ends the connection and with it the reader.
        self.dead.store(true, Ordering::Relaxed);
        self.wake_writer.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads one whole frame (the HELLO answer) into a response.
async fn read_frame<S: AsyncRead + Unpin>(io: &mut S, input: &mut BytesMut) -> Result<Response> {
    loop {
        if let Some((payload, used)) = framed::next_frame(input)? {
            let r = framed::decode_response(payload)?;
            let resp = to_response(&r);
            let _ = input.split_to(used);
            return Ok(resp);
        }
        if io.read_buf(input).await? == 0 {
            bail!("connection closed by the node");
        }
    }
}

fn to_response(r: &framed::Response<'_>) -> Response {
    let retry_after_ms = serde_json::from_slice::<serde_json::Value>(r.body)
        .ok()
        .filter(|_| r.status >= 400)
        .and_then(|v| v.get("retry_after_ms").and_then(serde_json::Value::as_u64));
    Response {
        status: r.status,
        retry_after_ms,
        body: Bytes::copy_from_slice(r.body),
    }
}

async fn read_answers<R: AsyncRead + Unpin>(
    mut rd: R,
    mut input: BytesMut,
    waiters: Arc<Waiters>,
    dead: Arc<AtomicBool>,
    wake_writer: Arc<Notify>,
) {
    'read: loop {
        loop {
            let used = match framed::next_frame(&input) {
                Ok(None) => break,
                Ok(Some((payload, used))) => {
                    let Ok(r) = framed::decode_response(payload) else {
                        break 'read;
                    };
                    if r.kind == KIND_PROTOCOL_ERROR {
                        tracing::warn!(body = %String::from_utf8_lossy(r.body), "framed protocol error from the node");
                        break 'read;
                    }
                    if r.kind != RESPONSE_BIT | KIND_HELLO {
                        if let Some(tx) = lock(&waiters).remove(&r.id) {
                            let _ = tx.send(to_response(&r));
                        }
                    }
                    used
                }
                Err(_) => break 'read,
            };
            let _ = input.split_to(used);
        }
        match rd.read_buf(&mut input).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    dead.store(true, Ordering::Relaxed);
    // Dropping the senders tells every waiting caller.
    lock(&waiters).clear();
    wake_writer.notify_one();
}

async fn write_requests<W: AsyncWrite + Unpin>(
    mut wr: W,
    output: Arc<Mutex<Vec<u8>>>,
    wake: Arc<Notify>,
    dead: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(16 * 1024);
    loop {
        wake.notified().await;
        if dead.load(Ordering::Relaxed) {
            break;
        }
        std::mem::swap(&mut batch, &mut *lock(&output));
        if batch.is_empty() {
            continue;
        }
        if wr.write_all(&batch).await.is_err() {
            dead.store(true, Ordering::Relaxed);
            break;
        }
        batch.clear();
    }
    let _ = wr.shutdown().await;
}
