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

/// Read the runs `ids` (those still PENDING: a run expired or settled meanwhile is left out),
/// encode each as Postgres sends it, and hand them to `out` in chunks of `size`, in time order
/// within a chunk. Ends early, without error, once `out` is closed (the publisher stopped).
pub(super) async fn read_and_encode(
    pool: &PgPool,
    ids: Vec<i64>,
    encoder: &Encoder,
    size: usize,
    out: tokio::sync::mpsc::Sender<(Vec<RunAt>, Vec<Prepared>)>,
) -> Result<(), sqlx::Error> {
    use futures::TryStreamExt;
    if ids.is_empty() {
        return Ok(());
    }
    let mut rows = outbox::pending_by_ids_stream(pool, &ids);
    let mut chunk = ChunkEncoder::empty(encoder, size);
    let mut n = 0usize;
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
    if chunk.len() > 0 {
        let _ = out.send(chunk.finish()).await;
    }
    Ok(())
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
