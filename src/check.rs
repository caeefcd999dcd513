//! `kube-beat check`: what the chart's `helm test` pod runs against the release's Service. It asks
//! `/readyz` (the replica serving the Service has synced its caches and migrated) and
//! `/api/v1/jobs` with the pod's ServiceAccount token (the API's TokenReview and
//! SubjectAccessReview path, so the release's RBAC is exercised too). One line per check; the whole
//! run is bounded by a timeout. The token is only ever sent as a header: never printed or logged.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::{
    Request, StatusCode,
    body::Bytes,
    header::{AUTHORIZATION, HOST, HeaderValue},
};
use hyper_util::rt::TokioIo;

/// Where Kubernetes mounts a pod's ServiceAccount token.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// A token file larger than this is not a token (projected tokens are a few KiB).
const MAX_TOKEN_BYTES: u64 = 64 * 1024;
/// How much of a failed response's body is shown (the API's error message), in characters.
const MAX_BODY_SHOWN: usize = 200;
/// How much of a response body is read at most.
const MAX_BODY_READ: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("--url {0:?}: {1}")]
    Url(String, String),
    #[error("reading the token file {path}: {source}")]
    TokenRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the token file {0} is not a regular file, is empty, is larger than 64 KiB or is not a valid header value"
    )]
    TokenInvalid(PathBuf),
    #[error("{failed} of {total} checks failed")]
    Failed { failed: usize, total: usize },
}

/// What to check and how.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Base URL of the kube-beat Service, e.g. `http://kube-beat.kube-beat.svc:8080`.
    pub url: String,
    /// The bearer token's file; `None`: call the API without one (`api.auth=none`).
    pub token_file: Option<PathBuf>,
    /// The whole run, all checks together.
    pub timeout: Duration,
}

/// The result of one check, printed as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub ok: bool,
    pub text: String,
}

/// Run the checks, print one line per check to stdout; `Err(Failed)` when any failed.
pub async fn run(opts: &CheckOptions) -> Result<(), CheckError> {
    let lines = checks(opts).await?;
    for l in &lines {
        println!("{} {}", if l.ok { "ok  " } else { "FAIL" }, l.text);
    }
    let failed = lines.iter().filter(|l| !l.ok).count();
    if failed > 0 {
        return Err(CheckError::Failed {
            failed,
            total: lines.len(),
        });
    }
    Ok(())
}

/// The checks' results (configuration errors are `Err`, failed checks are lines).
pub async fn checks(opts: &CheckOptions) -> Result<Vec<CheckLine>, CheckError> {
    let base = Base::parse(&opts.url)?;
    let token = opts.token_file.as_deref().map(read_token).transpose()?;
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let ready = base
        .expect_ok("/readyz", None, deadline, opts.timeout)
        .await;
    let who = if token.is_some() {
        "with the ServiceAccount token"
    } else {
        "without a token"
    };
    let mut api = base
        .expect_ok("/api/v1/jobs", token.as_ref(), deadline, opts.timeout)
        .await;
    api.text = format!("{} ({who})", api.text);
    Ok(vec![ready, api])
}

/// The token as an `Authorization` header value, marked sensitive (hyper keeps it out of `Debug`).
/// Only a regular file is opened (a FIFO would block the open until a writer came), and at most
/// [`MAX_TOKEN_BYTES`] + 1 bytes of it are read, whatever it grows to meanwhile.
fn read_token(path: &Path) -> Result<HeaderValue, CheckError> {
    use std::io::Read;
    let read_error = |source| CheckError::TokenRead {
        path: path.to_path_buf(),
        source,
    };
    let invalid = || CheckError::TokenInvalid(path.to_path_buf());
    // Follows symbolic links: the kubelet's projected token is one.
    if !std::fs::metadata(path).map_err(read_error)?.is_file() {
        return Err(invalid());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read_error)?
        .take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_TOKEN_BYTES {
        return Err(invalid());
    }
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let token = text.trim();
    if token.is_empty() {
        return Err(invalid());
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| invalid())?;
    value.set_sensitive(true);
    Ok(value)
}

/// `http://host:port` of the Service.
struct Base {
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    /// What the lines show (the URL without user info, query or path).
    shown: String,
}

impl Base {
    fn parse(raw: &str) -> Result<Base, CheckError> {
        // The URL as shown in errors: without a password someone may have put in it.
        let bad = |why: &str| CheckError::Url(crate::redact::url(raw).to_string(), why.to_string());
        let url = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
        // The chart's Service speaks plain HTTP inside the cluster; TLS is a proxy's business.
        if url.scheme() != "http" {
            return Err(bad("only http:// is supported"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "no user info in the URL: the token comes from --token-file",
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        Ok(Base {
            shown: format!("http://{authority}"),
            host,
            port,
            authority,
        })
    }

    /// GET `path`; the line says whether it answered 200.
    async fn expect_ok(
        &self,
        path: &str,
        token: Option<&HeaderValue>,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> CheckLine {
        let what = format!("GET {}{path}", self.shown);
        match tokio::time::timeout_at(deadline, self.get(path, token)).await {
            Err(_) => CheckLine {
                ok: false,
                text: format!("{what}: no answer within {}s", timeout.as_secs()),
            },
            Ok(Err(e)) => CheckLine {
                ok: false,
                text: format!("{what}: {e}"),
            },
            Ok(Ok((status, body))) => {
                let ok = status == StatusCode::OK;
                let mut text = format!("{what}: {status}");
                if !ok {
                    let body = one_line(&body);
                    if !body.is_empty() {
                        text = format!("{text}: {body}");
                    }
                }
                CheckLine { ok, text }
            }
        }
    }

    async fn get(
        &self,
        path: &str,
        token: Option<&HeaderValue>,
    ) -> Result<(StatusCode, String), String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        // The connection task ends with the request (no keep-alive reuse here).
        let conn = tokio::spawn(conn);
        let mut req = Request::get(path)
            .header(HOST, &self.authority)
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("building the request: {e}"))?;
        if let Some(t) = token {
            req.headers_mut().insert(AUTHORIZATION, t.clone());
        }
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY_READ)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        conn.abort();
        Ok((status, body))
    }
}

/// A response body as one bounded line (the API answers errors as JSON `{"error": "..."}`).
fn one_line(body: &str) -> String {
    let msg = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.to_string());
    let flat: String = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.chars().take(MAX_BODY_SHOWN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let b = Base::parse("http://kb-kube-beat.ns.svc:8080").expect("parses");
        assert_eq!((b.host.as_str(), b.port), ("kb-kube-beat.ns.svc", 8080));
        assert_eq!(b.authority, "kb-kube-beat.ns.svc:8080");
        let b = Base::parse("http://[::1]:9/").expect("parses");
        assert_eq!((b.host.as_str(), b.port), ("::1", 9));
        let b = Base::parse("http://example").expect("parses");
        assert_eq!((b.port, b.shown.as_str()), (80, "http://example"));
        assert!(matches!(
            Base::parse("https://x:1"),
            Err(CheckError::Url(..))
        ));
        let e = Base::parse("http://u:secret@x:1").err().expect("refused");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn tokens_are_bounded_and_never_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("token");
        std::fs::write(&f, "abc.def\n").expect("write");
        let v = read_token(&f).expect("reads");
        assert!(v.is_sensitive());
        assert_eq!(v.to_str().expect("ascii"), "Bearer abc.def");
        std::fs::write(&f, "  \n").expect("write");
        assert!(matches!(read_token(&f), Err(CheckError::TokenInvalid(_))));
        std::fs::write(&f, "bad\ntoken-with-newline-inside").expect("write");
        let e = read_token(&f).expect_err("refused");
        assert!(!e.to_string().contains("token-with"), "{e}");
        std::fs::write(&f, vec![b'a'; 70 * 1024]).expect("write");
        assert!(matches!(read_token(&f), Err(CheckError::TokenInvalid(_))));
        // A directory, and a FIFO nobody writes to: refused at once, never waited on.
        assert!(matches!(
            read_token(dir.path()),
            Err(CheckError::TokenInvalid(_))
        ));
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        assert!(matches!(
            read_token(&fifo),
            Err(CheckError::TokenInvalid(_))
        ));
    }

    #[test]
    fn bodies_become_one_short_line() {
        assert_eq!(
            one_line(r#"{"error": "unauthorized:\n bad"}"#),
            "unauthorized: bad"
        );
        assert_eq!(one_line("x".repeat(500).as_str()).len(), MAX_BODY_SHOWN);
    }
}
