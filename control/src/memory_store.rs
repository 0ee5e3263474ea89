//! Where the control loop keeps what it must not forget across a restart —
//! the engine memory — and where it writes down every decision and outcome.
//! Locally both are files in the controller's directory; the operator keeps
//! the memory in a ConfigMap and the record as Kubernetes Events.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};

use roomkeeper_playbook::{ActionOutcome, Decision, EngineMemory};
use serde::Serialize;

/// Why the memory or the record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("engine memory {place} is unreadable: {reason}")]
    Unreadable { place: String, reason: String },
    #[error("{0}")]
    Backend(String),
}

/// The engine memory's home.
pub trait MemoryStore {
    /// The memory saved by an earlier controller, if any.
    fn load(&mut self) -> impl Future<Output = Result<Option<EngineMemory>, StoreError>> + Send;
    /// Saves the memory, given as its JSON text: the loop serializes it once
    /// per tick, compares it with the last save and calls this only when it
    /// changed.
    fn save(&mut self, json: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Where decisions and outcomes are written for people and tools to read.
pub trait Journal {
    fn decided(&mut self, d: &Decision) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn outcome(
        &mut self,
        d: &Decision,
        outcome: &ActionOutcome,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// One line of `decisions.jsonl`. Every key is camelCase, as in the engine's
/// own records.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
enum LogLine<'a> {
    Decision(&'a Decision),
    #[serde(rename_all = "camelCase")]
    Outcome {
        decision: u64,
        at_ms: u64,
        outcome: &'a ActionOutcome,
    },
}

/// The local home of both: `engine-memory.json` (replaced atomically) and
/// `decisions.jsonl` (appended) in one directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl FileStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn memory_path(&self) -> PathBuf {
        self.dir.join("engine-memory.json")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("decisions.jsonl")
    }

    fn append(&self, line: &LogLine<'_>) -> Result<(), StoreError> {
        let path = self.log_path();
        let mut text =
            serde_json::to_string(line).map_err(|e| StoreError::Backend(e.to_string()))?;
        text.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(text.as_bytes()).map_err(io(&path))
    }
}

impl MemoryStore for FileStore {
    async fn load(&mut self) -> Result<Option<EngineMemory>, StoreError> {
        let path = self.memory_path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Unreadable {
                        place: path.display().to_string(),
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    async fn save(&mut self, json: &str) -> Result<(), StoreError> {
        let path = self.memory_path();
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }
}

impl Journal for FileStore {
    async fn decided(&mut self, d: &Decision) -> Result<(), StoreError> {
        self.append(&LogLine::Decision(d))
    }

    async fn outcome(&mut self, d: &Decision, outcome: &ActionOutcome) -> Result<(), StoreError> {
        self.append(&LogLine::Outcome {
            decision: d.id,
            at_ms: outcome.at_ms(),
            outcome,
        })
    }
}
