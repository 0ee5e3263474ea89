//! A growable list stored in fixed-size chunks: the orders of a shard.
//!
//! A `Vec` of a million orders doubles its buffer as it grows: up to twice
//! the memory the orders need, and a copy of all of them (a pause of the apply
//! loop) each time. Chunks never move what they hold, and the unused space is
//! at most one chunk (D54).

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Index, IndexMut};

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Elements per chunk: ~1.3 MB of 80-byte orders.
const CHUNK: usize = 1 << 14;

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(value),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

impl<T> Index<usize> for Chunked<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T> IndexMut<usize> for Chunked<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T: fmt::Debug> fmt::Debug for Chunked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Written as the plain list a `Vec` is: snapshots do not change.
impl<T: Serialize> Serialize for Chunked<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The length first (postcard writes it; chained chunks do not know it).
        let mut seq = s.serialize_seq(Some(self.len))?;
        for v in self.iter() {
            seq.serialize_element(v)?;
        }
        seq.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Chunked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ChunkedVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ChunkedVisitor<T> {
            type Value = Chunked<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Chunked<T>, A::Error> {
                let mut out = Chunked::default();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(ChunkedVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_reads_and_writes_across_chunk_edges_like_a_vec() {
        let n = CHUNK * 2 + 3;
        let mut c = Chunked::default();
        for i in 0..n {
            c.push(i);
        }
        assert_eq!(c.len(), n);
        assert_eq!(c.chunks.len(), 3);
        assert_eq!(c[CHUNK - 1], CHUNK - 1);
        assert_eq!(c[CHUNK], CHUNK);
        c[CHUNK] = 7;
        c[n - 1] += 1;
        let v: Vec<usize> = c.iter().copied().collect();
        let mut expected: Vec<usize> = (0..n).collect();
        expected[CHUNK] = 7;
        expected[n - 1] += 1;
        assert_eq!(v, expected);
        // The same bytes as the Vec it replaced, both ways.
        let bytes = postcard::to_allocvec(&c).expect("encode");
        assert_eq!(bytes, postcard::to_allocvec(&expected).expect("encode vec"));
        let back: Chunked<usize> = postcard::from_bytes(&bytes).expect("decode");
        assert!(back == c);
        assert_eq!(back.chunks.len(), 3);
    }
}
