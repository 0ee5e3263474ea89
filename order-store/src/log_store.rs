//! The durable Raft log: openraft's `RaftLogStorage` on `raft-log`.
//!
//! Group commit: every `append` queues its records and a flush request with the
//! openraft callback; raft-log's flush thread writes all requests queued while
//! its previous fsync ran and runs one fsync for the whole batch, then completes
//! every callback in order. Each record carries a CRC32; on open, a torn final
//! record is truncated, and any other damage refuses to open (the node will not
//! serve a log it cannot trust).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use prometheus::Histogram;
use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::codeq::{Decode, Encode};
use raft_log::RaftLog;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::RwLock;

use crate::faults::Faults;
use crate::raft_types::{Entry, LogId, TypeConfig, Vote};

/// Errors opening the log.
#[derive(Debug, thiserror::Error)]
pub enum LogOpenError {
    #[error("cannot create log directory {path}: {source}")]
    CreateDir { path: String, source: io::Error },
    #[error(
        "the Raft log in {path} is damaged beyond a torn tail ({source}); refusing to start. \
         Move the directory aside and re-add this node as a new member (see runbooks/node-log-corrupt.md)"
    )]
    Corrupt { path: String, source: io::Error },
    #[error("cannot open the Raft log in {path}: {source}")]
    Open { path: String, source: io::Error },
}

/// A serde value stored as a length-prefixed postcard blob. A short read is
/// `UnexpectedEof`, which raft-log treats as a torn tail.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pc<T>(pub T);

impl<T: Serialize> Encode for Pc<T> {
    fn encode<W: io::Write>(&self, w: W) -> io::Result<usize> {
        let buf = postcard::to_allocvec(&self.0)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        buf.encode(w)
    }
}

impl<T: DeserializeOwned> Decode for Pc<T> {
    fn decode<R: io::Read>(r: R) -> io::Result<Self> {
        let buf = Vec::<u8>::decode(r)?;
        postcard::from_bytes(&buf)
            .map(Pc)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogTypes;

impl raft_log::Types for LogTypes {
    type LogId = Pc<LogId>;
    type LogPayload = Vec<u8>;
    type Vote = Pc<Vote>;
    type Callback = FlushDone;
    type UserData = Vec<u8>;

    fn log_index(id: &Self::LogId) -> u64 {
        id.0.index
    }

    fn payload_size(p: &Self::LogPayload) -> u64 {
        p.len() as u64
    }
}

/// Completion of a flush; runs on raft-log's flush thread after write and fsync.
pub enum FlushDone {
    Raft {
        callback: IOFlushed<TypeConfig>,
        queued_at: Instant,
        entries: usize,
        probe: FsyncProbe,
    },
    Waiter(tokio::sync::oneshot::Sender<io::Result<()>>),
}

/// What the flush thread reports into: fsync latency, batch size, injected stalls.
#[derive(Clone)]
pub struct FsyncProbe {
    pub latency: Option<Histogram>,
    pub batch_entries: Option<Histogram>,
    pub faults: Arc<Faults>,
}

impl raft_log::Callback for FlushDone {
    fn send(self, res: io::Result<()>) {
        match self {
            FlushDone::Raft {
                callback,
                queued_at,
                entries,
                probe,
            } => {
                if let Some(delay) = probe.faults.fsync_delay() {
                    // An injected disk stall: the flush thread is the disk.
                    std::thread::sleep(delay);
                }
                if let Some(h) = &probe.latency {
                    h.observe(queued_at.elapsed().as_secs_f64());
                }
                if let Some(h) = &probe.batch_entries {
                    h.observe(entries as f64);
                }
                callback.io_completed(res);
            }
            FlushDone::Waiter(tx) => {
                let _ = tx.send(res);
            }
        }
    }
}

/// The log store handle; clones share one log.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<RwLock<RaftLog<LogTypes>>>,
    probe: FsyncProbe,
}

impl LogStore {
    /// Opens (and recovers) the log in `dir`. Blocking: it replays every chunk.
    pub fn open(dir: &Path, probe: FsyncProbe) -> Result<Self, LogOpenError> {
        let path = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|source| LogOpenError::CreateDir {
            path: path.clone(),
            source,
        })?;
        let mut cfg = raft_log::Config::new(path.clone());
        // Every payload of the open chunk stays in memory, and the cache holds
        // more: both are kept small so a node's memory is its state, not its log.
        cfg.wal.chunk_max_size = Some(16 << 20);
        // No added wait before an fsync (raft-log's default is 1 ms): requests
        // that arrive while one fsync runs share the next, which is all the
        // grouping a busy log needs, and an idle one is not slowed. A 200 µs
        // wait cost ~10 % of hot-load throughput (docs/benchmarks.md).
        cfg.wal.flush_batch_wait = Some(Duration::ZERO);
        cfg.log_cache_capacity = Some(16 << 20);
        cfg.log_cache_max_items = Some(10_000);
        let log = RaftLog::<LogTypes>::open(Arc::new(cfg)).map_err(|source| {
            if source.kind() == io::ErrorKind::InvalidData {
                LogOpenError::Corrupt { path, source }
            } else {
                LogOpenError::Open { path, source }
            }
        })?;
        Ok(Self {
            inner: Arc::new(RwLock::new(log)),
            probe,
        })
    }
}

/// What the flush thread has done since the log was opened (raft-log's own
/// counters): one fsync serves every request queued while the previous ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushTotals {
    /// Batches that ended in an fsync.
    pub fsyncs: u64,
    /// Time spent in those fsyncs, in microseconds.
    pub fsync_us: u64,
}

impl LogStore {
    /// The flush thread's totals since the log was opened.
    pub async fn flush_totals(&self) -> FlushTotals {
        let m = self.inner.read().await.stat().flush_metrics;
        FlushTotals {
            fsyncs: m.sync_batch_count,
            fsync_us: m.sync_us,
        }
    }
}

fn bounds<RB: RangeBounds<u64>>(r: &RB) -> (u64, u64) {
    let s = match r.start_bound() {
        Bound::Included(&n) => n,
        Bound::Excluded(&n) => n.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let e = match r.end_bound() {
        Bound::Included(&n) => n.saturating_add(1),
        Bound::Excluded(&n) => n,
        Bound::Unbounded => u64::MAX,
    };
    (s, e)
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let (start, end) = bounds(&range);
        let log = self.inner.read().await;
        log.read(start, end)
            .map(|r| -> io::Result<Entry> {
                let (id, bytes) = r?;
                let payload = postcard::from_bytes(&bytes).map_err(invalid)?;
                Ok(openraft::Entry {
                    log_id: id.0,
                    payload,
                })
            })
            .collect()
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.inner.read().await.log_state().vote().map(|v| v.0))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let log = self.inner.read().await;
        let st = log.log_state();
        Ok(LogState {
            last_purged_log_id: st.purged().map(|x| x.0),
            last_log_id: st.last().map(|x| x.0),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut log = self.inner.write().await;
            log.save_vote(Pc(*vote))?;
            log.flush(true, Some(FlushDone::Waiter(tx)))?;
        }
        rx.await
            .map_err(|_| io::Error::other("raft-log flush thread dropped the vote callback"))?
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        let Some(c) = committed else { return Ok(()) };
        let mut log = self.inner.write().await;
        let st = log.log_state();
        // raft-log refuses a commit below the stored one or beyond the last entry
        // (possible while a snapshot is installed); committed is advisory, so skip.
        if st.committed().map(|x| &x.0) >= Some(&c) || st.last().map(|x| &x.0) < Some(&c) {
            return Ok(());
        }
        log.commit(Pc(c))?;
        log.flush(false, None)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.inner.read().await.log_state().committed().map(|x| x.0))
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let items = entries
            .into_iter()
            .map(|e| {
                Ok((
                    Pc(e.log_id),
                    postcard::to_allocvec(&e.payload).map_err(invalid)?,
                ))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let n = items.len();
        let mut log = self.inner.write().await;
        log.append(items)?;
        log.flush(
            true,
            Some(FlushDone::Raft {
                callback,
                queued_at: Instant::now(),
                entries: n,
                probe: self.probe.clone(),
            }),
        )?;
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> io::Result<()> {
        let at = last.as_ref().map_or(0, |l| l.index + 1);
        let mut log = self.inner.write().await;
        let next = log.log_state().last().map_or(0, |l| l.0.index + 1);
        if at >= next {
            return Ok(());
        }
        log.truncate(at)?;
        Ok(())
    }

    async fn purge(&mut self, upto: LogId) -> io::Result<()> {
        let mut log = self.inner.write().await;
        log.purge(Pc(upto))?;
        log.flush(true, None)?;
        Ok(())
    }
}
