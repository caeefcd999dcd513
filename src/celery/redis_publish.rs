//! Publishing to Redis with each task id enqueued at most once.
//!
//! A batch's envelopes go out together with a record of their task ids, in one transaction
//! (MULTI/EXEC) that Redis refuses if another publisher recorded anything in between (WATCH on
//! the record). So a publish retried after its reply was lost, or one racing a newer leader,
//! never enqueues a task id twice, and the record says exactly what went out.
//!
//! The record is one set per time window (per installation): a task id is looked up in the
//! current and the previous window's set, so it is remembered for at least one window.
//!
//! Fenced by the leader's epoch: a new leader raises `<prefix>:epoch` to its own epoch before it
//! reads the record ([`RedisPublisher::fence`]), and every transaction WATCHes that key and goes
//! ahead only while it holds the publisher's own epoch. So a deposed leader that wakes up from a
//! pause with a batch in hand either published it before its successor read the record (which
//! then says so) or is refused: never a run that the successor recorded MISSED, and ran.
//!
//! Not a Lua script: one that checked and pushed each message cost 12-20 µs a message inside
//! Redis (each 1.3 KB envelope copied into Lua and out again) against under 1 µs for a plain
//! LPUSH, and a 10,000-run burst waited for it.

use std::collections::HashMap;

use chrono::Utc;
use std::sync::Arc;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use tokio::sync::Mutex;

use super::{Prepared, PublishError};
use crate::redis_target::SharedConn;

/// Envelopes per LPUSH command (a burst is one transaction of several commands).
const LPUSH_ARGS: usize = 1000;
/// Transactions refused because the record changed (another publisher) before giving up.
const WATCH_ATTEMPTS: usize = 5;
/// How long a reply may take on the publishing connection. The redis crate's default is
/// 500 ms: a new leader's first chunk of 5,000 messages, at 100,000 jobs a minute with both
/// cores busy, took longer and was failed and retried (`publish failed; will retry
/// error=redis: timed out`, seen in a failover's log). The dispatcher bounds a whole publish
/// itself (10 s), and a publish cut off drops its connection.
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection of the publisher's own, with [`RESPONSE_TIMEOUT`].
async fn publishing_connection(
    shared: &SharedConn,
) -> Result<MultiplexedConnection, redis::RedisError> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
    shared
        .target()
        .client()
        .await?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

pub struct RedisPublisher {
    /// Where to (re)connect: behind Sentinel, the master of the moment.
    shared: Arc<SharedConn>,
    /// Celery's `global_keyprefix`: before every queue list (as kombu's LPUSH has it).
    keyprefix: String,
    /// Publishing only, one batch at a time: WATCH and MULTI are connection state. Taken while
    /// in use and put back only after a clean publish, so a publish cut off half way (a
    /// timeout drops it) never leaves its WATCH or MULTI on a connection used again.
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Names the record: `<prefix>:<window number>`.
    prefix: String,
    /// Seconds per window.
    window: u64,
}

impl RedisPublisher {
    pub async fn connect(
        shared: Arc<SharedConn>,
        prefix: &str,
        keyprefix: &str,
        window: u64,
    ) -> Result<RedisPublisher, PublishError> {
        let conn = publishing_connection(&shared).await?;
        Ok(RedisPublisher {
            shared,
            keyprefix: keyprefix.to_string(),
            conn: Mutex::new(Some(conn)),
            prefix: prefix.to_string(),
            window: window.max(60),
        })
    }

    /// The current and the previous window's record.
    fn keys(&self) -> [String; 2] {
        record_keys(&self.prefix, self.window, Utc::now().timestamp())
    }

    /// The fencing key: the newest leader epoch that has read the record.
    fn epoch_key(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// Raise the fencing epoch to `epoch` (never lower it): from now on a publisher of an older
    /// term is refused. Fails with [`PublishError::Fenced`] if a newer term has begun.
    pub async fn fence(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        epoch: i64,
    ) -> Result<(), PublishError> {
        // A script only to make "raise, never lower" one step; it touches one small key.
        let current: i64 = redis::Script::new(
            "local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
             local ours = tonumber(ARGV[1])
             if cur < ours then redis.call('SET', KEYS[1], ARGV[1]) return ours end
             return cur",
        )
        .key(self.epoch_key())
        .arg(epoch)
        .invoke_async(conn)
        .await?;
        if current > epoch {
            return Err(PublishError::Fenced {
                ours: epoch,
                current,
            });
        }
        Ok(())
    }

    pub async fn publish(
        &self,
        messages: &[Prepared],
        epoch: i64,
    ) -> Result<Vec<Rejected>, PublishError> {
        let mut slot = self.conn.lock().await;
        let mut conn = match slot.take() {
            Some(c) => c,
            // A new connection asks the Sentinels for the master again (a failover).
            None => publishing_connection(&self.shared).await?,
        };
        let rejected = self.publish_on(&mut conn, messages, epoch).await?;
        *slot = Some(conn);
        Ok(rejected)
    }

    /// Publish `messages` in one transaction. A message whose list cannot take it (the key
    /// holds a string, a hash, ...: a queue named after some other key) is left out and
    /// returned as rejected, so one job's bad queue never fails the rest of the batch.
    // Long (~150 lines) on purpose: WATCH, the TYPE checks, MULTI, the record and EXEC are one
    // Redis transaction whose steps must stay in this order on one connection.
    async fn publish_on(
        &self,
        conn: &mut MultiplexedConnection,
        messages: &[Prepared],
        epoch: i64,
    ) -> Result<Vec<Rejected>, PublishError> {
        let bound = bound_lists(conn, messages, &self.keyprefix).await?;
        let mut rejected_unbound: Vec<Rejected> = Vec::new();
        // Every list each message goes to, under the global key prefix (kombu prefixes the keys
        // of LPUSH and SMEMBERS, not the queue names inside a binding).
        let mut targets: Vec<(usize, String)> = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            match m {
                Prepared::Redis {
                    list, bound: None, ..
                } => targets.push((i, format!("{}{list}", self.keyprefix))),
                Prepared::Redis { bound: Some(b), .. } => match bound.get(&i) {
                    Some(lists) if !lists.is_empty() => {
                        targets.extend(lists.iter().map(|l| (i, l.clone())));
                    }
                    _ => rejected_unbound.push(Rejected {
                        index: i,
                        reason: unbound(b),
                    }),
                },
                Prepared::Amqp(message) => {
                    return Err(PublishError::Encoding(message.id.clone()));
                }
            }
        }
        // (index in `messages`, id, list, envelope): one per list a message goes to.
        let parts: Vec<(usize, &str, &str, &str)> = targets
            .iter()
            .filter_map(|(i, list)| match messages.get(*i) {
                Some(Prepared::Redis { id, envelope, .. }) => {
                    Some((*i, id.as_str(), list.as_str(), envelope.as_str()))
                }
                _ => None, // every target came from a Redis message above
            })
            .collect();
        if parts.is_empty() {
            return Ok(rejected_unbound);
        }
        let lists = distinct(parts.iter().map(|p| p.2));
        let keys = self.keys();
        let epoch_key = self.epoch_key();
        for _ in 0..WATCH_ATTEMPTS {
            let ids: Vec<&str> = parts.iter().map(|p| p.1).collect();
            let mut pipe = redis::pipe();
            pipe.cmd("WATCH")
                .arg(&keys[0])
                .arg(&keys[1])
                .arg(&epoch_key)
                .cmd("GET")
                .arg(&epoch_key)
                .cmd("SMISMEMBER")
                .arg(&keys[0])
                .arg(&ids)
                .cmd("SMISMEMBER")
                .arg(&keys[1])
                .arg(&ids);
            for list in &lists {
                pipe.cmd("TYPE").arg(*list);
            }
            let mut replies: Vec<redis::Value> = pipe.query_async(conn).await?;
            if replies.len() != 4 + lists.len() {
                return Err(PublishError::Reply("WATCH pipeline"));
            }
            let types = replies
                .split_off(4)
                .into_iter()
                .map(redis::from_redis_value::<String>)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| PublishError::Redis(e.into()))?;
            let mut head = replies.into_iter().skip(1);
            let parse = |v: Option<redis::Value>| v.ok_or(PublishError::Reply("WATCH pipeline"));
            let fenced_at: Option<i64> = redis::from_redis_value(parse(head.next())?)
                .map_err(|e| PublishError::Redis(e.into()))?;
            let current: Vec<bool> = redis::from_redis_value(parse(head.next())?)
                .map_err(|e| PublishError::Redis(e.into()))?;
            let previous: Vec<bool> = redis::from_redis_value(parse(head.next())?)
                .map_err(|e| PublishError::Redis(e.into()))?;
            if fenced_at != Some(epoch) {
                // The epoch key is missing (Redis restarted, flushed) or ours is stale: raise
                // it or learn that we are fenced.
                redis::cmd("UNWATCH").query_async::<()>(conn).await?;
                self.fence(conn, epoch).await?;
                continue;
            }
            let unusable: HashMap<&str, &str> = lists
                .iter()
                .zip(&types)
                .filter(|(_, t)| !matches!(t.as_str(), "list" | "none"))
                .map(|(l, t)| (*l, t.as_str()))
                .collect();
            let mut rejected: Vec<Rejected> = rejected_unbound.clone();
            let mut fresh: Vec<(usize, &str, &str, &str)> = Vec::new();
            for (m, (c, p)) in parts.iter().zip(current.iter().zip(&previous)) {
                if *c || *p {
                    continue;
                }
                match unusable.get(m.2) {
                    Some(t) => rejected.push(Rejected {
                        index: m.0,
                        reason: wrong_type(m.2, t),
                    }),
                    None => fresh.push(*m),
                }
            }
            if fresh.is_empty() {
                redis::cmd("UNWATCH").query_async::<()>(conn).await?;
                return Ok(rejected);
            }
            // Queued inside MULTI: Redis answers QUEUED to each and runs them at EXEC, as one.
            // SADD and EXPIRE of the current window come first; the envelopes follow. Sent as
            // one pipeline, not command by command: Redis queues each command while the next is
            // still being written, where waiting for each QUEUED left Redis idle while the
            // client packed the next ~1.3 MB LPUSH, and the client idle while Redis parsed it.
            let mut tx = redis::pipe();
            // Every reply comes back as a value (a refused command as `ServerError`) so that
            // the EXEC reply, and which LPUSH failed inside it, can be told apart below.
            tx.ignore_errors();
            tx.cmd("MULTI")
                .cmd("SADD")
                .arg(&keys[0])
                .arg(fresh.iter().map(|m| m.1).collect::<Vec<_>>())
                .cmd("EXPIRE")
                .arg(&keys[0])
                // Two windows and a minute: the set outlives the window after its own.
                .arg(2 * self.window + 60);
            let envelopes: Vec<(&str, (usize, &str, &str))> =
                fresh.iter().map(|m| (m.2, (m.0, m.1, m.3))).collect();
            // Which list each LPUSH of the transaction went to, in order.
            let mut pushed: Vec<&str> = Vec::new();
            let groups = by_list(&envelopes);
            for (list, group) in &groups {
                for chunk in group.chunks(LPUSH_ARGS) {
                    tx.cmd("LPUSH")
                        .arg(*list)
                        .arg(chunk.iter().map(|m| m.2).collect::<Vec<_>>());
                    pushed.push(list);
                }
            }
            tx.cmd("EXEC");
            let mut replies: Vec<redis::Value> = tx.query_async(conn).await?;
            let exec = replies.pop().ok_or(PublishError::Reply("EXEC"))?;
            // MULTI's OK and a QUEUED per command; a command refused as it was queued aborted
            // the transaction (EXECABORT), and its own error says why.
            for r in replies {
                r.extract_error()?;
            }
            match exec {
                redis::Value::Nil => continue,
                // Not `extract_error`: that would also fail on an LPUSH refused inside the
                // reply, which is one list's problem (below), not the whole batch's.
                redis::Value::ServerError(e) => return Err(redis::RedisError::from(e).into()),
                redis::Value::Array(replies) if replies.len() == 2 + pushed.len() => {
                    let mut replies = replies.into_iter();
                    // SADD and EXPIRE: a failure there is the whole batch's.
                    for r in replies.by_ref().take(2) {
                        r.extract_error()?;
                    }
                    // An LPUSH refused at EXEC (the key changed type since TYPE): those runs
                    // did not go out. Take them out of the record again and reject them.
                    let failed: Vec<&str> = pushed
                        .iter()
                        .zip(replies)
                        .filter(|(_, r)| matches!(r, redis::Value::ServerError(_)))
                        .map(|(l, _)| *l)
                        .collect();
                    if !failed.is_empty() {
                        let mut ids = Vec::new();
                        for (list, group) in groups.iter().filter(|(l, _)| failed.contains(l)) {
                            for m in group {
                                ids.push(m.1);
                                rejected.push(Rejected {
                                    index: m.0,
                                    reason: wrong_type(list, "another type"),
                                });
                            }
                        }
                        redis::cmd("SREM")
                            .arg(&keys[0])
                            .arg(ids)
                            .query_async::<()>(conn)
                            .await?;
                    }
                    return Ok(rejected);
                }
                _ => return Err(PublishError::Reply("EXEC")),
            }
        }
        Err(PublishError::Contended(WATCH_ATTEMPTS))
    }

    /// Which of `candidates` went out (are in the record). Also reads the per-id keys
    /// (`kubebeat:sent:<id>`) that the previous release's publish script wrote, so an upgrade
    /// in the middle of an uncertain publish does not send anything twice.
    pub async fn sent(
        &self,
        conn: &mut ConnectionManager,
        candidates: &[String],
    ) -> Result<Vec<bool>, PublishError> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.keys();
        let mut pipe = redis::pipe();
        pipe.cmd("SMISMEMBER").arg(&keys[0]).arg(candidates);
        pipe.cmd("SMISMEMBER").arg(&keys[1]).arg(candidates);
        for id in candidates {
            pipe.exists(format!("kubebeat:sent:{id}"));
        }
        let mut replies: Vec<redis::Value> = pipe.query_async(conn).await?;
        let parse = |e: redis::ParsingError| PublishError::Redis(e.into());
        let legacy: Vec<bool> = replies
            .split_off(2)
            .into_iter()
            .map(redis::from_redis_value)
            .collect::<Result<_, _>>()
            .map_err(parse)?;
        let mut sets = replies
            .into_iter()
            .map(redis::from_redis_value::<Vec<bool>>);
        let (current, previous) = match (sets.next(), sets.next()) {
            (Some(c), Some(p)) => (c.map_err(parse)?, p.map_err(parse)?),
            _ => return Err(PublishError::Reply("SMISMEMBER")),
        };
        Ok(current
            .iter()
            .zip(&previous)
            .zip(&legacy)
            .map(|((c, p), l)| *c || *p || *l)
            .collect())
    }
}

/// kombu's Redis key of an exchange's bindings (`keyprefix_queue`), a set of
/// `routing_key SEP pattern SEP queue`.
const BINDING_PREFIX: &str = "_kombu.binding.";
/// kombu's separator in a binding (`Channel.sep`).
const BINDING_SEP: &str = "\x06\x16";

/// The lists of the messages published to a named exchange, by index in `messages`: read
/// from the exchange's bindings as kombu's virtual direct exchange reads them (a producer
/// that has not declared the exchange itself treats it as direct, whatever its declared
/// type): every queue bound with exactly the message's routing key, at the message's
/// priority. Read before the transaction; a binding changing in between is the same race
/// kombu has.
async fn bound_lists(
    conn: &mut MultiplexedConnection,
    messages: &[Prepared],
    keyprefix: &str,
) -> Result<HashMap<usize, Vec<String>>, PublishError> {
    let bound: Vec<(usize, &super::Binding)> = messages
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match m {
            Prepared::Redis { bound: Some(b), .. } => Some((i, b.as_ref())),
            _ => None,
        })
        .collect();
    if bound.is_empty() {
        return Ok(HashMap::new());
    }
    let exchanges = distinct(bound.iter().map(|(_, b)| b.exchange.as_str()));
    let mut pipe = redis::pipe();
    for x in &exchanges {
        pipe.cmd("SMEMBERS")
            .arg(format!("{keyprefix}{BINDING_PREFIX}{x}"));
    }
    let tables: Vec<Vec<Vec<u8>>> = pipe.query_async(conn).await?;
    let tables: HashMap<&str, Vec<(String, String)>> = exchanges
        .iter()
        .zip(tables)
        .map(|(x, members)| (*x, members.iter().filter_map(|m| binding(m)).collect()))
        .collect();
    Ok(bound
        .into_iter()
        .map(|(i, b)| {
            let mut queues: Vec<&str> = tables
                .get(b.exchange.as_str())
                .into_iter()
                .flatten()
                .filter(|(rkey, _)| *rkey == b.routing_key)
                .map(|(_, q)| q.as_str())
                .collect();
            // kombu collects them in a set: each queue once.
            queues.sort_unstable();
            queues.dedup();
            let lists = queues
                .into_iter()
                .map(|q| format!("{keyprefix}{}", super::message::redis_list(q, b.priority)))
                .collect();
            (i, lists)
        })
        .collect())
}

/// One member of a binding set: its routing key and queue (kombu splits on the separator and
/// unpacks three fields; a member that does not split so is skipped).
fn binding(member: &[u8]) -> Option<(String, String)> {
    let text = String::from_utf8_lossy(member);
    let mut fields = text.split(BINDING_SEP);
    match (fields.next(), fields.next(), fields.next(), fields.next()) {
        (Some(rkey), Some(_pattern), Some(queue), None) => {
            Some((rkey.to_string(), queue.to_string()))
        }
        _ => None,
    }
}

/// Why a message to an exchange with no matching binding is not published.
fn unbound(b: &super::Binding) -> String {
    format!(
        "no queue is bound to exchange {:?} with routing key {:?} on this Redis \
         ({BINDING_PREFIX}{} has no such member): kombu's Redis transport drops such a message \
         without a trace; kube-beat does not publish it either and records why",
        b.exchange, b.routing_key, b.exchange
    )
}

/// The record of window `now / window` and of the one before.
fn record_keys(prefix: &str, window: u64, now: i64) -> [String; 2] {
    let n = now.max(0) as u64 / window.max(1);
    [
        format!("{prefix}:{n}"),
        format!("{prefix}:{}", n.saturating_sub(1)),
    ]
}

/// A message of a batch that was not published, and why (its index in the batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub index: usize,
    pub reason: String,
}

fn wrong_type(list: &str, found: &str) -> String {
    format!(
        "queue {list:?} cannot be used on this Redis: its key holds {found}, not a list (a queue named after another key?)"
    )
}

/// The distinct values, in order of first appearance.
fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = std::collections::HashSet::new();
    values.filter(|v| seen.insert(*v)).collect()
}

/// Messages grouped by list, each group in the batch's order (one LPUSH per list keeps the
/// order Celery consumes them in: LPUSH a b c, then BRPOP takes a first).
fn by_list<'a, T: Copy>(messages: &[(&'a str, T)]) -> Vec<(&'a str, Vec<T>)> {
    let mut groups: Vec<(&str, Vec<T>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for &(list, m) in messages {
        let i = *index.entry(list).or_insert_with(|| {
            groups.push((list, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(m);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_one_before() {
        assert_eq!(record_keys("p", 600, 1_200), ["p:2", "p:1"]);
        assert_eq!(record_keys("p", 600, 1_799), ["p:2", "p:1"]);
        assert_eq!(record_keys("p", 600, 1_800), ["p:3", "p:2"]);
        assert_eq!(record_keys("p", 600, 0), ["p:0", "p:0"]);
    }

    #[test]
    fn binding_members_split_as_kombu_splits_them() {
        assert_eq!(
            binding(b"rk\x06\x16\x06\x16queue"),
            Some(("rk".into(), "queue".into()))
        );
        assert_eq!(
            binding(b"a.*\x06\x16a.*\x06\x16q"),
            Some(("a.*".into(), "q".into()))
        );
        assert_eq!(binding(b"no-separator"), None);
        assert_eq!(binding(b"a\x06\x16b\x06\x16c\x06\x16d"), None);
    }

    #[test]
    fn envelopes_are_grouped_by_list_in_order() {
        let ms = [("celery", "env-a"), ("high", "env-b"), ("celery", "env-c")];
        assert_eq!(
            by_list(&ms),
            vec![("celery", vec!["env-a", "env-c"]), ("high", vec!["env-b"])]
        );
    }
}
