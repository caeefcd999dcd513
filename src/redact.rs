//! Credentials out of everything kube-beat prints. The database, broker and result-backend URLs
//! carry passwords; an error, a log line, an Event or a status message names them only through
//! [`url`], which keeps what helps to find a mistake (scheme, user, host, port, path) and masks the
//! rest.

use std::fmt;

/// Stands in for a masked value.
const MASK: &str = "***";

/// Query keys whose values are masked: `password` (libpq, sqlx), `sslpassword`, `pass` (redis
/// unix sockets), tokens, keys. Matched as substrings, case-insensitively: masking a harmless
/// parameter costs little, printing a secret one is the failure this module exists to prevent.
const SECRET_KEYS: &[&str] = &[
    "pass", "pwd", "secret", "token", "key", "auth", "cred", "sig",
];

/// A URL with its credentials masked: the only form in which a configured URL may be printed.
/// Built by [`url`]; holding one (rather than a `String`) in an error says it was redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// `scheme://user:password@host/...` as `scheme://user:***@host/...`; secret-looking query
/// values (`?password=...`) masked too. Celery's `;`-separated failover lists are redacted
/// part by part. Text that does not parse as a URL with a host is not echoed at all (only why
/// it does not parse): where its password is cannot be known.
pub fn url(raw: &str) -> RedactedUrl {
    let parts: Vec<String> = raw.trim().split(';').map(|p| one(p.trim())).collect();
    RedactedUrl(parts.join(";"))
}

fn one(raw: &str) -> String {
    let mut url = match url::Url::parse(raw) {
        Ok(url) => url,
        // url's parse errors are fixed phrases ("invalid port number"): they never quote input.
        Err(e) => return format!("<unparseable URL: {e}>"),
    };
    // `scheme:user:pw@host` (no `//`) puts everything after the scheme in an opaque path.
    // (`redis+unix:///run/redis.sock` has `//` and an empty host.)
    let after_scheme = url.as_str().get(url.scheme().len()..).unwrap_or_default();
    if !after_scheme.starts_with("://") {
        return "<unparseable URL: no //host>".to_string();
    }
    if url.password().is_some() && url.set_password(Some(MASK)).is_err() {
        return "<unparseable URL: password cannot be masked>".to_string();
    }
    // A password with an unencoded `/` ends the authority early and spills into the path
    // (`redis://u:ab/cd@host`): an `@` there is the sign.
    if url.path().contains('@') {
        url.set_path(MASK);
    }
    if url.fragment().is_some_and(|f| f.contains('@')) {
        url.set_fragment(Some(MASK));
    }
    if url.query_pairs().any(|(k, _)| secret_key(&k)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret_key(&k) {
                    MASK.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| key.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_shape_of_credential() {
        let cases = [
            // (input, expected)
            (
                "postgresql://kb:s3cr3t@db:5432/kube_beat",
                "postgresql://kb:***@db:5432/kube_beat",
            ),
            ("postgres://kb@db/kube_beat", "postgres://kb@db/kube_beat"),
            ("postgres://db/kube_beat", "postgres://db/kube_beat"),
            (
                "postgresql://kb:p%40ss%2Fw%3Ard@db/kb",
                "postgresql://kb:***@db/kb",
            ),
            // An unencoded `@` in the password: the last `@` ends the user info.
            ("postgresql://kb:p@ss@db/kb", "postgresql://kb:***@db/kb"),
            (
                "postgresql://db/kb?user=kb&password=s3cr3t&sslmode=require",
                "postgresql://db/kb?user=kb&password=***&sslmode=require",
            ),
            (
                "postgresql://db/kb?sslpassword=s3cr3t",
                "postgresql://db/kb?sslpassword=***",
            ),
            (
                "db+postgresql+psycopg2://u:s3cr3t@h:5432/db",
                "db+postgresql+psycopg2://u:***@h:5432/db",
            ),
            ("redis://:s3cr3t@redis:6379/0", "redis://:***@redis:6379/0"),
            (
                "rediss://default:s3cr3t@redis:6380/1",
                "rediss://default:***@redis:6380/1",
            ),
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=s3cr3t",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
            (
                "amqp://guest:guest@127.0.0.1:5672//",
                "amqp://guest:***@127.0.0.1:5672//",
            ),
            (
                "amqps://app:s3cr3t@mq.example:5671/prod",
                "amqps://app:***@mq.example:5671/prod",
            ),
            ("ftp://u:s3cr3t@127.0.0.1/", "ftp://u:***@127.0.0.1/"),
            // A password with an unencoded `/` spills into the path.
            ("redis://u:12/s3cr3t@host/0", "redis://u:12/***"),
            // Celery's failover lists.
            (
                "sentinel://:s3cr3t@h1:26379;sentinel://:s3cr3t@h2:26379",
                "sentinel://:***@h1:26379;sentinel://:***@h2:26379",
            ),
            // Not echoed at all.
            ("s3cr3t", "<unparseable URL: relative URL without a base>"),
            ("kb:s3cr3t@db:5432/kb", "<unparseable URL: no //host>"),
            ("kb:/s3cr3t", "<unparseable URL: no //host>"),
            (
                "postgresql://kb:s3/cr3t@db/kb",
                "<unparseable URL: invalid port number>",
            ),
            (
                "redis://:s3cr3t@[::1/0",
                "<unparseable URL: invalid IPv6 address>",
            ),
            ("", "<unparseable URL: relative URL without a base>"),
        ];
        for (input, expected) in cases {
            let got = url(input);
            assert_eq!(got.as_str(), expected, "redacting {input:?}");
            assert!(!got.as_str().contains("s3cr3t"), "{input:?} -> {got}");
            assert_eq!(format!("{got:?}"), format!("{expected:?}"));
        }
    }
}
