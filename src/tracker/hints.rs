//! Results as they arrive. Celery's Redis backend PUBLISHes every record it stores on a channel
//! named as the record's key (`RedisBackend._set`: `SET` then `PUBLISH <key> <value>`, since
//! Celery 4). While this replica leads, it subscribes to `<prefix>celery-task-meta-*` and hands
//! the task ids to the tracker, which reads those runs at once instead of at its next pass.
//!
//! A message is only a hint. The record is read from its key as in a pass (the same size caps,
//! and the right database: Redis channels are not per database, so another app's results on
//! the same server arrive too and are dropped when no run of ours has that id). The passes go on
//! for whatever a subscription misses: messages sent while it reconnects, hints dropped because
//! the tracker is behind, and every backend that does not publish.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::{leader::Role, redis_target::SharedConn};

/// Task ids waiting for the tracker; when it is this far behind, further hints are dropped
/// (counted) and those runs are read by the next pass, as without a subscription.
pub const QUEUE: usize = 20_000;
/// How long a hint is kept for a run whose claim is not yet marked `DISPATCHED` (a fast worker
/// can store its result before the recorder's update commits); later the pass reads it.
pub const KEEP: Duration = Duration::from_secs(10);
/// Hints kept for such runs at most.
pub const KEEP_MAX: usize = 10_000;
/// A task id longer than this is not Celery's (uuid4: 36 characters) nor kube-beat's.
const TASK_ID_MAX: usize = 255;
/// A silent subscription is pinged this often: a connection that died without a word (a
/// failover, a dropped NAT entry) is noticed and made again.
const PING_EVERY: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(5);

/// The channel pattern for Celery's result keys under `keyprefix` (its glob characters escaped:
/// the prefix is the user's).
pub fn pattern(keyprefix: &str) -> String {
    let mut p = String::with_capacity(keyprefix.len() + 20);
    for c in keyprefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push_str("celery-task-meta-*");
    p
}

/// The task id a result channel names, if it is one of Celery's result channels under
/// `keyprefix` with a plausible id.
pub fn task_id<'a>(channel: &'a str, keyprefix: &str) -> Option<&'a str> {
    let id = channel
        .strip_prefix(keyprefix)?
        .strip_prefix("celery-task-meta-")?;
    let plausible =
        !id.is_empty() && id.len() <= TASK_ID_MAX && id.bytes().all(|b| b.is_ascii_graphic());
    plausible.then_some(id)
}

/// Hints for runs not yet marked `DISPATCHED`, tried again with every later batch until
/// [`KEEP`] has passed.
#[derive(Default)]
pub struct Waiting {
    since: HashMap<String, Instant>,
}

impl Waiting {
    /// Keep `id` (first seen at `at`) for another try; beyond [`KEEP_MAX`] the pass reads it.
    pub fn keep(&mut self, id: String, at: Instant) {
        if self.since.len() < KEEP_MAX || self.since.contains_key(&id) {
            self.since.entry(id).or_insert(at);
        }
    }

    /// Take every id still worth a try at `now`, with when it was first seen; older ones are
    /// forgotten.
    pub fn take(&mut self, now: Instant) -> Vec<(String, Instant)> {
        self.since
            .drain()
            .filter(|(_, at)| now.saturating_duration_since(*at) < KEEP)
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

/// Subscribe while this replica leads; send each result's task id to the tracker.
pub async fn subscribe(
    conn: Arc<SharedConn>,
    keyprefix: String,
    mut role: watch::Receiver<Role>,
    hints: mpsc::Sender<String>,
    mut stop: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_secs(1);
    loop {
        let leading = tokio::select! {
            r = role.wait_for(|r| r.epoch().is_some()) => r.is_ok(),
            _ = stop.wait_for(|s| *s) => return,
        };
        if !leading {
            return; // the role's sender is gone: the process is stopping
        }
        match listen(&conn, &keyprefix, &mut role, &hints, &mut stop).await {
            Ok(Ended::Stop) => return,
            Ok(Ended::Followed) => delay = Duration::from_secs(1),
            Err(SubscribeError::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) =>
            {
                // Redis ACL users get no channels unless granted (`acl-pubsub-default`): asking
                // again would only repeat the warning.
                warn!(
                    "the result backend's user may not subscribe (NOPERM); outcomes are recorded by the tracker's passes only (grant it the channels `&<prefix>celery-task-meta-*` to record them as they are stored)"
                );
                let _ = stop.wait_for(|s| *s).await;
                return;
            }
            Err(e) => {
                // The error names the server at most by kind (redis's messages carry no URL).
                warn!(error = %e, retry_in = ?delay, "result subscription lost; results are read by the tracker's passes meanwhile");
                if let SubscribeError::Redis(r) = &e {
                    conn.failed(r).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

enum Ended {
    Stop,
    /// No longer leading: a follower reads no results.
    Followed,
}

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the server closed the subscription")]
    Closed,
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, SubscribeError> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(SubscribeError::Timeout(TIMEOUT)),
    }
}

async fn listen(
    conn: &SharedConn,
    keyprefix: &str,
    role: &mut watch::Receiver<Role>,
    hints: &mpsc::Sender<String>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended, SubscribeError> {
    let client = timed(conn.target().client()).await?;
    let (mut sink, mut messages) = timed(client.get_async_pubsub()).await?.split();
    timed(sink.psubscribe(pattern(keyprefix))).await?;
    info!("result subscription on: results are recorded as the workers store them");
    let m = &crate::metrics::METRICS;
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        // The awaits in the arms' bodies would hold the watch guards of the other arms.
        let ping_due = tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else {
                    return Err(SubscribeError::Closed);
                };
                if let Some(id) = task_id(msg.get_channel_name(), keyprefix) {
                    m.result_hints.inc();
                    if hints.try_send(id.to_string()).is_err() {
                        m.result_hints_dropped.inc();
                    }
                }
                false
            }
            _ = ping.tick() => true,
            changed = role.changed() => {
                if changed.is_err() || role.borrow().epoch().is_none() {
                    return Ok(Ended::Followed);
                }
                false
            }
            _ = stop.wait_for(|s| *s) => return Ok(Ended::Stop),
        };
        if ping_due {
            timed(sink.ping::<redis::Value>()).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_escapes_the_users_prefix() {
        assert_eq!(pattern(""), "celery-task-meta-*");
        assert_eq!(pattern("app:"), "app:celery-task-meta-*");
        assert_eq!(
            pattern("a*b?[c]\\_"),
            "a\\*b\\?\\[c\\]\\\\_celery-task-meta-*"
        );
    }

    #[test]
    fn only_result_channels_under_the_prefix_name_a_task() {
        let id = "0b7a5f9e-4c1d-4f7e-9a53-1d2c3b4a5f6e";
        let ch = format!("celery-task-meta-{id}");
        assert_eq!(task_id(&ch, ""), Some(id));
        assert_eq!(task_id(&format!("app:{ch}"), "app:"), Some(id));
        assert_eq!(task_id(&ch, "app:"), None, "another prefix");
        assert_eq!(task_id("celery-task-meta-", ""), None, "no id");
        assert_eq!(
            task_id("celery-taskset-meta-x", ""),
            None,
            "a group's record"
        );
        assert_eq!(task_id("celery-task-meta-a b", ""), None, "not an id");
        let long = format!("celery-task-meta-{}", "x".repeat(TASK_ID_MAX + 1));
        assert_eq!(task_id(&long, ""), None, "too long");
    }

    #[test]
    fn waiting_hints_are_kept_a_while_and_bounded() {
        let t0 = Instant::now();
        let mut w = Waiting::default();
        w.keep("a".into(), t0);
        w.keep("a".into(), t0 + Duration::from_secs(5));
        let got = w.take(t0 + Duration::from_secs(1));
        assert_eq!(got, vec![("a".to_string(), t0)], "first seen is kept");
        assert!(w.is_empty(), "taken");
        w.keep("a".into(), t0);
        assert!(w.take(t0 + KEEP).is_empty(), "forgotten after KEEP");
        for i in 0..KEEP_MAX + 5 {
            w.keep(i.to_string(), t0);
        }
        assert_eq!(w.take(t0).len(), KEEP_MAX);
    }
}
