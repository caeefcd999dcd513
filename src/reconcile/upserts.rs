//! Valid jobs stored in batches: concurrent reconciles each hand over their row and wait for
//! their own answer, while one task writes whatever has queued up in one transaction
//! (`store::upsert_jobs`). A lone change is written at once (no waiting to fill a batch); a
//! GitOps sync of thousands of jobs is written hundreds per commit instead of one.
//!
//! Written here, not taken from a crate: the batching is a dozen lines around a channel, and
//! what matters is specific to these rows (one uid and one name per statement, a bad row taken
//! out of its batch).

use std::collections::HashSet;

use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::validate::JobRow;
use crate::store::{self, StoreError, StoredJob};

/// Rows per transaction at most.
const BATCH_MAX: usize = 500;
/// Batches written at once (each on a connection of its own; the pool is shared).
const IN_FLIGHT: usize = 2;
/// Rows waiting for a batch at most: a reconcile beyond this waits to hand its row over.
const QUEUE: usize = 4 * BATCH_MAX;

#[derive(Debug, thiserror::Error)]
pub enum UpsertError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the job writer has stopped (shutting down)")]
    Stopped,
}

/// What a reconcile hands over: its row, the spec it was built from, and where its answer goes.
struct Request {
    row: Box<JobRow>,
    spec: Option<Value>,
    reply: oneshot::Sender<Result<Option<StoredJob>, StoreError>>,
}

/// The handle reconciles store through; the writer task ends when the last handle is dropped.
#[derive(Clone)]
pub struct Upserts {
    tx: mpsc::Sender<Request>,
}

impl Upserts {
    /// Start the writer (on the current Tokio runtime).
    pub fn start(pool: PgPool) -> Upserts {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(pool, rx));
        Upserts { tx }
    }

    /// Store a valid job (see `store::upsert_jobs`): `None` if it was already deleted.
    pub async fn upsert(
        &self,
        row: JobRow,
        spec: Option<Value>,
    ) -> Result<Option<StoredJob>, UpsertError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            row: Box::new(row),
            spec,
            reply,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| UpsertError::Stopped)?;
        Ok(answer.await.map_err(|_| UpsertError::Stopped)??)
    }
}

/// Take what has queued up (at most [`BATCH_MAX`]) and write it, [`IN_FLIGHT`] batches at once.
async fn write_loop(pool: PgPool, mut rx: mpsc::Receiver<Request>) {
    let slots = std::sync::Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Waiting for a free slot first lets the queue fill meanwhile: under load batches grow
        // by themselves, and a lone change never waits for company.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            write(&pool, batch).await;
            drop(slot);
        });
    }
}

/// Write `batch` as statements of distinct rows. A statement that fails is split in halves and
/// each written again, down to single rows: one bad row fails only its own reconcile, and costs
/// the others a few more statements (about two per halving), not one each.
async fn write(pool: &PgPool, batch: Vec<Request>) {
    // A stack: the halves of a failed part go before what was set aside for later (a second
    // change of a row already in the part must be written after it).
    let mut parts = vec![batch];
    while let Some(part) = parts.pop() {
        let (now, later) = distinct(part);
        if !later.is_empty() {
            parts.push(later);
        }
        let rows: Vec<(&JobRow, Option<&Value>)> = now
            .iter()
            .map(|r| (r.row.as_ref(), r.spec.as_ref()))
            .collect();
        match store::upsert_jobs(pool, &rows).await {
            Ok(stored) => {
                for (request, stored) in now.into_iter().zip(stored) {
                    // A reconcile that gave up waiting (shutdown) has nobody to tell.
                    let _ = request.reply.send(Ok(stored));
                }
            }
            Err(e) if now.len() == 1 => {
                if let Some(request) = now.into_iter().next() {
                    let _ = request.reply.send(Err(e));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, rows = now.len(), "a batch of jobs failed: halving it");
                let mut first = now;
                let second = first.split_off(first.len() / 2);
                parts.push(second);
                parts.push(first);
            }
        }
    }
}

/// The requests that can share a statement (the first of each uid and of each name, in order),
/// and the rest.
fn distinct(batch: Vec<Request>) -> (Vec<Request>, Vec<Request>) {
    let mut uids = HashSet::new();
    let mut names = HashSet::new();
    let (mut now, mut later) = (Vec::new(), Vec::new());
    for r in batch {
        let name = (r.row.namespace.clone(), r.row.name.clone());
        if uids.contains(&r.row.uid) || names.contains(&name) {
            later.push(r);
        } else {
            uids.insert(r.row.uid.clone());
            names.insert(name);
            now.push(r);
        }
    }
    (now, later)
}
