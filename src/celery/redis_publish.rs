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
use redis::aio::{ConnectionManager, MultiplexedConnection};
use tokio::sync::Mutex;

use super::{Prepared, PublishError};

/// Envelopes per LPUSH command (a burst is one transaction of several commands).
const LPUSH_ARGS: usize = 1000;
/// Transactions refused because the record changed (another publisher) before giving up.
const WATCH_ATTEMPTS: usize = 5;

pub struct RedisPublisher {
    client: redis::Client,
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
        client: redis::Client,
        prefix: &str,
        window: u64,
    ) -> Result<RedisPublisher, PublishError> {
        let conn = client.get_multiplexed_async_connection().await?;
        Ok(RedisPublisher {
            client,
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

    pub async fn publish(&self, messages: &[Prepared], epoch: i64) -> Result<(), PublishError> {
        let mut slot = self.conn.lock().await;
        let mut conn = match slot.take() {
            Some(c) => c,
            None => self.client.get_multiplexed_async_connection().await?,
        };
        self.publish_on(&mut conn, messages, epoch).await?;
        *slot = Some(conn);
        Ok(())
    }

    async fn publish_on(
        &self,
        conn: &mut MultiplexedConnection,
        messages: &[Prepared],
        epoch: i64,
    ) -> Result<(), PublishError> {
        // (id, list, envelope): only what was encoded for Redis can go out here.
        let parts = messages
            .iter()
            .map(|m| match m {
                Prepared::Redis { id, list, envelope } => {
                    Ok((id.as_str(), list.as_str(), envelope.as_str()))
                }
                Prepared::Amqp(message) => Err(PublishError::Encoding(message.id.clone())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = self.keys();
        let epoch_key = self.epoch_key();
        let ids: Vec<&str> = parts.iter().map(|p| p.0).collect();
        for _ in 0..WATCH_ATTEMPTS {
            let ((), fenced_at, current, previous): ((), Option<i64>, Vec<bool>, Vec<bool>) =
                redis::pipe()
                    .cmd("WATCH")
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
                    .arg(&ids)
                    .query_async(conn)
                    .await?;
            if fenced_at != Some(epoch) {
                // Older or missing (a Redis that lost its data, the first publish after an
                // upgrade): raise it and look again. Newer: this term is over.
                redis::cmd("UNWATCH").query_async::<()>(conn).await?;
                self.fence(conn, epoch).await?;
                continue;
            }
            let fresh: Vec<(&str, &str, &str)> = parts
                .iter()
                .zip(current.iter().zip(&previous))
                .filter(|(_, (c, p))| !**c && !**p)
                .map(|(m, _)| *m)
                .collect();
            if fresh.is_empty() {
                redis::cmd("UNWATCH").query_async::<()>(conn).await?;
                return Ok(());
            }
            // The transaction goes out in parts (MULTI, each command, EXEC), each awaited. Sent
            // as one pipeline, the Redis client held a 10,000-run burst three times over (its
            // commands, the packed pipeline, the socket buffer: ~31 MB, heaptrack); in parts it
            // holds one LPUSH of LPUSH_ARGS envelopes. Redis runs the queued commands at EXEC,
            // all or none (none if the WATCHed keys changed), as before.
            redis::cmd("MULTI").query_async::<()>(conn).await?;
            redis::cmd("SADD")
                .arg(&keys[0])
                .arg(fresh.iter().map(|m| m.0).collect::<Vec<_>>())
                .query_async::<()>(conn)
                .await?;
            redis::cmd("EXPIRE")
                .arg(&keys[0])
                // Alive while it is the previous window's record too.
                .arg(2 * self.window + 60)
                .query_async::<()>(conn)
                .await?;
            let envelopes: Vec<(&str, &str)> = fresh.iter().map(|m| (m.1, m.2)).collect();
            for (list, envelopes) in by_list(&envelopes) {
                for chunk in envelopes.chunks(LPUSH_ARGS) {
                    redis::cmd("LPUSH")
                        .arg(list)
                        .arg(chunk)
                        .query_async::<()>(conn)
                        .await?;
                }
            }
            // Nil: the record or the epoch changed since WATCH (another publisher); look again.
            match redis::cmd("EXEC").query_async::<redis::Value>(conn).await? {
                redis::Value::Nil => continue,
                replies => {
                    replies.extract_error()?;
                    return Ok(());
                }
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

/// The record of window `now / window` and of the one before.
fn record_keys(prefix: &str, window: u64, now: i64) -> [String; 2] {
    let n = now.max(0) as u64 / window.max(1);
    [
        format!("{prefix}:{n}"),
        format!("{prefix}:{}", n.saturating_sub(1)),
    ]
}

/// Envelopes grouped by list, each group in the batch's order (one LPUSH per list keeps the
/// order Celery consumes them in: LPUSH a b c, then BRPOP takes a first).
fn by_list<'a>(messages: &[(&'a str, &'a str)]) -> Vec<(&'a str, Vec<&'a str>)> {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for &(list, envelope) in messages {
        let i = *index.entry(list).or_insert_with(|| {
            groups.push((list, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(envelope);
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
    fn envelopes_are_grouped_by_list_in_order() {
        let ms = [("celery", "env-a"), ("high", "env-b"), ("celery", "env-c")];
        assert_eq!(
            by_list(&ms),
            vec![("celery", vec!["env-a", "env-c"]), ("high", vec!["env-b"])]
        );
    }
}
