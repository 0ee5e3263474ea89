//! Buyer contact sealing: contact data is encrypted on the node that receives the
//! order, before the command enters the Raft log, so logs, snapshots and backups
//! never hold it in plain text.
//!
//! Key file format (one key per line, `#` comments allowed):
//! `<key-id 0-255> <64 hex chars> [staged|retired]`.
//! - **The newest key seals**: the key with the highest id marked neither
//!   `staged` nor `retired`. Line order does not matter; ids are never reused.
//! - **Every key opens**, whatever its mark, so contacts sealed under an older
//!   key stay readable.
//! - `staged` marks a key on its way in: it opens but does not seal yet, so
//!   every node can hold it before any node seals with it (a leader must open
//!   what a follower sealed).
//! - `retired` marks a key on its way out: it never seals, and
//!   `roomkeeper contact-keys check` fails while any record still uses it.
//!
//! Rotation (docs/security.md, docs/decisions.md "Contact key rotation"): add
//! the new key with a higher id as `staged` on every node; then drop `staged`
//! and mark the old one `retired` (nodes reload the file on change); run
//! `roomkeeper contact-keys reseal`, then `check`, then remove the old line.
//!
//! Sealed format: `[version=1][key id][24-byte nonce][ciphertext+tag]`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

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
    #[error("contact key file marks every key staged or retired: one must seal")]
    NoSealingKey,
    #[error("{records} stored contacts are sealed under key id {id}, which the new key file drops (re-seal first)")]
    KeyInUse { id: u8, records: u64 },
}

/// One key of a keyring, as reports show it (never the key itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyInfo {
    pub id: u8,
    pub retired: bool,
    pub staged: bool,
}

/// A key's mark in the key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Active,
    Staged,
    Retired,
}

/// The keys a node seals and opens contacts with.
pub struct ContactKeyring {
    /// Every key, by id, and its mark.
    keys: Vec<(u8, Mark, XChaCha20Poly1305)>,
    /// The id of the key that seals (the newest neither staged nor retired).
    sealing: u8,
}

impl std::fmt::Debug for ContactKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactKeyring")
            .field("keys", &self.key_infos())
            .field("sealing", &self.sealing)
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
            let mark = match (parts.next(), parts.next()) {
                (None, _) => Mark::Active,
                (Some("staged"), None) => Mark::Staged,
                (Some("retired"), None) => Mark::Retired,
                _ => {
                    return Err(bad(
                        "after the key only one word, `staged` or `retired`, may follow",
                    ))
                }
            };
            if keys.iter().any(|(k, _, _)| *k == id) {
                return Err(bad("duplicate key id"));
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
                .map_err(|_| bad("key must be 32 bytes"))?;
            keys.push((id, mark, cipher));
        }
        if keys.is_empty() {
            return Err(ContactError::NoKey);
        }
        keys.sort_by_key(|(id, _, _)| *id);
        let sealing = keys
            .iter()
            .rev()
            .find(|(_, mark, _)| *mark == Mark::Active)
            .map(|(id, _, _)| *id)
            .ok_or(ContactError::NoSealingKey)?;
        Ok(Self { keys, sealing })
    }

    /// The id of the key new contacts are sealed under.
    pub fn sealing_key_id(&self) -> u8 {
        self.sealing
    }

    /// Every key's id and mark, by id.
    pub fn key_infos(&self) -> Vec<KeyInfo> {
        self.keys
            .iter()
            .map(|(id, mark, _)| KeyInfo {
                id: *id,
                retired: *mark == Mark::Retired,
                staged: *mark == Mark::Staged,
            })
            .collect()
    }

    /// Whether this keyring holds key `id` (whatever its mark).
    pub fn holds(&self, id: u8) -> bool {
        self.keys.iter().any(|(k, _, _)| *k == id)
    }

    /// Whether key `id` is held and marked retired.
    pub fn is_retired(&self, id: u8) -> bool {
        self.keys
            .iter()
            .any(|(k, m, _)| *k == id && *m == Mark::Retired)
    }

    /// Opens a sealed contact and seals it again under the sealing key.
    pub fn reseal(&self, sealed: &[u8]) -> Result<Vec<u8>, ContactError> {
        let plain = Wiped(self.open(sealed)?);
        self.seal(&plain.0)
    }

    /// Refuses a new keyring that cannot open every stored contact: every key
    /// id in `in_use` (records per key id) must be held by `self`.
    pub fn check_replaces(&self, in_use: &BTreeMap<u8, u64>) -> Result<(), ContactError> {
        match in_use.iter().find(|(id, n)| **n > 0 && !self.holds(**id)) {
            Some((id, n)) => Err(ContactError::KeyInUse {
                id: *id,
                records: *n,
            }),
            None => Ok(()),
        }
    }

    /// A keyring with one key derived from a fixed seed: for tests and the demo only.
    pub fn for_tests(seed: u8) -> Self {
        let key = [seed; 32];
        match XChaCha20Poly1305::new_from_slice(&key) {
            Ok(c) => Self {
                keys: vec![(0, Mark::Active, c)],
                sealing: 0,
            },
            Err(_) => Self {
                keys: Vec::new(),
                sealing: 0,
            },
        }
    }

    /// Encrypts a contact with the sealing key (the newest neither staged nor retired).
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, ContactError> {
        let (id, _, cipher) = self
            .keys
            .iter()
            .find(|(k, _, _)| *k == self.sealing)
            .ok_or(ContactError::NoKey)?;
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
        let (_, _, cipher) = self
            .keys
            .iter()
            .find(|(k, _, _)| *k == id)
            .ok_or(ContactError::UnknownKey(id))?;
        let nonce = XNonce::from_slice(&sealed[2..2 + NONCE_LEN]);
        cipher
            .decrypt(nonce, &sealed[2 + NONCE_LEN..])
            .map_err(|_| ContactError::Authentication)
    }
}

/// A plaintext overwritten before it is freed (best effort: `black_box`
/// keeps the stores from being optimized away).
struct Wiped(Vec<u8>);

impl Drop for Wiped {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            *std::hint::black_box(b) = 0;
        }
    }
}

/// The keyring a node uses now; replaced whole when the key file changes
/// (`node.rs` polls it), so a request sees one keyring from start to end.
#[derive(Debug)]
pub struct ContactKeys {
    current: RwLock<Arc<ContactKeyring>>,
}

impl ContactKeys {
    pub fn new(ring: ContactKeyring) -> Self {
        Self {
            current: RwLock::new(Arc::new(ring)),
        }
    }

    /// The keyring in use now.
    pub fn get(&self) -> Arc<ContactKeyring> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts a new keyring in use.
    pub fn replace(&self, ring: ContactKeyring) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(ring);
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
    const KEY_C: &str = "0000000000000000000000000000000000000000000000000000000000000abc";

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
        // The newest (highest id) key seals whatever the line order.
        for text in [
            format!("# new first\n2 {KEY_B}\n1 {KEY_A}"),
            format!("1 {KEY_A} retired\n2 {KEY_B}\n"),
        ] {
            let rotated = ContactKeyring::parse(&text).expect("rotated");
            assert_eq!(rotated.sealing_key_id(), 2);
            assert_eq!(
                rotated.open(&sealed_old).expect("open old"),
                b"alice@example.com"
            );
            assert_eq!(rotated.seal(b"x").expect("seal")[1], 2);
            let moved = rotated.reseal(&sealed_old).expect("reseal");
            assert_eq!(moved[1], 2);
            assert_eq!(rotated.open(&moved).expect("open"), b"alice@example.com");
        }
    }

    #[test]
    fn staged_and_retired_keys_open_but_never_seal() {
        // The highest id is retired, the next staged: key 1 seals.
        let ring =
            ContactKeyring::parse(&format!("1 {KEY_A}\n5 {KEY_C} staged\n9 {KEY_B} retired"))
                .expect("ring");
        assert_eq!(ring.sealing_key_id(), 1);
        assert!(ring.is_retired(9) && !ring.is_retired(1) && !ring.is_retired(5));
        let info = |id, retired, staged| KeyInfo {
            id,
            retired,
            staged,
        };
        assert_eq!(
            ring.key_infos(),
            vec![
                info(1, false, false),
                info(5, false, true),
                info(9, true, false)
            ]
        );
        // A staged key opens what a node that already seals with it sealed.
        let ahead = ContactKeyring::parse(&format!("1 {KEY_A}\n5 {KEY_C}")).expect("ahead");
        assert_eq!(ahead.sealing_key_id(), 5);
        let sealed = ahead.seal(b"carol").expect("seal");
        assert_eq!(ring.open(&sealed).expect("open"), b"carol");
        for text in [format!("1 {KEY_A} retired"), format!("1 {KEY_A} staged")] {
            assert!(matches!(
                ContactKeyring::parse(&text),
                Err(ContactError::NoSealingKey)
            ));
        }
        for bad in [
            format!("1 {KEY_A} old"),
            format!("1 {KEY_A} staged retired"),
        ] {
            assert!(ContactKeyring::parse(&bad)
                .expect_err("unknown word")
                .to_string()
                .contains("line 1"));
        }
    }

    #[test]
    fn a_keyring_that_drops_a_key_in_use_is_refused() {
        let only_b = ContactKeyring::parse(&format!("2 {KEY_B}")).expect("ring");
        let in_use = BTreeMap::from([(1, 3), (2, 5)]);
        assert!(matches!(
            only_b.check_replaces(&in_use),
            Err(ContactError::KeyInUse { id: 1, records: 3 })
        ));
        assert!(only_b.check_replaces(&BTreeMap::from([(2, 5)])).is_ok());
        let shared = ContactKeys::new(ContactKeyring::parse(&format!("1 {KEY_A}")).expect("a"));
        let before = shared.get();
        shared.replace(only_b);
        assert_eq!(
            before.sealing_key_id(),
            1,
            "a holder keeps the ring it took"
        );
        assert_eq!(shared.get().sealing_key_id(), 2);
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
