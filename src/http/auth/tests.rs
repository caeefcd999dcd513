//! The authenticator against a fake apiserver, and its pure parts.

use super::*;
use k8s_openapi::api::authentication::v1::UserInfo;

fn status(authenticated: bool, audiences: Option<&[&str]>) -> TokenReviewStatus {
    TokenReviewStatus {
        authenticated: Some(authenticated),
        audiences: audiences.map(|a| a.iter().map(|s| s.to_string()).collect()),
        user: Some(UserInfo {
            username: Some("alice".into()),
            uid: Some("u1".into()),
            groups: Some(vec!["team-a".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn auds(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_review_asks_for_the_configured_audiences_only_when_there_are_some() {
    let r = token_review("t0k", &auds(&["kube-beat", "other"]));
    assert_eq!(r.spec.token, "t0k");
    assert_eq!(r.spec.audiences, Some(auds(&["kube-beat", "other"])));
    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["spec"]["audiences"][0], "kube-beat");
    // None configured: no audiences field, so the apiserver uses its own.
    let r = token_review("t0k", &[]);
    assert_eq!(r.spec.audiences, None);
    let json = serde_json::to_value(&r).expect("json");
    assert!(json["spec"].get("audiences").is_none(), "{json}");
}

#[test]
fn a_token_must_be_valid_for_one_of_the_audiences() {
    let wanted = auds(&["kube-beat", "backup"]);
    let user = accepted(status(true, Some(&["backup"])), &wanted).expect("intersects");
    assert_eq!(
        user,
        User {
            name: "alice".into(),
            uid: Some("u1".into()),
            groups: vec!["team-a".into()],
        }
    );
    for theirs in [
        None,
        Some(&[][..]),
        Some(&["https://kubernetes.default.svc"][..]),
    ] {
        let err = accepted(status(true, theirs), &wanted).expect_err("no intersection");
        assert!(err.contains("audiences (kube-beat, backup)"), "{err}");
    }
    // No audiences configured: whatever the apiserver returned is fine.
    assert!(accepted(status(true, None), &[]).is_ok());
    assert!(accepted(status(true, Some(&["x"])), &[]).is_ok());
}

#[test]
fn unauthenticated_or_nameless_tokens_are_refused() {
    assert!(accepted(status(false, Some(&["kube-beat"])), &auds(&["kube-beat"])).is_err());
    assert!(accepted(TokenReviewStatus::default(), &[]).is_err());
    let mut nameless = status(true, None);
    if let Some(u) = nameless.user.as_mut() {
        u.username = None;
    }
    assert!(accepted(nameless, &[]).is_err());
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    assert_eq!(retry_after_secs(Duration::from_secs(50)), 50);
    assert_eq!(retry_after_secs(Duration::from_millis(49_001)), 50);
    assert_eq!(retry_after_secs(Duration::ZERO), 1);
}

#[tokio::test]
async fn credentials_take_the_bearer_token_and_the_peer_address() {
    let peer: SocketAddr = "10.1.2.3:4567".parse().expect("addr");
    let (mut parts, ()) = axum::http::Request::builder()
        .header("authorization", "Bearer  abc ")
        .extension(ConnectInfo(peer))
        .body(())
        .expect("request")
        .into_parts();
    let c = Credentials::from_request_parts(&mut parts, &())
        .await
        .expect("infallible");
    assert_eq!(c.token.as_deref(), Some("abc"));
    assert_eq!(c.peer, Some(peer.ip()));
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("abc") && shown.contains("10.1.2.3"),
        "{shown}"
    );
    let (mut parts, ()) = axum::http::Request::builder()
        .header("authorization", "Basic abc")
        .body(())
        .expect("request")
        .into_parts();
    let c = Credentials::from_request_parts(&mut parts, &())
        .await
        .expect("infallible");
    assert_eq!((c.token, c.peer), (None, None));
}

/// A kube Client whose "apiserver" answers TokenReviews: `good` is the one valid token (user
/// alice, audience `kube-beat`); every review is counted.
fn fake_apiserver() -> (Client, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
    let reviews = Arc::new(AtomicUsize::new(0));
    let counted = reviews.clone();
    let svc = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            let body = req.into_body().collect_bytes().await?;
            let review: TokenReview = serde_json::from_slice(&body)?;
            let good = review.spec.token == "good";
            let answer = TokenReview {
                spec: review.spec,
                status: Some(if good {
                    status(true, Some(&["kube-beat"]))
                } else {
                    TokenReviewStatus {
                        authenticated: Some(false),
                        ..Default::default()
                    }
                }),
                ..Default::default()
            };
            let mut json = serde_json::to_value(&answer)?;
            json["apiVersion"] = "authentication.k8s.io/v1".into();
            json["kind"] = "TokenReview".into();
            let resp = axum::http::Response::builder()
                .header("content-type", "application/json")
                .body(kube::client::Body::from(serde_json::to_vec(&json)?))?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(resp)
        }
    });
    (Client::new(svc, "default"), reviews)
}

fn creds(token: &str, peer: &str) -> Credentials {
    Credentials {
        token: Some(token.to_string()),
        peer: Some(peer.parse().expect("ip")),
    }
}

#[tokio::test]
async fn rejected_tokens_are_cached_and_a_failing_source_gets_429_without_reviews() {
    use std::sync::atomic::Ordering;
    let (client, reviews) = fake_apiserver();
    let auth = Authenticator::new(AuthMode::Kubernetes, client, vec![]);
    let n = || reviews.load(Ordering::SeqCst);
    // A valid token: one review, then cached.
    for _ in 0..3 {
        let c = auth.authenticate(&creds("good", "10.0.0.1")).await;
        assert!(
            matches!(c, Ok(Caller::User(ref u)) if u.name == "alice"),
            "{c:?}"
        );
    }
    assert_eq!(n(), 1);
    // The same bad token again and again: one review (then the negative cache), but each
    // is a failure of its source.
    for i in 0..MAX_FAILURES {
        let e = auth.authenticate(&creds("bad", "10.0.0.2")).await;
        assert!(
            matches!(e, Err(AuthError::Unauthenticated(_))),
            "{i}: {e:?}"
        );
    }
    assert_eq!(n(), 2);
    // Over the limit: 429 for unknown tokens, with no review.
    for t in ["bad", "other-bad", "good-but-unseen"] {
        let e = auth.authenticate(&creds(t, "10.0.0.2")).await;
        match e {
            Err(AuthError::TooManyFailures(wait)) => assert!(
                wait <= FAILURE_WINDOW && wait > FAILURE_WINDOW / 2,
                "{wait:?}"
            ),
            other => panic!("{t}: {other:?}"),
        }
    }
    assert_eq!(n(), 2);
    // A token already known valid still works from there (it costs nothing); other sources
    // are not affected.
    assert!(auth.authenticate(&creds("good", "10.0.0.2")).await.is_ok());
    let e = auth.authenticate(&creds("fresh-bad", "10.0.0.3")).await;
    assert!(matches!(e, Err(AuthError::Unauthenticated(_))), "{e:?}");
    assert_eq!(n(), 3);
    // The caches hold hashes, never the token.
    let key: TokenKey = Sha256::digest(b"bad").into();
    assert!(auth.rejected.get(&key).is_some());
}

#[tokio::test]
async fn distinct_garbage_tokens_cost_at_most_the_limit_in_reviews() {
    use std::sync::atomic::Ordering;
    let (client, reviews) = fake_apiserver();
    let auth = Authenticator::new(AuthMode::Kubernetes, client, vec![]);
    let mut codes = Vec::new();
    for i in 0..100 {
        match auth
            .authenticate(&creds(&format!("junk-{i}"), "192.0.2.7"))
            .await
        {
            Err(AuthError::Unauthenticated(_)) => codes.push(401),
            Err(AuthError::TooManyFailures(_)) => codes.push(429),
            other => panic!("{other:?}"),
        }
    }
    let limit = MAX_FAILURES as usize;
    assert_eq!(reviews.load(Ordering::SeqCst), limit);
    assert!(codes[..limit].iter().all(|c| *c == 401));
    assert!(codes[limit..].iter().all(|c| *c == 429));
}

#[tokio::test]
async fn a_valid_token_for_another_audience_is_refused_and_counted() {
    use std::sync::atomic::Ordering;
    let (client, reviews) = fake_apiserver();
    // The fake says the token is for `kube-beat`; this installation wants `backup`.
    let auth = Authenticator::new(AuthMode::Kubernetes, client, vec![" backup ".into()]);
    let e = auth.authenticate(&creds("good", "10.0.0.1")).await;
    assert!(
        matches!(e, Err(AuthError::Unauthenticated(ref m)) if m.contains("audiences (backup)")),
        "{e:?}"
    );
    let e = auth.authenticate(&creds("good", "10.0.0.1")).await;
    assert!(matches!(e, Err(AuthError::Unauthenticated(_))), "{e:?}");
    assert_eq!(reviews.load(Ordering::SeqCst), 1, "the refusal is cached");
    let (client, _) = fake_apiserver();
    let auth = Authenticator::new(AuthMode::Kubernetes, client, vec!["kube-beat".into()]);
    assert!(auth.authenticate(&creds("good", "10.0.0.1")).await.is_ok());
}

#[tokio::test]
async fn cached_identities_and_refusals_expire_after_their_ttl() {
    use std::sync::atomic::Ordering;
    let (client, reviews) = fake_apiserver();
    let ms = Duration::from_millis;
    let ttls = Ttls {
        token: ms(150),
        rejected: ms(150),
        decision: ms(150),
    };
    let auth = Authenticator::with_ttls(AuthMode::Kubernetes, client, vec![], ttls);
    let n = || reviews.load(Ordering::SeqCst);
    for token in ["good", "bad"] {
        let _first = auth.authenticate(&creds(token, "10.0.0.1")).await;
        let _cached = auth.authenticate(&creds(token, "10.0.0.1")).await;
    }
    assert_eq!(n(), 2, "one review per token while cached");
    tokio::time::sleep(ms(300)).await;
    let c = auth.authenticate(&creds("good", "10.0.0.1")).await;
    assert!(matches!(c, Ok(Caller::User(_))), "{c:?}");
    let e = auth.authenticate(&creds("bad", "10.0.0.1")).await;
    assert!(matches!(e, Err(AuthError::Unauthenticated(_))), "{e:?}");
    assert_eq!(n(), 4, "expired entries are reviewed again");
}

#[test]
fn the_caches_are_bounded() {
    let cache = ttl_cache::<u32, bool>(Duration::from_secs(60), 50);
    for i in 0..5_000 {
        cache.insert(i, true);
    }
    cache.run_pending_tasks();
    assert!(cache.entry_count() <= 50, "{}", cache.entry_count());
    // And entries do land (not a cache that keeps nothing).
    cache.insert(9_999, false);
    assert_eq!(cache.get(&9_999), Some(false));
}
