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
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Whether a subscription is on now (subscribed, not yet ended): while it is, the runs published
/// within [`KEEP`] are the announcements' to record, and the passes leave them alone (reading
/// them too doubled the tracker's reads and writes at 100,000 jobs a minute, and a pass slower
/// than the runs arriving chased the newest ones without end).
#[derive(Clone, Default)]
pub struct Live(Arc<AtomicBool>);

impl Live {
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// On until the returned guard is dropped (however the subscription ends).
    fn on(&self) -> LiveGuard<'_> {
        self.0.store(true, Ordering::Relaxed);
        LiveGuard(self)
    }
}

struct LiveGuard<'a>(&'a Live);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.0.0.store(false, Ordering::Relaxed);
    }
}

/// How often hints kept for runs not yet marked `DISPATCHED` are tried again.
pub const RETRY: Duration = Duration::from_millis(200);

/// Hints for runs not yet marked `DISPATCHED`, tried again every [`RETRY`] until [`KEEP`] has
/// passed.
#[derive(Default)]
pub struct Waiting {
    since: HashMap<String, Instant>,
    last_try: Option<Instant>,
}

impl Waiting {
    /// Keep `id` (first seen at `at`) for another try; beyond [`KEEP_MAX`] the pass reads it.
    pub fn keep(&mut self, id: String, at: Instant) {
        if self.since.len() < KEEP_MAX || self.since.contains_key(&id) {
            self.since.entry(id).or_insert(at);
        }
    }

    /// When [`RETRY`] has passed since the last try: every id still worth a try at `now`, with
    /// when it was first seen (older ones are forgotten); otherwise none, all kept.
    pub fn take(&mut self, now: Instant) -> Vec<(String, Instant)> {
        if self
            .last_try
            .is_some_and(|t| now.saturating_duration_since(t) < RETRY)
        {
            return Vec::new();
        }
        self.last_try = Some(now);
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
    live: Live,
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
        let listened = listen(
            &conn, &keyprefix, &live, &mut role, &hints, &mut stop, &mut delay,
        );
        match listened.await {
            Ok(Ended::Stop) => return,
            Ok(Ended::Followed) => {}
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

type Ping = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SubscribeError>> + Send>>;

/// What woke the subscription up.
enum Woke {
    Message(Option<redis::Msg>),
    PingDue,
    Pinged(Result<(), SubscribeError>),
    Role { leading: bool },
    Stop,
}

/// A ping in flight, or never ready.
async fn pinged(ping: &mut Option<Ping>) -> Result<(), SubscribeError> {
    match ping {
        Some(p) => p.await,
        None => std::future::pending().await,
    }
}

async fn listen(
    conn: &SharedConn,
    keyprefix: &str,
    live: &Live,
    role: &mut watch::Receiver<Role>,
    hints: &mpsc::Sender<String>,
    stop: &mut watch::Receiver<bool>,
    delay: &mut Duration,
) -> Result<Ended, SubscribeError> {
    let client = timed(conn.target().client()).await?;
    let (mut sink, mut messages) = timed(client.get_async_pubsub()).await?.split();
    timed(sink.psubscribe(pattern(keyprefix))).await?;
    *delay = Duration::from_secs(1);
    let _on = live.on();
    info!("result subscription on: results are recorded as the workers store them");
    let m = &crate::metrics::METRICS;
    let mut ping_every = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut ping: Option<Ping> = None;
    loop {
        // Nothing here awaits but the select: redis reads every message whole into an
        // unbounded queue of its own, and only taking them off at once keeps that queue short
        // (a ping in flight is one of the arms, not a pause).
        let woke = tokio::select! {
            msg = messages.next() => Woke::Message(msg),
            _ = ping_every.tick(), if ping.is_none() => Woke::PingDue,
            r = pinged(&mut ping) => Woke::Pinged(r),
            changed = role.changed() => Woke::Role {
                leading: changed.is_ok() && role.borrow().epoch().is_some(),
            },
            _ = stop.wait_for(|s| *s) => Woke::Stop,
        };
        match woke {
            Woke::Message(None) => return Err(SubscribeError::Closed),
            Woke::Message(Some(msg)) => {
                // Only the channel's name is used; the payload (the record) is dropped here
                // and read from its key, capped, by the tracker.
                let Some(id) = task_id(msg.get_channel_name(), keyprefix) else {
                    continue;
                };
                m.result_hints.inc();
                match hints.try_send(id.to_string()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        m.result_hints_dropped.inc();
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return Ok(Ended::Stop),
                }
            }
            Woke::PingDue => {
                let mut sink = sink.clone();
                ping = Some(Box::pin(async move {
                    timed(sink.ping::<redis::Value>()).await.map(drop)
                }));
            }
            Woke::Pinged(r) => {
                r?;
                ping = None;
            }
            Woke::Role { leading: false } => return Ok(Ended::Followed),
            Woke::Role { leading: true } => {}
            Woke::Stop => return Ok(Ended::Stop),
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
    fn live_is_on_while_its_guard_is_held() {
        let live = Live::default();
        let seen = live.clone();
        assert!(!seen.is_on(), "off until subscribed");
        {
            let _on = live.on();
            assert!(seen.is_on());
        }
        assert!(!seen.is_on(), "off once the subscription ended");
    }

    #[test]
    fn waiting_hints_are_kept_a_while_tried_every_retry_and_bounded() {
        let t0 = Instant::now();
        let mut w = Waiting::default();
        w.keep("a".into(), t0);
        w.keep("a".into(), t0 + Duration::from_secs(5));
        let got = w.take(t0 + Duration::from_secs(1));
        assert_eq!(got, vec![("a".to_string(), t0)], "first seen is kept");
        assert!(w.is_empty(), "taken");
        let t1 = t0 + Duration::from_secs(1);
        w.keep("b".into(), t1);
        assert!(w.take(t1 + RETRY / 2).is_empty(), "not again before RETRY");
        assert!(!w.is_empty(), "kept meanwhile");
        assert_eq!(w.take(t1 + RETRY).len(), 1);
        w.keep("c".into(), t0);
        assert!(
            w.take(t0 + KEEP + RETRY * 10).is_empty(),
            "forgotten after KEEP"
        );
        assert!(w.is_empty());
        let mut w = Waiting::default();
        for i in 0..KEEP_MAX + 5 {
            w.keep(i.to_string(), t0);
        }
        assert_eq!(w.take(t0).len(), KEEP_MAX, "no more than KEEP_MAX kept");
    }
}
