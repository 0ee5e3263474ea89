//! The replicated state machine: committed entries applied to a `ShardState`,
//! with snapshots written crash-safely to disk (write, fsync, rename, fsync dir)
//! and checksummed, so a damaged snapshot is refused rather than installed.
//!
//! The state itself lives in memory; on restart it is rebuilt from the newest
//! snapshot plus the committed log (openraft re-applies up to the saved
//! committed index before the node serves), so a restarted node never serves
//! state older than it acknowledged.

use std::io::{self, Cursor, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use roomkeeper_order_state::{
    Command, InvariantViolation, Outcome, ShardState, ShardStateV1, StateSummary,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::metrics::NodeMetrics;
use crate::raft_types::{
    BatchOutcome, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};

/// Format 2: the state carries rooms' live windows. Format 1 (before them)
/// is still read, through `ShardStateV1`.
const SNAPSHOT_MAGIC: &[u8; 8] = b"RKSNAP02";
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"RKSNAP01";
const SNAPSHOT_FILE: &str = "snapshot.bin";

#[derive(Deserialize)]
struct SnapshotBody {
    meta: SnapshotMeta,
    state: ShardState,
}

#[derive(Deserialize)]
struct SnapshotBodyV1 {
    meta: SnapshotMeta,
    state: ShardStateV1,
}

/// The same shape as `SnapshotBody`, borrowed, so a snapshot is encoded straight
/// from the live state without a copy of it.
#[derive(Serialize)]
struct SnapshotBodyRef<'a> {
    meta: &'a SnapshotMeta,
    state: &'a ShardState,
}

struct Data {
    state: ShardState,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    snapshot_meta: Option<SnapshotMeta>,
}

struct Shared {
    data: RwLock<Data>,
    /// Held by whoever writes or reads the snapshot file, from its temp file
    /// to `snapshot_meta`: a snapshot being built and one being installed
    /// (openraft runs the builder as its own task) must not share the temp
    /// file, nor leave the file and `snapshot_meta` naming different ones.
    snapshot_file: tokio::sync::Mutex<()>,
    dir: PathBuf,
    metrics: Option<NodeMetrics>,
    applied_tx: watch::Sender<u64>,
}

/// The state machine handle; clones share one state.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

/// How often a writer looks at the state lock again while a reader holds it.
const LOCK_RETRY: Duration = Duration::from_millis(1);

/// Errors loading a persisted snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("snapshot is damaged: {0}")]
    Damaged(String),
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Writes a snapshot to `w`: magic, CRC32 of the body, body length, body.
///
/// The body streams through a 256 KiB buffer and is never whole in memory: a
/// million orders encode to ~130 MB, and a buffer that size (grown by
/// doubling, then copied behind the header) cost the node twice that in
/// resident memory and most of the encoding's time in page faults, while
/// applying waited (D55).
fn write_snapshot<W: Write + Seek>(w: &mut W, body: &SnapshotBodyRef<'_>) -> io::Result<()> {
    // Measuring is a pass without output, a few percent of the encoding.
    let len = postcard::serialize_with_flavor::<_, _, usize>(
        body,
        postcard::ser_flavors::Size::default(),
    )
    .map_err(io_err)?;
    let start = w.stream_position()?;
    w.write_all(SNAPSHOT_MAGIC)?;
    w.write_all(&[0; 4])?;
    w.write_all(&(len as u64).to_be_bytes())?;
    let mut sink = SnapshotSink {
        w: &mut *w,
        buf: Vec::with_capacity(SINK_BUFFER),
        crc: crc32fast::Hasher::new(),
        written: 0,
        error: None,
    };
    let streamed = postcard::serialize_with_flavor::<_, _, ()>(body, SinkFlavor(&mut sink))
        .and_then(|()| {
            sink.flush()
                .map_err(|_| postcard::Error::SerializeBufferFull)
        });
    if let Some(e) = sink.error.take() {
        return Err(e);
    }
    streamed.map_err(io_err)?;
    if sink.written != len {
        return Err(io::Error::other(format!(
            "snapshot body: measured {len} bytes, wrote {}",
            sink.written
        )));
    }
    let crc = sink.crc.finalize();
    w.seek(SeekFrom::Start(start + 8))?;
    w.write_all(&crc.to_be_bytes())?;
    w.seek(SeekFrom::Start(start + 20 + len as u64))?;
    Ok(())
}

/// Encodes a snapshot in memory (tests, and the format's own checks).
#[cfg(test)]
fn encode_snapshot(body: &SnapshotBodyRef<'_>) -> io::Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    write_snapshot(&mut out, body)?;
    Ok(out.into_inner())
}

const SINK_BUFFER: usize = 256 * 1024;

/// Where a streamed snapshot body goes: checksummed, counted, buffered.
struct SnapshotSink<'w, W> {
    w: &'w mut W,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    written: usize,
    /// The I/O error that stopped the encoding (postcard's own error type
    /// cannot carry it).
    error: Option<io::Error>,
}

impl<W: Write> SnapshotSink<'_, W> {
    fn flush(&mut self) -> Result<(), ()> {
        if self.error.is_some() {
            return Err(());
        }
        self.crc.update(&self.buf);
        self.written += self.buf.len();
        let r = self.w.write_all(&self.buf);
        self.buf.clear();
        r.map_err(|e| self.error = Some(e))
    }
}

struct SinkFlavor<'s, 'w, W>(&'s mut SnapshotSink<'w, W>);

impl<W: Write> postcard::ser_flavors::Flavor for SinkFlavor<'_, '_, W> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.0.buf.len() == SINK_BUFFER {
            self.0
                .flush()
                .map_err(|()| postcard::Error::SerializeBufferFull)?;
        }
        self.0.buf.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if self.0.buf.len() + bytes.len() > SINK_BUFFER {
            self.0
                .flush()
                .map_err(|()| postcard::Error::SerializeBufferFull)?;
        }
        // (Nothing in a state is longer than the buffer: a contact is at most
        // 1 KiB. Were it, the buffer would grow for it.)
        self.0.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotBody, SnapshotError> {
    let v1 = bytes.get(..8) == Some(SNAPSHOT_MAGIC_V1.as_slice());
    if bytes.len() < 20 || (&bytes[..8] != SNAPSHOT_MAGIC && !v1) {
        return Err(SnapshotError::Damaged("bad magic or too short".into()));
    }
    let crc = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[12..20]);
    let len = u64::from_be_bytes(len8) as usize;
    let payload = bytes
        .get(20..20usize.saturating_add(len))
        .filter(|p| p.len() == len)
        .ok_or_else(|| {
            SnapshotError::Damaged(format!("body shorter than its {len}-byte header"))
        })?;
    if crc32fast::hash(payload) != crc {
        return Err(SnapshotError::Damaged("checksum mismatch".into()));
    }
    if v1 {
        let b: SnapshotBodyV1 =
            postcard::from_bytes(payload).map_err(|e| SnapshotError::Damaged(e.to_string()))?;
        return Ok(SnapshotBody {
            meta: b.meta,
            state: b.state.0,
        });
    }
    postcard::from_bytes(payload).map_err(|e| SnapshotError::Damaged(e.to_string()))
}

fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let f = create_temp(dir, name)?;
    let mut f = io::BufWriter::new(f);
    f.write_all(bytes)?;
    publish(
        dir,
        name,
        f.into_inner().map_err(io::IntoInnerError::into_error)?,
    )
}

/// `dir/name.tmp`, created empty: the first half of a crash-safe write.
fn create_temp(dir: &Path, name: &str) -> io::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    std::fs::File::create(dir.join(format!("{name}.tmp")))
}

/// The second half: fsync the written temp file, rename it over `name`,
/// fsync the directory.
fn publish(dir: &Path, name: &str, f: std::fs::File) -> io::Result<()> {
    f.sync_all()?;
    drop(f);
    std::fs::rename(dir.join(format!("{name}.tmp")), dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

impl StateMachine {
    /// Opens the state machine, restoring the newest snapshot in `dir` if any.
    pub fn open(dir: &Path, metrics: Option<NodeMetrics>) -> Result<Self, SnapshotError> {
        let path = dir.join(SNAPSHOT_FILE);
        let mut data = Data {
            state: ShardState::new(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot_meta: None,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let body = decode_snapshot(&bytes)?;
                data.state = body.state;
                data.last_applied = body.meta.last_log_id;
                data.membership = body.meta.last_membership.clone();
                data.snapshot_meta = Some(body.meta);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SnapshotError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
        let applied = data.last_applied.map_or(0, |l| l.index);
        let (applied_tx, _) = watch::channel(applied);
        Ok(Self {
            shared: Arc::new(Shared {
                data: RwLock::new(data),
                snapshot_file: tokio::sync::Mutex::new(()),
                dir: dir.to_path_buf(),
                metrics,
                applied_tx,
            }),
        })
    }

    /// The state's write lock, waited for without blocking the async worker:
    /// a snapshot encoding or an invariant audit holds the read lock for a
    /// fraction of a second per million orders, and a worker blocked on the
    /// lock meanwhile could leave the runtime with none to run the Raft core's
    /// heartbeats (the followers then elect someone else). No writer queues on
    /// the lock, so the readers of the order path are never held up either.
    async fn write_data(&self) -> io::Result<RwLockWriteGuard<'_, Data>> {
        loop {
            match self.shared.data.try_write() {
                Ok(d) => return Ok(d),
                Err(TryLockError::Poisoned(_)) => {
                    return Err(io::Error::other("state machine lock poisoned"))
                }
                Err(TryLockError::WouldBlock) => {}
            }
            tokio::time::sleep(LOCK_RETRY).await;
        }
    }

    /// Runs a read against the current state.
    pub fn read<T>(&self, f: impl FnOnce(&ShardState) -> T) -> T {
        match self.shared.data.read() {
            Ok(d) => f(&d.state),
            Err(poisoned) => f(&poisoned.into_inner().state),
        }
    }

    /// Checks the state's invariants (stock never below zero, stock accounted
    /// for by live orders, per-buyer counters) under the read lock, and records
    /// the verdict and the time the lock was held in `metrics`. The
    /// `/admin/invariants` endpoint and the node's periodic audit both use it,
    /// so `roomkeeper_state_invariant_violated` reflects the newest audit.
    pub fn audit(&self, metrics: &NodeMetrics) -> (Result<(), InvariantViolation>, StateSummary) {
        let started = Instant::now();
        let (result, summary) = self.read(|s| (s.check_invariants(), s.summary()));
        metrics
            .state_invariant_audit_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics
            .state_invariant_violated
            .set(i64::from(result.is_err()));
        if let Err(v) = &result {
            tracing::error!(violation = %v, "state machine invariant violated");
        }
        (result, summary)
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        *self.shared.applied_tx.borrow()
    }

    /// Watches the applied index (for reads that wait to catch up).
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.shared.applied_tx.subscribe()
    }

    fn snapshot_path(&self) -> PathBuf {
        self.shared.dir.join(SNAPSHOT_FILE)
    }

    /// Applies a batch. Only the leader has a client waiting (`answer`); other
    /// replicas change their state the same way without building the answers.
    fn apply_entry_payload(
        d: &mut Data,
        at_ms: u64,
        commands: &[Command],
        m: Option<&NodeMetrics>,
        answer: bool,
    ) -> BatchOutcome {
        if !answer {
            for command in commands {
                let label = d.state.apply_unanswered(at_ms, command);
                if let (Some(m), Command::PlaceOrder { .. }) = (m, command) {
                    m.orders_total.with_label_values(&[label]).inc();
                }
            }
            return BatchOutcome::default();
        }
        let mut outcomes = Vec::with_capacity(commands.len());
        for command in commands {
            let outcome = d.state.apply_command(at_ms, command);
            if let (Some(m), Command::PlaceOrder { .. }) = (m, command) {
                let label = match &outcome {
                    Outcome::Order { replayed: true, .. } => "replayed",
                    other => other.label(),
                };
                m.orders_total.with_label_values(&[label]).inc();
            }
            outcomes.push(outcome);
        }
        BatchOutcome { outcomes }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        // Encoding reads the live state under the read lock, on a blocking
        // thread: applying waits for the encoding (a fraction of a second per
        // million orders, see `write_data`) instead of the node holding a
        // second copy of the state in memory, and the async workers keep
        // running the Raft core meanwhile.
        // The encoding streams into the file (D55); the fsyncs come after the
        // lock is released.
        let _file = self.shared.snapshot_file.lock().await;
        let shared = self.shared.clone();
        let meta = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let file = create_temp(&shared.dir, SNAPSHOT_FILE)?;
            let mut out = io::BufWriter::with_capacity(SINK_BUFFER, file);
            let meta = {
                let d = shared
                    .data
                    .read()
                    .map_err(|_| io::Error::other("state machine lock poisoned"))?;
                let meta = SnapshotMeta {
                    last_log_id: d.last_applied,
                    last_membership: d.membership.clone(),
                };
                write_snapshot(
                    &mut out,
                    &SnapshotBodyRef {
                        meta: &meta,
                        state: &d.state,
                    },
                )?;
                meta
            };
            let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
            publish(&shared.dir, SNAPSHOT_FILE, file)?;
            Ok(meta)
        })
        .await
        .map_err(io::Error::other)??;
        self.write_data().await?.snapshot_meta = Some(meta.clone());
        if let Some(m) = &self.shared.metrics {
            m.raft_snapshot_index
                .set(meta.last_log_id.map_or(0, |l| l.index) as i64);
        }
        // openraft keeps only the meta of a snapshot it had built (its state
        // machine worker, and its start-up check); whoever needs the data
        // reads it from the file through `get_current_snapshot`. Holding the
        // ~130 MB here would only be freed again.
        Ok(openraft::Snapshot {
            meta,
            snapshot: Cursor::new(Vec::new()),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let d = self
            .shared
            .data
            .read()
            .map_err(|_| io::Error::other("state machine lock poisoned"))?;
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: futures_util::Stream<Item = io::Result<EntryResponder<TypeConfig>>>
            + Unpin
            + OptionalSend,
    {
        let started = Instant::now();
        let mut last = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = {
                let mut d = self.write_data().await?;
                d.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => BatchOutcome::default(),
                    EntryPayload::Normal(batch) => Self::apply_entry_payload(
                        &mut d,
                        batch.at_ms,
                        &batch.commands,
                        self.shared.metrics.as_ref(),
                        responder.is_some(),
                    ),
                    EntryPayload::Membership(m) => {
                        d.membership = StoredMembership::new(Some(entry.log_id), m);
                        BatchOutcome::default()
                    }
                }
            };
            last = Some(entry.log_id.index);
            if let Some(r) = responder {
                r.send(response);
            }
        }
        if let Some(idx) = last {
            self.shared.applied_tx.send_replace(idx);
            if let Some(m) = &self.shared.metrics {
                m.apply_seconds.observe(started.elapsed().as_secs_f64());
                m.raft_applied_index.set(idx as i64);
                let (orders, paused) = self.read(|s| (s.order_count(), s.sales_paused()));
                m.state_orders.set(orders as i64);
                m.sales_paused.set(i64::from(paused));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        let _file = self.shared.snapshot_file.lock().await;
        let bytes = snapshot.into_inner();
        let dir = self.shared.dir.clone();
        // Decoding a million orders is CPU work for a while: off the async
        // workers, like the encoding (D53). A damaged snapshot is refused
        // before anything is written.
        let body = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let body = decode_snapshot(&bytes).map_err(io_err)?;
            write_durably(&dir, SNAPSHOT_FILE, &bytes)?;
            Ok(body)
        })
        .await
        .map_err(io::Error::other)??;
        let idx = meta.last_log_id.map_or(0, |l| l.index);
        let replaced = {
            let mut d = self.write_data().await?;
            d.last_applied = meta.last_log_id;
            d.membership = meta.last_membership.clone();
            d.snapshot_meta = Some(meta.clone());
            std::mem::replace(&mut d.state, body.state)
        };
        self.shared.applied_tx.send_replace(idx);
        // The state replaced may be as large: freed off the workers and the lock.
        tokio::task::spawn_blocking(move || drop(replaced));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let _file = self.shared.snapshot_file.lock().await;
        let meta = match self.shared.data.read() {
            Ok(d) => d.snapshot_meta.clone(),
            Err(_) => return Err(io::Error::other("state machine lock poisoned")),
        };
        let Some(meta) = meta else { return Ok(None) };
        let path = self.snapshot_path();
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(io::Error::other)??;
        Ok(Some(openraft::Snapshot {
            meta,
            snapshot: Cursor::new(bytes),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_snapshots_are_refused() {
        let (meta, state) = (SnapshotMeta::default(), ShardState::new());
        let good = encode_snapshot(&SnapshotBodyRef {
            meta: &meta,
            state: &state,
        })
        .expect("encode");
        assert!(decode_snapshot(&good).is_ok());
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(
            decode_snapshot(&flipped),
            Err(SnapshotError::Damaged(_))
        ));
        assert!(decode_snapshot(&good[..good.len() - 1]).is_err());
        assert!(decode_snapshot(b"garbage").is_err());
    }

    #[test]
    fn a_snapshot_larger_than_the_stream_buffer_reads_back_and_write_errors_surface() {
        // Contacts of 300 bytes: the body fills the buffer many times over.
        let state = state_with_orders(4_000);
        assert_eq!(state.order_count(), 4_000);
        let meta = SnapshotMeta::default();
        let body = SnapshotBodyRef {
            meta: &meta,
            state: &state,
        };
        let bytes = encode_snapshot(&body).expect("encode");
        assert!(bytes.len() > 4 * SINK_BUFFER, "{} bytes", bytes.len());
        // The same bytes the whole-buffer encoding wrote.
        let payload = postcard::to_allocvec(&body).expect("whole");
        assert_eq!(&bytes[20..], payload.as_slice());
        assert_eq!(&bytes[8..12], crc32fast::hash(&payload).to_be_bytes());
        let back = decode_snapshot(&bytes).expect("decode");
        assert_eq!(back.state, state);
        back.state.check_invariants().expect("invariants");

        /// A disk that fills up after `left` bytes.
        struct Full {
            inner: Cursor<Vec<u8>>,
            left: usize,
        }
        impl Write for Full {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if b.len() > self.left {
                    return Err(io::Error::other("no space left on device"));
                }
                self.left -= b.len();
                self.inner.write(b)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl Seek for Full {
            fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
                self.inner.seek(to)
            }
        }
        for left in [10, SINK_BUFFER + 100, bytes.len() - 1] {
            let mut full = Full {
                inner: Cursor::new(Vec::new()),
                left,
            };
            let err = write_snapshot(&mut full, &body).expect_err("the disk is full");
            assert!(err.to_string().contains("no space left"), "{left}: {err}");
        }
    }

    fn state_with_orders(n: u32) -> ShardState {
        let mut state = ShardState::new();
        let at = |command| roomkeeper_order_state::Stamped { at_ms: 1, command };
        state.apply(&at(Command::UpsertRoom {
            room: "r".into(),
            title: String::new(),
            home_region: "eu".into(),
            state: roomkeeper_order_state::RoomState::Live,
        }));
        state.apply(&at(Command::UpsertListing {
            room: "r".into(),
            sku: "s".into(),
            price_cents: 1,
            stock_total: 1_000_000,
            per_buyer_limit: 1_000_000,
            state: roomkeeper_order_state::ListingState::Open,
        }));
        for i in 0..n {
            state.apply(&at(Command::PlaceOrder {
                room: "r".into(),
                sku: "s".into(),
                buyer: format!("b{}", i % 97),
                qty: 1,
                idempotency_key: format!("k{i}"),
                contact: vec![i as u8; 300],
            }));
        }
        state
    }

    #[test]
    fn a_snapshot_built_while_another_is_installed_leaves_file_and_meta_agreeing() {
        // openraft builds snapshots in a task of their own, so a follower may
        // build one while the leader's is being installed.
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = StateMachine::open(dir.path(), None).expect("open");
        sm.shared.data.write().expect("lock").state = state_with_orders(6_000);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let installed = state_with_orders(5_000);
        rt.block_on(async {
            for i in 1..=12u64 {
                let meta = SnapshotMeta {
                    last_log_id: Some(LogId::new(openraft::vote::RaftLeaderId::new(1, 1), i * 100)),
                    last_membership: StoredMembership::default(),
                };
                let bytes = encode_snapshot(&SnapshotBodyRef {
                    meta: &meta,
                    state: &installed,
                })
                .expect("encode");
                let (mut builder, mut installer) = (sm.clone(), sm.clone());
                let build = tokio::spawn(async move { builder.build_snapshot().await.map(|_| ()) });
                let install = tokio::spawn(async move {
                    installer.install_snapshot(&meta, Cursor::new(bytes)).await
                });
                build.await.expect("join").expect("build");
                install.await.expect("join").expect("install");
                let current = sm
                    .clone()
                    .get_current_snapshot()
                    .await
                    .expect("read")
                    .expect("a snapshot");
                let served = decode_snapshot(current.snapshot.get_ref()).expect("decodes");
                assert_eq!(served.meta, current.meta, "round {i}: file and meta differ");
                let on_disk = std::fs::read(dir.path().join(SNAPSHOT_FILE)).expect("file");
                let on_disk = decode_snapshot(&on_disk).expect("the file decodes");
                assert_eq!(on_disk.meta, current.meta, "round {i}");
            }
        });
    }

    #[test]
    fn format_1_snapshots_are_still_read() {
        let mut state = ShardState::new();
        state.apply(&roomkeeper_order_state::Stamped {
            at_ms: 1,
            command: Command::UpsertRoom {
                room: "r1".into(),
                title: String::new(),
                home_region: "eu".into(),
                state: roomkeeper_order_state::RoomState::Live,
            },
        });
        let meta = SnapshotMeta::default();
        let v2 = encode_snapshot(&SnapshotBodyRef {
            meta: &meta,
            state: &state,
        })
        .expect("encode");
        // A format-1 file: the same body without the trailing (empty) live
        // windows, under the old magic, with its own length and checksum.
        let payload = &v2[20..v2.len() - 1];
        let mut v1 = SNAPSHOT_MAGIC_V1.to_vec();
        v1.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
        v1.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        v1.extend_from_slice(payload);
        let back = decode_snapshot(&v1).expect("format 1 decodes");
        assert_eq!(back.state, state);
        assert!(back.state.room("r1").expect("room").live_windows.is_empty());
        // The format-1 body read as format 2 is refused, not misread.
        let mut wrong = v1.clone();
        wrong[..8].copy_from_slice(SNAPSHOT_MAGIC);
        assert!(decode_snapshot(&wrong).is_err());
    }

    /// A reader holding the state (a snapshot encoding, an audit) must not
    /// take the async worker of the task that wants to apply: on a runtime
    /// with one worker, other tasks (the Raft core's heartbeats) keep running
    /// while the writer waits, and the writer gets the lock once it is free.
    #[test]
    fn a_writer_waits_for_a_long_reader_without_blocking_its_worker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = StateMachine::open(dir.path(), None).expect("open");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let shared = sm.shared.clone();
        let reader = std::thread::spawn(move || {
            let guard = shared.data.read().expect("read lock");
            held_tx.send(()).expect("signal");
            std::thread::sleep(Duration::from_millis(300));
            drop(guard);
        });
        held_rx.recv().expect("the reader holds the lock");
        let (ticks, waited) = rt.block_on(async {
            let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let counting = ticks.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    counting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
            let started = Instant::now();
            sm.write_data().await.expect("write lock").last_applied = None;
            let waited = started.elapsed();
            ticker.abort();
            (ticks.load(std::sync::atomic::Ordering::Relaxed), waited)
        });
        reader.join().expect("reader thread");
        assert!(
            waited >= Duration::from_millis(250),
            "the writer did not wait for the reader: {waited:?}"
        );
        assert!(
            ticks >= 10,
            "the runtime's only worker was blocked while the writer waited: {ticks} ticks in {waited:?}"
        );
    }
}
