//! The framed order protocol: the client API's order route over one TCP (or
//! TLS) connection, pipelined, without HTTP (docs/framed-api.md).
//!
//! A connection carries length-prefixed frames both ways. The client sends
//! requests, each with an id of its choosing, as fast as it likes; the node
//! answers each one with a response carrying the same id, in the order the
//! answers are ready (not the order of the requests). Bodies are the JSON the
//! HTTP API takes and gives, and statuses are its HTTP statuses, so the two
//! APIs say the same things with the same codes.
//!
//! ```text
//! frame     = length:u32be payload            1 ≤ length ≤ MAX_FRAME_BYTES
//! request   = kind:u8 id:u32be fields
//!   HELLO         kind 0x01  version:u8 token (the rest: the bearer token, may be empty)
//!   PLACE_ORDER   kind 0x02  room_len:u16be room body (the rest: JSON as POST /v1/rooms/{room}/orders)
//! response  = kind:u8 id:u32be status:u16be body (the rest: JSON, as the HTTP answer's body)
//!   kind = 0x80 | the request's kind; 0xFF answers a frame that could not be read (id 0)
//! ```
//!
//! HELLO must be the first frame; it is answered 200 `{"protocol":1}` or
//! 401 and the connection is closed. A frame that cannot be read, or a
//! request before HELLO, is answered with kind 0xFF and the connection is
//! closed. Everything here is pure: encoding and decoding, no I/O.

use thiserror::Error;

/// The protocol version this build speaks (HELLO's `version`).
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest payload of one frame: the HTTP API's 16 KiB body plus a room name
/// and the headers.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 + 512;
/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;

pub const KIND_HELLO: u8 = 0x01;
pub const KIND_PLACE_ORDER: u8 = 0x02;
/// A response's kind: the request's with the high bit set.
pub const RESPONSE_BIT: u8 = 0x80;
/// The answer to a frame that could not be read; the connection closes after it.
pub const KIND_PROTOCOL_ERROR: u8 = 0xFF;

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("frame ends inside its {field}")]
    Truncated { field: &'static str },
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("{field} is not UTF-8")]
    NotUtf8 { field: &'static str },
}

impl FrameError {
    /// The error code a client sees (the JSON body's `code`).
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "frame_too_large",
            FrameError::UnknownKind(_) => "unknown_frame_kind",
            _ => "malformed_frame",
        }
    }
}

/// A request as read from a frame's payload, borrowing from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Hello {
        id: u32,
        version: u8,
        token: &'a str,
    },
    PlaceOrder {
        id: u32,
        room: &'a str,
        body: &'a [u8],
    },
}

impl Request<'_> {
    pub fn id(&self) -> u32 {
        match self {
            Request::Hello { id, .. } | Request::PlaceOrder { id, .. } => *id,
        }
    }

    pub fn kind(&self) -> u8 {
        match self {
            Request::Hello { .. } => KIND_HELLO,
            Request::PlaceOrder { .. } => KIND_PLACE_ORDER,
        }
    }
}

/// A response as read from a frame's payload, borrowing from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<'a> {
    pub kind: u8,
    pub id: u32,
    pub status: u16,
    pub body: &'a [u8],
}

/// The payload of the next whole frame at the start of `buf` and the bytes
/// the frame takes, or `None` while it has not all arrived. A length that can
/// never be valid is an error at once, before its payload is waited for.
pub fn next_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(head) = buf.get(..LENGTH_BYTES) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(buf
        .get(LENGTH_BYTES..LENGTH_BYTES + len)
        .map(|payload| (payload, LENGTH_BYTES + len)))
}

/// Reads a request payload (without its length prefix).
pub fn decode_request(payload: &[u8]) -> Result<Request<'_>, FrameError> {
    let mut r = Reader(payload);
    let kind = r.u8("kind")?;
    let id = r.u32("id")?;
    match kind {
        KIND_HELLO => {
            let version = r.u8("version")?;
            let token = std::str::from_utf8(r.rest())
                .map_err(|_| FrameError::NotUtf8 { field: "token" })?;
            Ok(Request::Hello { id, version, token })
        }
        KIND_PLACE_ORDER => {
            let room_len = usize::from(r.u16("room length")?);
            let room = r.take(room_len, "room")?;
            let room =
                std::str::from_utf8(room).map_err(|_| FrameError::NotUtf8 { field: "room" })?;
            Ok(Request::PlaceOrder {
                id,
                room,
                body: r.rest(),
            })
        }
        other => Err(FrameError::UnknownKind(other)),
    }
}

/// Reads a response payload (without its length prefix).
pub fn decode_response(payload: &[u8]) -> Result<Response<'_>, FrameError> {
    let mut r = Reader(payload);
    let kind = r.u8("kind")?;
    let id = r.u32("id")?;
    let status = r.u16("status")?;
    Ok(Response {
        kind,
        id,
        status,
        body: r.rest(),
    })
}

/// Appends a HELLO frame to `out`.
pub fn encode_hello(out: &mut Vec<u8>, id: u32, token: &str) -> Result<(), FrameError> {
    frame(out, |p| {
        p.push(KIND_HELLO);
        p.extend_from_slice(&id.to_be_bytes());
        p.push(PROTOCOL_VERSION);
        p.extend_from_slice(token.as_bytes());
    })
}

/// Appends a PLACE_ORDER frame to `out`; `body` is the JSON of a `PlaceOrder`.
pub fn encode_place_order(
    out: &mut Vec<u8>,
    id: u32,
    room: &str,
    body: &[u8],
) -> Result<(), FrameError> {
    let room_len = u16::try_from(room.len()).map_err(|_| FrameError::TooLarge {
        len: room.len(),
        max: usize::from(u16::MAX),
    })?;
    frame(out, |p| {
        p.push(KIND_PLACE_ORDER);
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&room_len.to_be_bytes());
        p.extend_from_slice(room.as_bytes());
        p.extend_from_slice(body);
    })
}

/// Appends a response frame to `out`.
pub fn encode_response(
    out: &mut Vec<u8>,
    kind: u8,
    id: u32,
    status: u16,
    body: &[u8],
) -> Result<(), FrameError> {
    frame(out, |p| {
        p.push(kind);
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&status.to_be_bytes());
        p.extend_from_slice(body);
    })
}

/// Writes a frame in place: four zero bytes where the length goes, the
/// payload, then the length over them. A payload over the limit is taken back out and refused.
fn frame(out: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    payload(out);
    let len = out.len() - start - LENGTH_BYTES;
    if len > MAX_FRAME_BYTES {
        out.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    // len ≤ MAX_FRAME_BYTES fits a u32.
    out[start..start + LENGTH_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Truncated { field });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload_of(buf: &[u8]) -> &[u8] {
        let (payload, used) = next_frame(buf).expect("frame").expect("whole");
        assert_eq!(used, buf.len());
        payload
    }

    #[test]
    fn requests_round_trip() {
        let mut buf = Vec::new();
        encode_hello(&mut buf, 7, "s3cret").expect("hello");
        assert_eq!(
            decode_request(payload_of(&buf)),
            Ok(Request::Hello {
                id: 7,
                version: PROTOCOL_VERSION,
                token: "s3cret"
            })
        );
        buf.clear();
        encode_place_order(&mut buf, u32::MAX, "room-ü", br#"{"sku":"a"}"#).expect("order");
        let req = decode_request(payload_of(&buf)).expect("decode");
        assert_eq!(
            req,
            Request::PlaceOrder {
                id: u32::MAX,
                room: "room-ü",
                body: br#"{"sku":"a"}"#
            }
        );
        assert_eq!(req.kind(), KIND_PLACE_ORDER);
    }

    #[test]
    fn responses_round_trip() {
        let mut buf = Vec::new();
        encode_response(&mut buf, RESPONSE_BIT | KIND_PLACE_ORDER, 9, 201, b"{}").expect("enc");
        assert_eq!(
            decode_response(payload_of(&buf)),
            Ok(Response {
                kind: 0x82,
                id: 9,
                status: 201,
                body: b"{}"
            })
        );
    }

    #[test]
    fn frames_split_anywhere_are_waited_for() {
        let mut buf = Vec::new();
        encode_place_order(&mut buf, 1, "r", b"{}").expect("a");
        encode_place_order(&mut buf, 2, "r", b"{}").expect("b");
        let one = buf.len() / 2;
        for cut in 0..one {
            assert_eq!(next_frame(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        let (p, used) = next_frame(&buf).expect("ok").expect("first");
        assert_eq!(used, one);
        assert_eq!(decode_request(p).expect("req").id(), 1);
        let (p, _) = next_frame(&buf[used..]).expect("ok").expect("second");
        assert_eq!(decode_request(p).expect("req").id(), 2);
    }

    #[test]
    fn impossible_lengths_are_refused_before_their_payload() {
        assert_eq!(next_frame(&[0, 0, 0, 0]), Err(FrameError::Empty));
        let huge = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
        let err = next_frame(&huge).expect_err("too large");
        assert_eq!(err.code(), "frame_too_large");
    }

    #[test]
    fn short_and_foreign_payloads_are_errors_not_panics() {
        assert_eq!(
            decode_request(&[KIND_PLACE_ORDER, 0, 0]),
            Err(FrameError::Truncated { field: "id" })
        );
        assert_eq!(
            decode_request(&[KIND_PLACE_ORDER, 0, 0, 0, 1, 0, 9, b'r']),
            Err(FrameError::Truncated { field: "room" })
        );
        assert_eq!(
            decode_request(&[KIND_PLACE_ORDER, 0, 0, 0, 1, 0, 1, 0xFF]),
            Err(FrameError::NotUtf8 { field: "room" })
        );
        assert_eq!(
            decode_request(&[0x42, 0, 0, 0, 1]),
            Err(FrameError::UnknownKind(0x42))
        );
        assert!(decode_response(&[0x82, 0, 0]).is_err());
    }

    #[test]
    fn oversized_payloads_are_not_encoded() {
        let mut buf = b"kept".to_vec();
        let body = vec![b'x'; MAX_FRAME_BYTES];
        let err = encode_place_order(&mut buf, 1, "r", &body).expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert_eq!(buf, b"kept", "a refused frame leaves the buffer as it was");
        let long_room = "r".repeat(usize::from(u16::MAX) + 1);
        assert!(encode_place_order(&mut buf, 1, &long_room, b"{}").is_err());
    }
}
