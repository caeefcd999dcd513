//! A Redis server as Celery names it, for the broker and the result backend alike: a
//! `redis://` / `rediss://` URL, or Sentinel's `sentinel://[:password@]host:port[/db];sentinel://host2:port;...`
//! with the transport option `master_name` (the master is asked of the Sentinels on every
//! (re)connect, so a failover is followed); plus Celery's `global_keyprefix` transport option.
//!
//! Transport options are given as Celery spells them (`broker_transport_options`,
//! `result_backend_transport_options`): a JSON object with `master_name`, `global_keyprefix` and
//! `sentinel_kwargs` (`password`, `username`: the Sentinels' own credentials, as kombu passes them
//! to redis-py). Anything else is refused by name, so a typo never silently does nothing.

use redis::{
    IntoConnectionInfo,
    aio::{ConnectionManager, ConnectionManagerConfig},
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::redact;

/// The JSON text of a transport option set, at most.
pub const OPTIONS_MAX_BYTES: usize = 4096;
/// `master_name`, `global_keyprefix`, a Sentinel user name or password, at most (characters).
pub const OPTION_MAX_CHARS: usize = 256;
/// Sentinels in one URL, at most.
pub const SENTINELS_MAX: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("transport options: {0}")]
    Options(String),
    #[error("invalid Sentinel URL {url}: {reason}")]
    Sentinel {
        url: redact::RedactedUrl,
        reason: String,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Celery's transport options that mean something to kube-beat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportOptions {
    /// The Sentinel service name of the master (`sentinel://` URLs only; required there).
    pub master_name: Option<String>,
    /// Prepended to every key (kombu: the queue lists, `_kombu.binding.*`, `unacked*`; Celery's
    /// result backend: `celery-task-meta-*`).
    #[serde(default)]
    pub global_keyprefix: String,
    /// The Sentinels' own credentials (kombu passes `sentinel_kwargs` to redis-py's Sentinel).
    #[serde(default)]
    pub sentinel_kwargs: SentinelKwargs,
}

#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelKwargs {
    pub username: Option<String>,
    pub password: Option<String>,
}

// By hand: the password must never reach a log line.
impl std::fmt::Debug for SentinelKwargs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelKwargs")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl TransportOptions {
    /// Parse Celery-style transport options (a JSON object; empty means none), bounded.
    /// Error messages name the option, never its value (a password may be among them).
    pub fn parse(json: Option<&str>) -> Result<TransportOptions, TargetError> {
        let json = json.map(str::trim).unwrap_or("");
        if json.is_empty() {
            return Ok(TransportOptions::default());
        }
        if json.len() > OPTIONS_MAX_BYTES {
            return Err(TargetError::Options(format!(
                "longer than {OPTIONS_MAX_BYTES} bytes"
            )));
        }
        // serde_json's messages quote unknown field names and types, never string values.
        let expected = |e: &dyn std::fmt::Display| {
            TargetError::Options(format!(
                "{e} (expected a JSON object with master_name, global_keyprefix, sentinel_kwargs)"
            ))
        };
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| expected(&e))?;
        // An object only: serde would take a list as the fields in order.
        if !value.is_object() {
            return Err(expected(&"not an object"));
        }
        let options: TransportOptions = serde_json::from_value(value).map_err(|e| expected(&e))?;
        let fields = [
            ("master_name", options.master_name.as_deref()),
            ("global_keyprefix", Some(options.global_keyprefix.as_str())),
            (
                "sentinel_kwargs.username",
                options.sentinel_kwargs.username.as_deref(),
            ),
            (
                "sentinel_kwargs.password",
                options.sentinel_kwargs.password.as_deref(),
            ),
        ];
        for (name, value) in fields {
            let Some(value) = value else { continue };
            if value.chars().count() > OPTION_MAX_CHARS {
                return Err(TargetError::Options(format!(
                    "{name} is longer than {OPTION_MAX_CHARS} characters"
                )));
            }
            if value.chars().any(char::is_control) {
                return Err(TargetError::Options(format!(
                    "{name} contains control characters"
                )));
            }
        }
        if options.master_name.as_deref() == Some("") {
            return Err(TargetError::Options("master_name is empty".into()));
        }
        Ok(options)
    }
}

/// Whether `url` names Redis: `redis://`, `rediss://` or `sentinel://`.
pub fn is_redis(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("sentinel://")
}

/// Where Redis is: one server, or the master of a Sentinel service.
pub enum RedisTarget {
    Direct(redis::Client),
    /// Asked for the master on every (re)connect.
    Sentinel {
        client: Mutex<SentinelClient>,
        db: i64,
    },
}

impl RedisTarget {
    /// Check and build without connecting: a URL or option that cannot work is an error at
    /// start. Errors show the URL redacted.
    pub fn new(url: &str, options: &TransportOptions) -> Result<RedisTarget, TargetError> {
        if !url.starts_with("sentinel://") {
            // redis's parse errors are fixed phrases, never the URL.
            return Ok(RedisTarget::Direct(redis::Client::open(url)?));
        }
        let invalid = |reason: &str| TargetError::Sentinel {
            url: redact::url(url),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = url
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.len() > SENTINELS_MAX {
            return Err(invalid(&format!("more than {SENTINELS_MAX} Sentinels")));
        }
        let mut addrs = Vec::new();
        let mut first = None;
        for part in &parts {
            let Some(rest) = part.strip_prefix("sentinel://") else {
                return Err(invalid(
                    "every `;`-separated part must start with sentinel://",
                ));
            };
            // Parsed as the redis URL it would be: host, port, password, db.
            let info = format!("redis://{rest}")
                .into_connection_info()
                .map_err(|e| invalid(&e.to_string()))?;
            addrs.push(info.addr().clone());
            first.get_or_insert(info);
        }
        let Some(first) = first else {
            return Err(invalid("no Sentinel named"));
        };
        let master = options.master_name.as_deref().ok_or_else(|| {
            TargetError::Options("master_name is required with a sentinel:// URL".into())
        })?;
        // As kombu: the first URL's credentials and db are the master's.
        let settings = first.redis_settings();
        let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?
            .set_client_to_redis_db(settings.db());
        if let Some(user) = settings.username() {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = settings.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(user) = &options.sentinel_kwargs.username {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = &options.sentinel_kwargs.password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        Ok(RedisTarget::Sentinel {
            client: Mutex::new(builder.build()?),
            db: settings.db(),
        })
    }

    /// The database number (for kombu's pidbox channel `/{db}.celery.pidbox`).
    pub fn db(&self) -> i64 {
        match self {
            RedisTarget::Direct(c) => c.get_connection_info().redis_settings().db(),
            RedisTarget::Sentinel { db, .. } => *db,
        }
    }

    /// A client of the server to talk to now (behind Sentinel: the current master).
    pub async fn client(&self) -> Result<redis::Client, redis::RedisError> {
        match self {
            RedisTarget::Direct(c) => Ok(c.clone()),
            RedisTarget::Sentinel { client, .. } => client.lock().await.async_get_client().await,
        }
    }

    /// A self-reconnecting connection. Behind Sentinel it reconnects to the master it was made
    /// for; [`SharedConn`] makes a new one (asking the Sentinels) when that master is gone.
    pub async fn manager(
        &self,
        config: ConnectionManagerConfig,
    ) -> Result<ConnectionManager, redis::RedisError> {
        ConnectionManager::new_with_config(self.client().await?, config).await
    }
}

/// A [`ConnectionManager`] of a [`RedisTarget`], replaced after an error that says the server
/// is gone or no longer the master (a Sentinel failover): the next use asks the Sentinels again.
/// For a plain URL the manager reconnects by itself and is kept.
pub struct SharedConn {
    target: RedisTarget,
    config: ConnectionManagerConfig,
    conn: Mutex<Option<ConnectionManager>>,
}

impl SharedConn {
    pub async fn connect(
        target: RedisTarget,
        config: ConnectionManagerConfig,
    ) -> Result<SharedConn, redis::RedisError> {
        let conn = target.manager(config.clone()).await?;
        Ok(SharedConn {
            target,
            config,
            conn: Mutex::new(Some(conn)),
        })
    }

    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// The connection to use now.
    pub async fn get(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.target.manager(self.config.clone()).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Note an error from a command on [`SharedConn::get`]'s connection: behind Sentinel, one
    /// that says the master is gone (unreachable, or now a replica: READONLY) drops the
    /// connection so the next use finds the new master.
    pub async fn failed(&self, e: &redis::RedisError) {
        if matches!(self.target, RedisTarget::Sentinel { .. }) && master_gone(e) {
            *self.conn.lock().await = None;
        }
    }
}

/// An error after which the master should be asked of the Sentinels again.
pub fn master_gone(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_options_as_celery_spells_them() {
        assert_eq!(
            TransportOptions::parse(None).unwrap(),
            TransportOptions::default()
        );
        assert_eq!(
            TransportOptions::parse(Some("  ")).unwrap(),
            TransportOptions::default()
        );
        let o = TransportOptions::parse(Some(
            r#"{"master_name": "mymaster", "global_keyprefix": "x:", "sentinel_kwargs": {"password": "s3cr3t"}}"#,
        ))
        .unwrap();
        assert_eq!(o.master_name.as_deref(), Some("mymaster"));
        assert_eq!(o.global_keyprefix, "x:");
        assert_eq!(o.sentinel_kwargs.password.as_deref(), Some("s3cr3t"));
        assert!(!format!("{o:?}").contains("s3cr3t"));
        for (bad, said) in [
            (
                r#"{"visibility_timout": 1}"#,
                "unknown field `visibility_timout`",
            ),
            (r#"["x"]"#, "expected a JSON object"),
            (r#"{"master_name": ""}"#, "master_name is empty"),
            (
                r#"{"global_keyprefix": "a\nb"}"#,
                "global_keyprefix contains control",
            ),
            (
                r#"{"sentinel_kwargs": {"pasword": "s3cr3t"}}"#,
                "unknown field `pasword`",
            ),
            (r#"{"sentinel_kwargs": {"password": 5}}"#, "invalid type"),
        ] {
            let e = TransportOptions::parse(Some(bad))
                .expect_err(bad)
                .to_string();
            assert!(e.contains(said), "{bad}: {e}");
            assert!(!e.contains("s3cr3t"), "{bad}: {e}");
        }
        let long = format!(r#"{{"global_keyprefix": "{}"}}"#, "x".repeat(300));
        assert!(
            TransportOptions::parse(Some(&long))
                .unwrap_err()
                .to_string()
                .contains("longer than 256")
        );
        let huge = format!(r#"{{"global_keyprefix": "{}"}}"#, "x".repeat(5000));
        assert!(
            TransportOptions::parse(Some(&huge))
                .unwrap_err()
                .to_string()
                .contains("longer than 4096 bytes")
        );
    }

    #[test]
    fn sentinel_urls_as_celery_spells_them() {
        let with_master = TransportOptions {
            master_name: Some("mymaster".into()),
            ..Default::default()
        };
        let t = RedisTarget::new(
            "sentinel://:s3cr3t@127.0.0.1:26379/3;sentinel://127.0.0.1:26380",
            &with_master,
        )
        .unwrap();
        assert!(matches!(t, RedisTarget::Sentinel { db: 3, .. }));
        assert_eq!(t.db(), 3);
        let e = RedisTarget::new("sentinel://127.0.0.1:26379", &TransportOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("master_name is required"), "{e}");
        for bad in [
            "sentinel://:s3cr3t@127.0.0.1:26379;redis://127.0.0.1:6379",
            "sentinel://:s3cr3t@127.0.0.1:port",
        ] {
            let e = RedisTarget::new(bad, &with_master)
                .err()
                .expect(bad)
                .to_string();
            assert!(e.starts_with("invalid Sentinel URL"), "{bad}: {e}");
            assert!(!e.contains("s3cr3t"), "{bad}: {e}");
        }
        assert!(matches!(
            RedisTarget::new("redis://127.0.0.1:6379/2", &with_master).unwrap(),
            RedisTarget::Direct(_)
        ));
    }
}
