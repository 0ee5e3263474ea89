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

/// Reads one frame and decodes it. Returns `Ok(None)` on a clean end of stream.
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
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(n));
    }
    scratch.resize(n, 0);
    r.read_exact(scratch).await?;
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
