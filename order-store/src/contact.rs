//! Buyer contact sealing: contact data is encrypted on the node that receives the
//! order, before the command enters the Raft log, so logs, snapshots and backups
//! never hold it in plain text.
//!
//! Key file format (one key per line, `#` comments allowed):
//! `<key-id 0-255> <64 hex chars>`. The first key seals; every key opens, so keys
//! can be rotated by prepending a new line.
//! Sealed format: `[version=1][key id][24-byte nonce][ciphertext+tag]`.

use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

/// Errors of the contact keyring.
#[derive(Debug, thiserror::Error)]
pub enum ContactError {
    #[error("cannot read contact key file {path}: {source}")]
    ReadKeys {
        path: String,
        source: std::io::Error,
    },
    #[error("contact key file line {line}: {reason}")]
    BadKeyLine { line: usize, reason: String },
    #[error("contact key file holds no key")]
    NoKey,
    #[error("sealed contact is malformed")]
    Malformed,
    #[error("sealed contact uses key id {0}, which this node does not hold")]
    UnknownKey(u8),
    #[error("sealed contact failed authentication (wrong key or tampered)")]
    Authentication,
    #[error("encryption failed")]
    Encrypt,
}

/// The keys a node seals and opens contacts with.
pub struct ContactKeyring {
    keys: Vec<(u8, XChaCha20Poly1305)>,
}

impl std::fmt::Debug for ContactKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u8> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("ContactKeyring")
            .field("key_ids", &ids)
            .finish()
    }
}

impl ContactKeyring {
    /// Loads keys from a file (a mounted Secret in Kubernetes).
    pub fn from_file(path: &Path) -> Result<Self, ContactError> {
        let text = std::fs::read_to_string(path).map_err(|source| ContactError::ReadKeys {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses the key file format described in the module docs.
    pub fn parse(text: &str) -> Result<Self, ContactError> {
        let mut keys = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| ContactError::BadKeyLine {
                line: i + 1,
                reason: reason.to_string(),
            };
            let mut parts = line.split_whitespace();
            let id: u8 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("expected a key id between 0 and 255"))?;
            let hex = parts
                .next()
                .ok_or_else(|| bad("expected 64 hex characters after the id"))?;
            let bytes =
                decode_hex(hex).ok_or_else(|| bad("key must be 64 hex characters (32 bytes)"))?;
            if keys.iter().any(|(k, _)| *k == id) {
                return Err(bad("duplicate key id"));
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
                .map_err(|_| bad("key must be 32 bytes"))?;
            keys.push((id, cipher));
        }
        if keys.is_empty() {
            return Err(ContactError::NoKey);
        }
        Ok(Self { keys })
    }

    /// A keyring with one key derived from a fixed seed: for tests and the demo only.
    pub fn for_tests(seed: u8) -> Self {
        let key = [seed; 32];
        match XChaCha20Poly1305::new_from_slice(&key) {
            Ok(c) => Self { keys: vec![(0, c)] },
            Err(_) => Self { keys: Vec::new() },
        }
    }

    /// Encrypts a contact with the active key.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, ContactError> {
        let (id, cipher) = self.keys.first().ok_or(ContactError::NoKey)?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = cipher
            .encrypt(&nonce, plaintext)
            .map_err(|_| ContactError::Encrypt)?;
        let mut out = Vec::with_capacity(2 + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.push(*id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts a sealed contact with whichever key sealed it.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, ContactError> {
        if sealed.len() < 2 + NONCE_LEN || sealed[0] != VERSION {
            return Err(ContactError::Malformed);
        }
        let id = sealed[1];
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| *k == id)
            .ok_or(ContactError::UnknownKey(id))?;
        let nonce = XNonce::from_slice(&sealed[2..2 + NONCE_LEN]);
        cipher
            .decrypt(nonce, &sealed[2 + NONCE_LEN..])
            .map_err(|_| ContactError::Authentication)
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "0000000000000000000000000000000000000000000000000000000000000001";
    const KEY_B: &str = "00000000000000000000000000000000000000000000000000000000000000ff";

    #[test]
    fn sealed_contact_holds_no_plaintext_and_opens() {
        let ring = ContactKeyring::parse(&format!("1 {KEY_A}\n")).expect("keyring");
        let sealed = ring.seal(b"+33 6 12 34 56 78").expect("seal");
        assert!(!sealed.windows(5).any(|w| w == b"12 34"));
        assert_eq!(ring.open(&sealed).expect("open"), b"+33 6 12 34 56 78");
    }

    #[test]
    fn rotated_keyring_opens_old_contacts_and_seals_with_new_key() {
        let old = ContactKeyring::parse(&format!("1 {KEY_A}")).expect("old");
        let sealed_old = old.seal(b"alice@example.com").expect("seal");
        let rotated =
            ContactKeyring::parse(&format!("# new first\n2 {KEY_B}\n1 {KEY_A}")).expect("rotated");
        assert_eq!(
            rotated.open(&sealed_old).expect("open old"),
            b"alice@example.com"
        );
        assert_eq!(rotated.seal(b"x").expect("seal")[1], 2);
    }

    #[test]
    fn tampering_and_unknown_keys_are_refused() {
        let ring = ContactKeyring::parse(&format!("1 {KEY_A}")).expect("ring");
        let mut sealed = ring.seal(b"bob").expect("seal");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(matches!(
            ring.open(&sealed),
            Err(ContactError::Authentication)
        ));
        let other = ContactKeyring::parse(&format!("7 {KEY_B}")).expect("other");
        let s2 = other.seal(b"bob").expect("seal");
        assert!(matches!(ring.open(&s2), Err(ContactError::UnknownKey(7))));
        assert!(matches!(ring.open(&[1, 2]), Err(ContactError::Malformed)));
    }

    #[test]
    fn bad_key_files_name_the_line() {
        let e = ContactKeyring::parse("# c\n1 abcd").expect_err("short key");
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(matches!(
            ContactKeyring::parse("# only comments"),
            Err(ContactError::NoKey)
        ));
        let dup = format!("1 {KEY_A}\n1 {KEY_B}");
        assert!(ContactKeyring::parse(&dup)
            .expect_err("dup")
            .to_string()
            .contains("duplicate"));
    }
}
