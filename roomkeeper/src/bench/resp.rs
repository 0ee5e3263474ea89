//! RESP2, the Redis wire protocol: commands are arrays of bulk strings, replies
//! are parsed incrementally from a byte buffer.

use anyhow::{bail, Context, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The reply as text, for simple strings and bulk strings.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Simple(s) => Some(s.clone()),
            Value::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
}

/// Appends one command (an array of bulk strings) to `out`.
pub fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

fn parse_int(bytes: &[u8]) -> Result<i64> {
    std::str::from_utf8(bytes)
        .context("RESP: non-UTF-8 integer")?
        .parse::<i64>()
        .context("RESP: bad integer")
}

/// Parses one reply from the start of `buf`. `Ok(None)` means more bytes are
/// needed; `Ok(Some((value, n)))` means the reply used the first `n` bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>> {
    parse_at(buf, 0, 0)
}

const MAX_DEPTH: usize = 32;

fn parse_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Value, usize)>> {
    if depth > MAX_DEPTH {
        bail!("RESP: nesting too deep");
    }
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(eol) = find_crlf(buf, pos + 1) else {
        return Ok(None);
    };
    let line = &buf[pos + 1..eol];
    let next = eol + 2;
    match kind {
        b'+' => Ok(Some((
            Value::Simple(String::from_utf8_lossy(line).into_owned()),
            next,
        ))),
        b'-' => Ok(Some((
            Value::Error(String::from_utf8_lossy(line).into_owned()),
            next,
        ))),
        b':' => Ok(Some((Value::Int(parse_int(line)?), next))),
        b'$' => {
            let len = parse_int(line)?;
            if len < 0 {
                return Ok(Some((Value::Bulk(None), next)));
            }
            let len = usize::try_from(len).context("RESP: bulk length")?;
            let end = next + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                bail!("RESP: bulk string not terminated by CRLF");
            }
            Ok(Some((Value::Bulk(Some(buf[next..end].to_vec())), end + 2)))
        }
        b'*' => {
            let n = parse_int(line)?;
            if n < 0 {
                return Ok(Some((Value::Array(None), next)));
            }
            let n = usize::try_from(n).context("RESP: array length")?;
            let mut items = Vec::with_capacity(n.min(1024));
            let mut at = next;
            for _ in 0..n {
                match parse_at(buf, at, depth + 1)? {
                    Some((v, used)) => {
                        items.push(v);
                        at = used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Value::Array(Some(items)), at)))
        }
        other => bail!("RESP: unexpected type byte {:?}", char::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode_command(&mut out, &["EVALSHA", "abc", "0"]);
        assert_eq!(out, b"*3\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n0\r\n");
        out.clear();
        encode_command(&mut out, &[b"".as_slice(), b"a\r\nb".as_slice()]);
        assert_eq!(out, b"*2\r\n$0\r\n\r\n$4\r\na\r\nb\r\n");
    }

    #[test]
    fn parses_every_reply_type() {
        assert_eq!(
            parse(b"+OK\r\n").unwrap(),
            Some((Value::Simple("OK".into()), 5))
        );
        assert_eq!(
            parse(b"-NOSCRIPT No matching script\r\n").unwrap(),
            Some((Value::Error("NOSCRIPT No matching script".into()), 30))
        );
        assert_eq!(parse(b":-42\r\n").unwrap(), Some((Value::Int(-42), 6)));
        assert_eq!(
            parse(b"$5\r\nhe\r\no\r\n").unwrap(),
            Some((Value::Bulk(Some(b"he\r\no".to_vec())), 11))
        );
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Value::Bulk(None), 5)));
        assert_eq!(parse(b"*-1\r\n").unwrap(), Some((Value::Array(None), 5)));
        let (v, used) = parse(b"*3\r\n:1\r\n$8\r\nsold_out\r\n*1\r\n:7\r\n+rest")
            .unwrap()
            .unwrap();
        assert_eq!(
            v,
            Value::Array(Some(vec![
                Value::Int(1),
                Value::Bulk(Some(b"sold_out".to_vec())),
                Value::Array(Some(vec![Value::Int(7)])),
            ]))
        );
        assert_eq!(used, 30);
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        let full = b"*2\r\n:1\r\n$3\r\nabc\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(full).unwrap().is_some());
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b":abc\r\n").is_err());
        assert!(parse(b"$3\r\nabcXY").is_err());
    }

    #[test]
    fn accessors() {
        assert_eq!(Value::Int(3).as_int(), Some(3));
        assert_eq!(Value::Bulk(Some(b"12".to_vec())).as_int(), Some(12));
        assert_eq!(Value::Simple("x".into()).as_text(), Some("x".into()));
        assert_eq!(Value::Bulk(None).as_text(), None);
    }
}
