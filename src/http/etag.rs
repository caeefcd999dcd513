//! Conditional GETs for the API's reads, so the dashboard can poll for changes ("live" pages)
//! cheaply: every successful GET answer carries an `ETag` (a SHA-256 of its body), and a request
//! whose `If-None-Match` names the current one gets `304 Not Modified` with no body. The query
//! still runs (Postgres is the source; nothing here caches), but the answer, up to 500 jobs, is
//! not sent again, and the page redraws only when something changed.

use axum::{
    body::{Body, HttpBody},
    extract::Request,
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

/// An API answer larger than this is passed on without an ETag (a page of 500 jobs is well
/// under it; a page of executions may not be).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// The strong validator of a body: its SHA-256, the first 128 bits in hex, quoted.
pub fn etag_of(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Whether an `If-None-Match` value names `etag` (a list, `*`, or weak forms of it).
pub fn matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

pub async fn conditional_get(request: Request, next: Next) -> Response {
    if request.method() != Method::GET {
        return next.run(request).await;
    }
    let asked = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let response = next.run(request).await;
    if response.status() != StatusCode::OK {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Larger (or of unknown size): passed on as it is, without an ETag (`executions` pages
    // can be tens of MB when runs carry large arguments and results).
    if body.size_hint().upper().is_none_or(|n| n > MAX_BODY as u64) {
        return Response::from_parts(parts, body);
    }
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "API answer not sent: over {MAX_BODY} bytes, or unreadable");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let etag = etag_of(&bytes);
    let Ok(value) = HeaderValue::from_str(&etag) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    // Always revalidate: an answer is current only until the next run is recorded.
    parts
        .headers
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    parts.headers.insert(header::ETAG, value.clone());
    if asked.is_some_and(|a| matches(&a, &etag)) {
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, value),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
        )
            .into_response();
    }
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{Router, routing::get};
    use tower::ServiceExt;

    async fn get_with(app: &Router, path: &str, tag: Option<&str>) -> Response {
        let mut request = Request::builder().uri(path);
        if let Some(tag) = tag {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        app.clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("response")
    }

    #[tokio::test]
    async fn small_answers_get_an_etag_and_a_304_large_ones_pass_through() {
        let app = Router::new()
            .route("/small", get(|| async { "{\"jobs\":[]}" }))
            .route("/large", get(|| async { "x".repeat(MAX_BODY + 1) }))
            .route(
                "/missing",
                get(|| async { (StatusCode::NOT_FOUND, "{\"error\":\"no\"}") }),
            )
            .layer(axum::middleware::from_fn(conditional_get));
        let first = get_with(&app, "/small", None).await;
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG]
            .to_str()
            .expect("etag")
            .to_string();
        assert_eq!(tag, etag_of(b"{\"jobs\":[]}"));
        let again = get_with(&app, "/small", Some(&tag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let body = axum::body::to_bytes(again.into_body(), 1024)
            .await
            .expect("body");
        assert!(body.is_empty());
        // Over the limit: the whole answer, no ETag.
        let large = get_with(&app, "/large", None).await;
        assert_eq!(large.status(), StatusCode::OK);
        assert!(large.headers().get(header::ETAG).is_none());
        let body = axum::body::to_bytes(large.into_body(), MAX_BODY * 2)
            .await
            .expect("body");
        assert_eq!(body.len(), MAX_BODY + 1);
        // An error answers as it is, whatever the request names.
        let missing = get_with(&app, "/missing", Some("*")).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(missing.headers().get(header::ETAG).is_none());
    }

    #[test]
    fn etags_follow_the_body_and_match_lists_and_weak_forms() {
        let a = etag_of(b"{\"jobs\":[]}");
        let b = etag_of(b"{\"jobs\":[1]}");
        assert_ne!(a, b);
        assert_eq!(a, etag_of(b"{\"jobs\":[]}"));
        assert!(a.starts_with('"') && a.ends_with('"') && a.len() == 34);
        assert!(matches(&a, &a));
        assert!(matches(&format!("W/{a}"), &a));
        assert!(matches(&format!("{b}, {a}"), &a));
        assert!(matches("*", &a));
        assert!(!matches(&b, &a));
        assert!(!matches("", &a));
    }
}
