//! Runs become Celery messages: one at a time ahead of their time ([`Encoder`]), or a burst's
//! chunks as Postgres streams their rows ([`read_and_encode`]).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use super::RunAt;
use crate::{
    celery::{Encoding, Prepared, TaskMessage},
    store::outbox::{self, OutboxRow},
};

/// When a message published at `from` expires, `seconds` later. Checked: an expiry too far away
/// to compute (a row stored before the one-year bound) is no expiry, not a panic in the
/// publisher.
pub fn expiry(from: DateTime<Utc>, seconds: i64) -> Option<DateTime<Utc>> {
    chrono::TimeDelta::try_seconds(seconds).and_then(|d| from.checked_add_signed(d))
}

/// Encodes held runs as Celery messages: owned, so it can run on a blocking thread.
#[derive(Clone)]
pub(super) struct Encoder {
    pub(super) encoding: Encoding,
    /// The messages' `origin`: `kube-beat@<identity>`.
    pub(super) origin: String,
}

impl Encoder {
    /// The run's message, taking the row's strings rather than copying them.
    pub(super) fn message(&self, p: OutboxRow) -> TaskMessage {
        // From the run's time (it may be encoded a little before it).
        let expires = p
            .expires_seconds
            .and_then(|s| expiry(p.due.max(Utc::now()), s));
        let args = match p.args {
            Value::Array(a) => a,
            _ => Vec::new(),
        };
        let kwargs = match p.kwargs {
            Value::Object(o) => o,
            _ => serde_json::Map::new(),
        };
        TaskMessage {
            id: p.task_id,
            task: p.task_name,
            args,
            kwargs,
            queue: p.queue,
            priority: p.priority.and_then(|v| u8::try_from(v).ok()),
            expires,
            origin: self.origin.clone(),
            extra_headers: vec![
                ("kubebeat_job", format!("{}/{}", p.namespace, p.name)),
                ("kubebeat_slot", crate::schedule::rfc3339(p.scheduled_for)),
                ("kubebeat_trigger", p.trigger),
            ],
            options: p.message_options,
        }
    }

    pub(super) fn encode(&self, p: OutboxRow) -> Prepared {
        self.encoding.prepare(self.message(p))
    }
}

/// A chunk of a burst becoming messages. Of each run only its id and time are kept beside its
/// message: a row is ~600 bytes, and publishing needs neither.
pub(super) struct ChunkEncoder<'a> {
    encoder: &'a Encoder,
    runs: Vec<(RunAt, Prepared)>,
}

impl<'a> ChunkEncoder<'a> {
    /// A chunk starting with the runs read ahead (see `outbox::read_ahead`).
    pub(super) fn new(encoder: &'a Encoder, runs: Vec<(RunAt, Prepared)>) -> ChunkEncoder<'a> {
        ChunkEncoder { encoder, runs }
    }

    fn empty(encoder: &'a Encoder, size: usize) -> ChunkEncoder<'a> {
        ChunkEncoder {
            encoder,
            runs: Vec::with_capacity(size),
        }
    }

    fn len(&self) -> usize {
        self.runs.len()
    }

    pub(super) fn row(&mut self, p: OutboxRow) {
        let sent = (p.id, p.due);
        self.runs.push((sent, self.encoder.encode(p)));
    }

    /// The runs and their messages, in time order.
    pub(super) fn finish(mut self) -> (Vec<RunAt>, Vec<Prepared>) {
        self.runs.sort_by_key(|((id, due), _)| (*due, *id));
        self.runs.into_iter().unzip()
    }
}

/// Rows encoded between yields to the runtime (encoding is ~2 µs a run).
const ENCODE_YIELD_EVERY: usize = 500;

/// A chunk of a burst: its runs and their messages.
pub(super) type Chunk = (Vec<RunAt>, Vec<Prepared>);

/// Read the runs `ids` (those still PENDING: a run expired or settled meanwhile is left out),
/// encode each as Postgres sends it, and hand them to `out` in chunks of `size`, in time order
/// within a chunk; then, if `more` is given, the runs it names (those due with them that were
/// not known when it started: see [`Reader::start_early`]). Ends early, without error, once
/// `out` is closed (the publisher stopped).
pub(super) async fn read_and_encode(
    pool: &PgPool,
    ids: Vec<i64>,
    mut more: Option<tokio::sync::oneshot::Receiver<Vec<i64>>>,
    encoder: &Encoder,
    size: usize,
    out: tokio::sync::mpsc::Sender<Chunk>,
) -> Result<(), sqlx::Error> {
    use futures::TryStreamExt;
    let mut chunk = ChunkEncoder::empty(encoder, size);
    let mut n = 0usize;
    let mut ids = ids;
    loop {
        if !ids.is_empty() {
            let mut rows = outbox::pending_by_ids_stream(pool, &ids);
            while let Some(p) = rows.try_next().await? {
                chunk.row(p);
                n += 1;
                if chunk.len() >= size {
                    let full = std::mem::replace(&mut chunk, ChunkEncoder::empty(encoder, size));
                    if out.send(full.finish()).await.is_err() {
                        return Ok(());
                    }
                } else if n.is_multiple_of(ENCODE_YIELD_EVERY) {
                    tokio::task::yield_now().await;
                }
            }
        }
        // A sender dropped without sending is nothing more to read.
        ids = match more.take() {
            Some(rx) => rx.await.unwrap_or_default(),
            None => break,
        };
    }
    if chunk.len() > 0 {
        let _ = out.send(chunk.finish()).await;
    }
    Ok(())
}

/// A burst's runs not read ahead, read and encoded by a task of their own, which hands chunks
/// over through a channel of one: at most one handed over and one being encoded are held.
pub(super) struct Reader {
    pub(super) chunks: tokio::sync::mpsc::Receiver<Chunk>,
    /// For an early start: the runs due with these that it is to read after them.
    more: Option<tokio::sync::oneshot::Sender<Vec<i64>>>,
    task: Option<tokio::task::JoinHandle<Result<(), sqlx::Error>>>,
}

impl Reader {
    /// Read `ids` now, for a burst going out now.
    pub(super) fn start(pool: &PgPool, ids: Vec<i64>, encoder: &Encoder, size: usize) -> Reader {
        Reader::spawn(pool, ids, None, encoder, size)
    }

    /// Read `ids`, all due at one time, before they are due: Postgres answers the burst's query
    /// only after its hash of the jobs is built (~0.35 s at 100,000 runs, measured), which
    /// then no longer stands between the chunks read ahead and the rest. Its channel of one
    /// bounds what it holds while it waits. [`Reader::more`] gives it what else comes due then.
    pub(super) fn start_early(
        pool: &PgPool,
        ids: Vec<i64>,
        encoder: &Encoder,
        size: usize,
    ) -> Reader {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut reader = Reader::spawn(pool, ids, Some(rx), encoder, size);
        reader.more = Some(tx);
        reader
    }

    fn spawn(
        pool: &PgPool,
        ids: Vec<i64>,
        more: Option<tokio::sync::oneshot::Receiver<Vec<i64>>>,
        encoder: &Encoder,
        size: usize,
    ) -> Reader {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (pool, encoder) = (pool.clone(), encoder.clone());
        let task = tokio::spawn(async move {
            read_and_encode(&pool, ids, more, &encoder, size.max(1), tx).await
        });
        Reader {
            chunks: rx,
            more: None,
            task: Some(task),
        }
    }

    /// The runs going out with those it was started for, not read ahead: read after them.
    pub(super) fn more(&mut self, ids: Vec<i64>) {
        if let Some(tx) = self.more.take() {
            // Sent to a task that ended (it failed: `finish` says so) is nothing lost.
            let _ = tx.send(ids);
        }
    }

    /// Stop reading (a burst cut short): what it did not hand over stays PENDING.
    pub(super) fn abort(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }

    /// How the reading ended: an error only if the query failed or the task panicked; an
    /// aborted reader is not an error (its runs stay PENDING for the next read).
    pub(super) async fn finish(mut self) -> Result<(), ReadFailed> {
        // An early reader still waiting for more ends with nothing more.
        self.more.take();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ReadFailed::Query(e)),
            Err(e) if e.is_cancelled() => Ok(()),
            Err(_) => Err(ReadFailed::Panicked),
        }
    }
}

/// A reader dropped before it finished (leadership lost, the burst's wait cut short) stops: its
/// runs stay PENDING for the next read.
impl Drop for Reader {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Why a burst's reader did not read everything.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadFailed {
    #[error("reading a burst's runs failed: {0}")]
    Query(sqlx::Error),
    #[error("the burst's reader panicked")]
    Panicked,
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::dispatch) fn run(id: i64, due: DateTime<Utc>) -> OutboxRow {
        OutboxRow {
            id,
            task_id: format!("t{id}"),
            scheduled_for: due,
            trigger: "schedule".into(),
            due,
            namespace: "ns".into(),
            name: format!("j{id}"),
            task_name: "t".into(),
            args: Value::Null,
            kwargs: Value::Null,
            queue: "celery".into(),
            priority: None,
            expires_seconds: None,
            message_options: Default::default(),
        }
    }

    pub(in crate::dispatch) fn encoder() -> Encoder {
        Encoder {
            encoding: Encoding::Redis,
            origin: "kube-beat@test".into(),
        }
    }

    #[test]
    fn an_expiry_past_the_end_of_time_encodes_without_one() {
        let now = Utc::now();
        for (secs, due, has_expiry) in [
            (i64::MAX, now, false),
            (i64::MIN, now, false),
            (31_536_000, DateTime::<Utc>::MAX_UTC, false),
            (31_536_000, now, true),
        ] {
            let mut p = run(1, due);
            p.expires_seconds = Some(secs);
            let m = encoder().message(p);
            assert_eq!(m.expires.is_some(), has_expiry, "{secs} s from {due}");
        }
    }
}
