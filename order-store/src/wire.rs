//! Length-prefixed frames for node-to-node traffic: `[u32 big-endian length][body]`,
//! the body a postcard-encoded message. One TCP connection carries many requests
//! at once (pipelining); each message carries an id to match its response.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted. Snapshots travel in chunks well below this.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Errors of the frame codec.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("cannot encode message: {0}")]
    Encode(postcard::Error),
    #[error("cannot decode message: {0}")]
    Decode(postcard::Error),
    #[error("frame not received in time")]
    Timeout,
}

/// Encodes a message into a frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let mut buf = postcard::to_extend(msg, vec![0u8; 4]).map_err(WireError::Encode)?;
    let body_len = buf.len() - 4;
    if body_len > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(body_len));
    }
    buf[..4].copy_from_slice(&(body_len as u32).to_be_bytes());
    Ok(buf)
}

/// Writes an already-encoded frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), WireError> {
    w.write_all(frame).await?;
    Ok(())
}

/// Bytes a frame's body is read in: the buffer grows only as data arrives, so
/// an announced length alone (four bytes) allocates nothing.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A scratch buffer grown past this by one big frame is given back afterwards.
const KEEP_SCRATCH_BYTES: usize = 1024 * 1024;

/// How long a frame may take once its first byte arrived: `base`, plus one
/// second for every `min_bytes_per_sec` bytes that have arrived (a snapshot
/// chunk on a slow link keeps going; a peer that stalls or trickles is cut).
#[derive(Debug, Clone, Copy)]
pub struct FrameDeadline {
    pub base: std::time::Duration,
    pub min_bytes_per_sec: u64,
}

impl Default for FrameDeadline {
    fn default() -> Self {
        Self {
            base: std::time::Duration::from_secs(10),
            min_bytes_per_sec: 256 * 1024,
        }
    }
}

impl FrameDeadline {
    /// Time allowed from a frame's first byte once `received` bytes arrived.
    pub fn after(&self, received: usize) -> std::time::Duration {
        let rate = self.min_bytes_per_sec.max(1);
        self.base + std::time::Duration::from_millis(received as u64 * 1000 / rate)
    }
}

/// Reads one frame and decodes it. Returns `Ok(None)` on a clean end of stream.
/// Has no deadline: for trusted in-process readers and tests; servers use
/// `read_frame_within`.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    scratch: &mut Vec<u8>,
) -> Result<Option<T>, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = announced_len(len)?;
    read_body(r, n, scratch, None).await?;
    decode(scratch)
}

/// Reads one frame: waits for its first byte as long as it takes (an idle
/// connection between requests), then gives the rest `deadline`.
pub async fn read_frame_within<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    scratch: &mut Vec<u8>,
    deadline: FrameDeadline,
) -> Result<Option<T>, WireError> {
    let mut len = [0u8; 4];
    match r.read(&mut len[..1]).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(e.into()),
    }
    let started = tokio::time::Instant::now();
    tokio::time::timeout_at(started + deadline.base, r.read_exact(&mut len[1..]))
        .await
        .map_err(|_| WireError::Timeout)??;
    let n = announced_len(len)?;
    read_body(r, n, scratch, Some((started, deadline))).await?;
    decode(scratch)
}

fn announced_len(len: [u8; 4]) -> Result<usize, WireError> {
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(n));
    }
    Ok(n)
}

/// Reads `n` body bytes into `scratch`, growing it chunk by chunk as they arrive.
async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    n: usize,
    scratch: &mut Vec<u8>,
    deadline: Option<(tokio::time::Instant, FrameDeadline)>,
) -> Result<(), WireError> {
    if scratch.capacity() > KEEP_SCRATCH_BYTES {
        *scratch = Vec::new();
    }
    scratch.clear();
    while scratch.len() < n {
        let have = scratch.len();
        let want = (n - have).min(READ_CHUNK_BYTES);
        scratch.resize(have + want, 0);
        let read = r.read(&mut scratch[have..]);
        let got = match deadline {
            Some((started, d)) => {
                match tokio::time::timeout_at(started + d.after(have), read).await {
                    Ok(got) => got,
                    Err(_) => {
                        scratch.truncate(have);
                        return Err(WireError::Timeout);
                    }
                }
            }
            None => read.await,
        };
        match got {
            Ok(0) => {
                scratch.truncate(have);
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            Ok(k) => scratch.truncate(have + k),
            Err(e) => {
                scratch.truncate(have);
                return Err(e.into());
            }
        }
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(scratch: &[u8]) -> Result<Option<T>, WireError> {
    postcard::from_bytes(scratch)
        .map(Some)
        .map_err(WireError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_lengths_are_refused() {
        let frame = encode_frame(&(7u64, "hello".to_string())).expect("encode");
        let mut both = frame.clone();
        both.extend_from_slice(&frame);
        let mut r = &both[..];
        let mut scratch = Vec::new();
        for _ in 0..2 {
            let got: Option<(u64, String)> = read_frame(&mut r, &mut scratch).await.expect("read");
            assert_eq!(got, Some((7, "hello".to_string())));
        }
        let end: Option<(u64, String)> = read_frame(&mut r, &mut scratch).await.expect("eof");
        assert_eq!(end, None);

        let huge = (u32::MAX).to_be_bytes();
        let mut r = &huge[..];
        let err = read_frame::<_, (u64, String)>(&mut r, &mut scratch)
            .await
            .expect_err("too large");
        assert!(matches!(err, WireError::TooLarge(_)), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_frame_times_out_and_an_announced_length_allocates_nothing() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        // Announces 60 MiB, sends 3 bytes of it, then stalls.
        client
            .write_all(&(60u32 * 1024 * 1024).to_be_bytes())
            .await
            .expect("write");
        client.write_all(b"abc").await.expect("write");
        let mut scratch = Vec::new();
        let d = FrameDeadline {
            base: std::time::Duration::from_secs(2),
            min_bytes_per_sec: 1024,
        };
        let started = tokio::time::Instant::now();
        let err = read_frame_within::<_, (u64, String)>(&mut server, &mut scratch, d)
            .await
            .expect_err("stalled");
        assert!(matches!(err, WireError::Timeout), "{err}");
        assert!(started.elapsed() >= std::time::Duration::from_secs(2));
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        assert!(
            scratch.capacity() <= 2 * READ_CHUNK_BYTES,
            "allocated {} bytes for 3 received",
            scratch.capacity()
        );
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_frame_is_cut_but_a_steady_one_arrives() {
        let body = encode_frame(&(1u64, "x".repeat(4000))).expect("encode");
        let d = FrameDeadline {
            base: std::time::Duration::from_secs(1),
            min_bytes_per_sec: 1000,
        };
        // 100 bytes every 50 ms (2000 B/s) keeps up with the deadline.
        let (mut client, mut server) = tokio::io::duplex(64);
        let steady = body.clone();
        tokio::spawn(async move {
            for chunk in steady.chunks(100) {
                client.write_all(chunk).await.expect("write");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
        let mut scratch = Vec::new();
        let got: Option<(u64, String)> = read_frame_within(&mut server, &mut scratch, d)
            .await
            .expect("steady frame");
        assert_eq!(got.map(|g| g.1.len()), Some(4000));
        // 10 bytes every 100 ms (100 B/s) falls behind and is cut.
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for chunk in body.chunks(10) {
                if client.write_all(chunk).await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        let err = read_frame_within::<_, (u64, String)>(&mut server, &mut scratch, d)
            .await
            .expect_err("trickle");
        assert!(matches!(err, WireError::Timeout), "{err}");
    }

    #[tokio::test]
    async fn garbage_bodies_are_decode_errors_not_panics() {
        let mut frame = 3u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0xff, 0xff, 0xff]);
        let mut r = &frame[..];
        let mut scratch = Vec::new();
        let err = read_frame::<_, (u64, String)>(&mut r, &mut scratch)
            .await
            .expect_err("garbage");
        assert!(matches!(err, WireError::Decode(_)), "{err}");
    }
}
