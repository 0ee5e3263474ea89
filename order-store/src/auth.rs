//! Client credentials: scoped bearer tokens.
//!
//! A token file (`--client-tokens-file`, a mounted Secret in Kubernetes) holds
//! one token per line, `#` comments allowed:
//!
//! ```text
//! # name        secret                   rooms              verbs
//! storefront-a  sha256:<64 hex chars>    room-a,live-*      order,read_contact
//! catalog       sha256:<64 hex chars>    *                  manage_listings
//! ```
//!
//! - `name`: `[A-Za-z0-9._-]`, 1–64 bytes, unique. It is what logs, metrics
//!   and forwarded writes name, never the secret.
//! - secret: only its SHA-256 (`roomkeeper client-token-hash` prints it), so
//!   the file does not hold the credential; the presented bearer token is
//!   hashed and compared in constant time against every entry.
//! - rooms: comma-separated; `*` is every room, `prefix*` every room starting
//!   with `prefix`, anything else one room.
//! - verbs: comma-separated from `order` (place, cancel, pay, read orders),
//!   `manage_listings` (create and change rooms and listings) and
//!   `read_contact` (the buyer's contact in plain text); `*` is all three.
//!
//! Reading a room or its listings needs any verb on that room. The single
//! `--client-token` flag still works: it is the token named `client-token`
//! with every scope. With neither, the API is open (every caller is
//! `anonymous` with every scope) and the node warns at start.
//!
//! The table is parsed once at start; a request costs one SHA-256 of the
//! presented token and a comparison per entry, and no allocation.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The name the single `--client-token` flag's token gets.
pub const FLAG_TOKEN_NAME: &str = "client-token";
/// The name every caller gets when no token is configured.
pub const ANONYMOUS: &str = "anonymous";
/// Longest token name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// Place, cancel and pay orders; read orders.
    Order,
    /// Create and change rooms and listings.
    ManageListings,
    /// Read a buyer's contact in plain text.
    ReadContact,
}

impl Verb {
    pub const ALL: [Verb; 3] = [Verb::Order, Verb::ManageListings, Verb::ReadContact];

    /// The name in token files and in `forbidden` refusals.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Order => "order",
            Verb::ManageListings => "manage_listings",
            Verb::ReadContact => "read_contact",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Verb::Order => 1,
            Verb::ManageListings => 2,
            Verb::ReadContact => 4,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Verb::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A set of verbs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verbs(u8);

impl Verbs {
    pub const ALL: Verbs = Verbs(7);

    pub fn contains(self, v: Verb) -> bool {
        self.0 & v.bit() != 0
    }

    pub fn with(self, v: Verb) -> Self {
        Verbs(self.0 | v.bit())
    }

    pub fn is_empty(self) -> bool {
        self.0 & Self::ALL.0 == 0
    }
}

/// Which rooms a token reaches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomPattern {
    Any,
    Exact(String),
    Prefix(String),
}

impl RoomPattern {
    fn matches(&self, room: &str) -> bool {
        match self {
            RoomPattern::Any => true,
            RoomPattern::Exact(r) => r == room,
            RoomPattern::Prefix(p) => room.starts_with(p.as_str()),
        }
    }
}

/// Rooms and verbs of a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub rooms: Vec<RoomPattern>,
    pub verbs: Verbs,
}

impl Scope {
    /// Every verb in every room.
    pub fn all() -> Self {
        Self {
            rooms: vec![RoomPattern::Any],
            verbs: Verbs::ALL,
        }
    }

    /// A scope from the rooms and verbs columns of a token file.
    pub fn parse(rooms: &str, verbs: &str) -> Result<Self, String> {
        Ok(Self {
            rooms: parse_rooms(rooms)?,
            verbs: parse_verbs(verbs)?,
        })
    }

    /// True when the scope names every room.
    pub fn every_room(&self) -> bool {
        self.rooms.contains(&RoomPattern::Any)
    }

    /// True when the scope reaches `room` (with any verb).
    pub fn covers_room(&self, room: &str) -> bool {
        !self.verbs.is_empty() && self.rooms.iter().any(|r| r.matches(room))
    }

    /// True when the scope allows `verb` in `room`.
    pub fn allows(&self, verb: Verb, room: &str) -> bool {
        self.verbs.contains(verb) && self.rooms.iter().any(|r| r.matches(room))
    }
}

/// An authenticated caller: the token's name and scope (never its secret).
/// Travels with forwarded writes so the leader can check them again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub name: String,
    pub scope: Scope,
}

/// Errors reading a token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read client token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("client token file line {line}: {reason}")]
    BadLine { line: usize, reason: String },
    #[error("client token file holds no token")]
    Empty,
}

struct Entry {
    hash: [u8; 32],
    principal: Arc<Principal>,
}

/// Every client token a node accepts, parsed once at start.
pub struct TokenTable {
    entries: Vec<Entry>,
    /// The caller when no token is configured (`None` when some are).
    anonymous: Option<Arc<Principal>>,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .entries
            .iter()
            .map(|e| e.principal.name.as_str())
            .collect();
        f.debug_struct("TokenTable")
            .field("names", &names)
            .field("open", &self.anonymous.is_some())
            .finish()
    }
}

/// SHA-256 of a token, as stored in token files.
pub fn hash_token(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// `sha256:<hex>` of a token: the secret column of a token file.
pub fn token_file_secret(secret: &[u8]) -> String {
    let mut out = String::from("sha256:");
    for b in hash_token(secret) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn decode_hash(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn parse_rooms(s: &str) -> Result<Vec<RoomPattern>, String> {
    let mut rooms = Vec::new();
    for part in s.split(',') {
        let pattern = match part {
            "" => return Err("empty room in the room list".into()),
            "*" => RoomPattern::Any,
            p => match p.strip_suffix('*') {
                Some(prefix) if prefix.contains('*') => {
                    return Err(format!("room pattern {p:?}: `*` only at the end"))
                }
                Some(prefix) => RoomPattern::Prefix(prefix.to_string()),
                None if p.contains('*') => {
                    return Err(format!("room pattern {p:?}: `*` only at the end"))
                }
                None => RoomPattern::Exact(p.to_string()),
            },
        };
        rooms.push(pattern);
    }
    Ok(rooms)
}

fn parse_verbs(s: &str) -> Result<Verbs, String> {
    if s == "*" {
        return Ok(Verbs::ALL);
    }
    let mut verbs = Verbs::default();
    for part in s.split(',') {
        let v = Verb::parse(part).ok_or_else(|| {
            format!("unknown verb {part:?} (order, manage_listings, read_contact or *)")
        })?;
        verbs = verbs.with(v);
    }
    Ok(verbs)
}

impl TokenTable {
    /// No token: every caller is `anonymous` with every scope.
    pub fn open() -> Self {
        Self {
            entries: Vec::new(),
            anonymous: Some(Arc::new(Principal {
                name: ANONYMOUS.into(),
                scope: Scope::all(),
            })),
        }
    }

    /// Loads a token file (format in the module docs).
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses a token file (format in the module docs).
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut table = Self {
            entries: Vec::new(),
            anonymous: None,
        };
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| TokenFileError::BadLine {
                line: i + 1,
                reason,
            };
            let cols: Vec<&str> = line.split_whitespace().collect();
            let [name, secret, rooms, verbs] = cols[..] else {
                return Err(bad(format!(
                    "expected 4 columns (name, sha256:<hex>, rooms, verbs), got {}",
                    cols.len()
                )));
            };
            if !valid_name(name) {
                return Err(bad(format!(
                    "token name {name:?} must be 1-{MAX_NAME_LEN} of [A-Za-z0-9._-]"
                )));
            }
            if name == FLAG_TOKEN_NAME || name == ANONYMOUS {
                return Err(bad(format!("token name {name:?} is reserved")));
            }
            let hash = decode_hash(secret).ok_or_else(|| {
                bad("secret must be sha256:<64 hex chars> (roomkeeper client-token-hash)".into())
            })?;
            let scope = Scope::parse(rooms, verbs).map_err(&bad)?;
            table.add(hash, name, scope).map_err(bad)?;
        }
        if table.entries.is_empty() {
            return Err(TokenFileError::Empty);
        }
        Ok(table)
    }

    /// Adds the `--client-token` flag's token: every scope, named `client-token`.
    pub fn with_flag_token(mut self, secret: &str) -> Result<Self, String> {
        self.anonymous = None;
        self.add(hash_token(secret.as_bytes()), FLAG_TOKEN_NAME, Scope::all())?;
        Ok(self)
    }

    fn add(&mut self, hash: [u8; 32], name: &str, scope: Scope) -> Result<(), String> {
        if self.entries.iter().any(|e| e.principal.name == name) {
            return Err(format!("duplicate token name {name:?}"));
        }
        if self.entries.iter().any(|e| e.hash == hash) {
            return Err(format!("token {name:?} has the secret of another token"));
        }
        self.entries.push(Entry {
            hash,
            principal: Arc::new(Principal {
                name: name.to_string(),
                scope,
            }),
        });
        Ok(())
    }

    /// Every name a caller can have (the tokens', or `anonymous`).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .map(|e| e.principal.name.as_str())
            .chain(self.anonymous.as_ref().map(|p| p.name.as_str()))
    }

    /// True when no token is configured: the API is open.
    pub fn is_open(&self) -> bool {
        self.anonymous.is_some()
    }

    /// Number of configured tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller a bearer token (the `Authorization` header's value)
    /// identifies, or `None`. Every entry is compared, in constant time.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Option<&Arc<Principal>> {
        self.authenticate_secret(authorization.and_then(|h| h.strip_prefix(b"Bearer ")))
    }

    /// The caller a bare token identifies (the framed protocol's HELLO), or
    /// `None`; with no token configured, anyone, token or not.
    pub fn authenticate_secret(&self, secret: Option<&[u8]>) -> Option<&Arc<Principal>> {
        if let Some(anyone) = &self.anonymous {
            return Some(anyone);
        }
        let secret = secret?;
        let presented = hash_token(secret);
        let mut found = None;
        for e in &self.entries {
            if ct_eq(&e.hash, &presented) {
                found = Some(&e.principal);
            }
        }
        found
    }

    /// The scope this node gives the token named `name` (the leader's check
    /// of a forwarded write); with no token configured, every name has every
    /// scope.
    pub fn scope_of(&self, name: &str) -> Option<&Scope> {
        if let Some(anyone) = &self.anonymous {
            return Some(&anyone.scope);
        }
        self.entries
            .iter()
            .find(|e| e.principal.name == name)
            .map(|e| &e.principal.scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str, secret: &str, rooms: &str, verbs: &str) -> String {
        format!(
            "{name} {} {rooms} {verbs}\n",
            token_file_secret(secret.as_bytes())
        )
    }

    fn auth<'a>(t: &'a TokenTable, secret: &str) -> Option<&'a Arc<Principal>> {
        let header = format!("Bearer {secret}");
        t.authenticate(Some(header.as_bytes()))
    }

    #[test]
    fn tokens_are_found_by_secret_and_scoped_by_room_and_verb() {
        let text = format!(
            "# comment\n\n{}{}",
            line("shop-a", "sa", "room-a,live-*", "order"),
            line("ops", "so", "*", "manage_listings,read_contact"),
        );
        let t = TokenTable::parse(&text).expect("parse");
        assert!(!t.is_open());
        let a = auth(&t, "sa").expect("shop-a");
        assert_eq!(a.name, "shop-a");
        assert!(a.scope.allows(Verb::Order, "room-a"));
        assert!(a.scope.allows(Verb::Order, "live-42"));
        assert!(!a.scope.allows(Verb::Order, "room-b"));
        assert!(!a.scope.allows(Verb::Order, "room-ab"));
        assert!(!a.scope.allows(Verb::ReadContact, "room-a"));
        assert!(!a.scope.allows(Verb::ManageListings, "room-a"));
        assert!(a.scope.covers_room("live-"));
        assert!(!a.scope.covers_room("room-b"));
        let ops = auth(&t, "so").expect("ops");
        assert!(ops.scope.allows(Verb::ReadContact, "anything"));
        assert!(!ops.scope.allows(Verb::Order, "anything"));
        assert!(auth(&t, "sx").is_none());
        assert!(auth(&t, "").is_none());
        assert!(t.authenticate(None).is_none());
        assert!(t.authenticate(Some(b"Basic sa")).is_none());
        assert_eq!(t.scope_of("shop-a"), Some(&a.scope));
        assert_eq!(t.scope_of("nobody"), None);
    }

    #[test]
    fn the_file_holds_only_hashes_and_bad_lines_are_named() {
        let good = line("a", "s", "*", "*");
        assert!(!good.contains(" s "));
        for (text, want) in [
            ("a sha256:00 * order".to_string(), "sha256"),
            ("a plain-secret * order".to_string(), "sha256"),
            (line("a", "s", "*", "buy"), "unknown verb"),
            (line("a", "s", "r*x", "order"), "only at the end"),
            (line("a", "s", "r,,s", "order"), "empty room"),
            (line("a b", "s", "*", "order"), "4 columns"),
            (line("bad/name", "s", "*", "order"), "token name"),
            (line(FLAG_TOKEN_NAME, "s", "*", "order"), "reserved"),
            (
                line("a", "s", "*", "*") + &line("a", "t", "*", "*"),
                "duplicate",
            ),
            (
                line("a", "s", "*", "*") + &line("b", "s", "*", "*"),
                "another token",
            ),
        ] {
            let e = TokenTable::parse(&format!("# first\n{text}")).expect_err(&text);
            assert!(e.to_string().contains(want), "{text}: {e}");
            assert!(e.to_string().contains("line "), "{e}");
        }
        assert!(matches!(
            TokenTable::parse("# nothing"),
            Err(TokenFileError::Empty)
        ));
    }

    #[test]
    fn the_flag_token_has_every_scope_and_open_means_anonymous() {
        let t = TokenTable::parse(&line("shop", "s1", "room-a", "order"))
            .expect("table")
            .with_flag_token("flag")
            .expect("flag");
        let f = auth(&t, "flag").expect("flag token");
        assert_eq!(f.name, FLAG_TOKEN_NAME);
        assert_eq!(f.scope, Scope::all());
        assert!(auth(&t, "s1").is_some());
        let open = TokenTable::open();
        assert!(open.is_open());
        let anyone = open.authenticate(None).expect("anyone");
        assert_eq!(anyone.name, ANONYMOUS);
        assert_eq!(open.scope_of("whoever"), Some(&Scope::all()));
        let only_flag = TokenTable::open().with_flag_token("f").expect("flag");
        assert!(!only_flag.is_open());
        assert!(only_flag.authenticate(None).is_none());
    }
}
