//! A hostile peer, for security tests (`roomkeeper raft-probe`): sends one
//! hand-made request to a node's Raft port — with any header, any claimed
//! sender, plain TCP or TLS with any certificate — and reports the answer.
//! It trusts any server certificate: it is the attacker, not a node.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use roomkeeper_order_state::Command;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

use crate::auth::Principal;
use crate::raft_types::{NodeId, Vote};
use crate::transport::{Envelope, ForwardBatch, RpcRequest, RpcResponse};
use crate::wire::{encode_frame, read_frame};

/// How the probe connects.
#[derive(Debug, Clone)]
pub enum ProbeTransport {
    Plain,
    /// TLS without a client certificate.
    TlsNoCert,
    /// TLS presenting `tls.crt`/`tls.key` from this directory.
    TlsWithCert(std::path::PathBuf),
}

/// What the probe asks for.
#[derive(Debug, Clone)]
pub enum ProbeRequest {
    /// A forwarded order whose contact is sent as given (not sealed) unless
    /// `seal_with` names a contact key file, on behalf of `principal`.
    ForwardOrder {
        room: String,
        sku: String,
        buyer: String,
        contact: String,
        seal_with: Option<std::path::PathBuf>,
        principal: Principal,
    },
    ReadIndex,
    /// A vote request for `candidate` in `term`.
    Vote {
        candidate: NodeId,
        term: u64,
    },
    /// An empty append (a heartbeat) from `leader` in `term`.
    Append {
        leader: NodeId,
        term: u64,
    },
}

/// The frame header the probe sends.
#[derive(Debug, Clone)]
pub struct ProbeHeader {
    pub cluster: String,
    pub shard: crate::transport::ShardId,
    pub from: NodeId,
    pub to: NodeId,
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(cert_dir: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    match cert_dir {
        None => Ok(builder.with_no_client_auth()),
        Some(dir) => {
            let chain = CertificateDer::pem_file_iter(dir.join("tls.crt"))
                .map_err(|e| e.to_string())?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key =
                PrivateKeyDer::from_pem_file(dir.join("tls.key")).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    frame: &[u8],
) -> Result<RpcResponse, String> {
    let (rd, mut wr) = tokio::io::split(stream);
    crate::wire::write_frame(&mut wr, frame)
        .await
        .map_err(|e| format!("send: {e}"))?;
    tokio::io::AsyncWriteExt::flush(&mut wr)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut r = BufReader::new(rd);
    // A TLS node answers a plaintext frame with a TLS alert; read as a frame
    // header its first bytes announce a huge length. Say what it is.
    if let Ok(head) = tokio::io::AsyncBufReadExt::fill_buf(&mut r).await {
        if looks_like_tls_record(head) {
            return Err(
                "the node answered with a TLS record: its Raft port requires mutual TLS \
                 (probe with --tls-dir)"
                    .into(),
            );
        }
    }
    let mut scratch = Vec::new();
    match read_frame::<_, Envelope<RpcResponse>>(&mut r, &mut scratch).await {
        Ok(Some(env)) => Ok(env.body),
        Ok(None) => Err("connection closed without an answer".into()),
        Err(e) => Err(format!("connection failed: {e}")),
    }
}

/// A TLS record header: content type alert (21) or handshake (22), version 3.x.
fn looks_like_tls_record(head: &[u8]) -> bool {
    matches!(head, [21 | 22, 3, ..])
}

/// Sends one request and returns the answer (`Debug`-printed), or why none came.
pub async fn probe(
    addr: &str,
    transport: ProbeTransport,
    header: ProbeHeader,
    request: ProbeRequest,
) -> Result<String, String> {
    let body = match request {
        ProbeRequest::ForwardOrder {
            room,
            sku,
            buyer,
            contact,
            seal_with,
            principal,
        } => {
            let contact = match seal_with {
                None => contact.into_bytes(),
                Some(path) => crate::contact::ContactKeyring::from_file(&path)
                    .and_then(|k| k.seal(contact.as_bytes()))
                    .map_err(|e| e.to_string())?,
            };
            let order = Command::PlaceOrder {
                room,
                sku,
                idempotency_key: format!("probe-{buyer}"),
                buyer,
                qty: 1,
                contact,
            };
            RpcRequest::Forward(ForwardBatch::new(vec![order], &[Arc::new(principal)]))
        }
        ProbeRequest::ReadIndex => RpcRequest::ReadIndex,
        ProbeRequest::Vote { candidate, term } => {
            RpcRequest::Vote(VoteRequest::new(Vote::new(term, candidate), None))
        }
        ProbeRequest::Append { leader, term } => RpcRequest::AppendEntries(AppendEntriesRequest {
            vote: Vote::new_committed(term, leader),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        }),
    };
    let frame = encode_frame(&Envelope {
        id: 1,
        cluster: header.cluster,
        shard: header.shard,
        from: header.from,
        to: header.to,
        body,
    })
    .map_err(|e| e.to_string())?;
    let run = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let cert_dir = match &transport {
            ProbeTransport::Plain => return exchange(tcp, &frame).await,
            ProbeTransport::TlsNoCert => None,
            ProbeTransport::TlsWithCert(dir) => Some(dir.as_path()),
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(cert_dir)?));
        let name = ServerName::try_from("probe.invalid").map_err(|e| e.to_string())?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        exchange(tls, &frame).await
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| "no answer within 10 s".to_string())??;
    Ok(format!("{answer:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tls_alert_is_named_not_read_as_a_frame_length() {
        let (client, mut server) = tokio::io::duplex(1024);
        let node = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let _ = tokio::io::AsyncReadExt::read(&mut server, &mut buf).await;
            // What rustls sends a peer that did not start with a ClientHello.
            let _ =
                tokio::io::AsyncWriteExt::write_all(&mut server, &[21, 3, 3, 0, 2, 2, 50]).await;
        });
        let err = exchange(client, b"plaintext frame").await.unwrap_err();
        assert!(err.contains("requires mutual TLS"), "{err}");
        let _ = node.await;
        assert!(!looks_like_tls_record(&[0, 0, 1, 0]), "a real frame header");
    }
}
