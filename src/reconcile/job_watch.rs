//! The ScheduledJob watch: kube's watcher, except for the list that starts it.
//!
//! kube's `watcher` lists a page at a time (`limit`), and an apiserver reads a paginated list
//! from etcd, page by page (serving pages from the watch cache came with `ListFromCacheSnapshot`:
//! alpha in 1.33, on by default from 1.34). At 100,000 jobs that list was what kept a restarted
//! replica unready: on this machine's 1.20 apiserver, 49 s for the list alone (pages of 500; 38 s
//! with pages of 5,000; both measured beside a compile), 88-207 s during a 100,000-jobs-a-minute
//! run, against 11-13 s for the same list from the watch cache (`resourceVersion=0`, what
//! client-go's informers ask for).
//! The watch cache has no pages: that list is one response, 80 MB at 100,000 jobs. kube's
//! `any_semantic()` reads such a response whole into memory, copies it, and decodes every object
//! before handing out the first: several times the operator's whole memory budget. No crate
//! decodes a Kubernetes list as it arrives, so this does, by hand: each job goes to the cache as
//! soon as it is decoded, and the response is never held.
//!
//! The watch that follows the list is kube's `Api::watch`, driven as kube's watcher drives it
//! (resume from the last resourceVersion, re-list when it expired, bookmarks, an idle timeout).
//! The events are kube's [`watcher::Event`]s, so the cache ([`super::job_cache`]) and the
//! backoff (`WatchStreamExt::backoff`) work on this stream as on kube's.

use std::{io::Read, time::Duration};

use futures::{AsyncRead, AsyncReadExt, Stream, StreamExt, stream::BoxStream};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, VersionMatch, WatchEvent, WatchParams},
    runtime::watcher::{self, Event},
};
use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess};
use tokio::sync::mpsc;

use super::cached_job::WatchedJob;

/// Jobs decoded ahead of the cache: the list's only memory beyond a read buffer.
const AHEAD: usize = 256;
/// Bytes read from the connection at a time by the decoding thread.
const READ_BUFFER: usize = 64 * 1024;
/// A list that sends nothing (not a byte of a job) for this long is taken as a dead connection
/// and asked again. Generous: the apiserver gathers and encodes the whole list before its first
/// byte (8-12 s at 100,000 jobs on an idle machine here).
const LIST_IDLE: Duration = Duration::from_secs(300);
/// The server ends each watch after this long (kube's watcher asks for the same).
const WATCH_TIMEOUT_S: u32 = 290;
/// A watch with no event (not even a bookmark) for its timeout and this margin is taken as a
/// dead connection and started again.
const IDLE_MARGIN: Duration = Duration::from_secs(5);

type Item = Result<Event<WatchedJob>, watcher::Error>;

/// Watch every ScheduledJob (of `namespace`, or all) as kube's `watcher` would, listing from the
/// watch cache (see the module comment). Errors are yielded, and the stream goes on: the next
/// poll retries (put a backoff on it, as on kube's).
pub fn watch_jobs(
    client: Client,
    namespace: Option<&str>,
) -> impl Stream<Item = Item> + Send + 'static {
    let api: Api<WatchedJob> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let first = State::Empty {
        from: ListFrom::Any,
    };
    // The client and the Api travel in the unfold's state: taken once, not cloned per poll
    // (a list polls once per job).
    futures::stream::unfold(
        (client, api, first),
        |(client, api, mut state)| async move {
            loop {
                let (event, next) = step(&client, &api, state).await;
                state = next;
                if let Some(event) = event {
                    return Some((event, (client, api, state)));
                }
            }
        },
    )
}

enum State {
    /// The next step lists.
    Empty { from: ListFrom },
    /// The list is being decoded (by a thread of its own) into `rx`.
    Listing {
        rx: mpsc::Receiver<Listed>,
        from: ListFrom,
    },
    /// Listed or watched up to `rv`: the next step watches from there.
    Listed { rv: String },
    Watching {
        rv: String,
        stream: BoxStream<'static, kube::Result<WatchEvent<WatchedJob>>>,
    },
}

/// Which state of the jobs a list asks for.
#[derive(Clone, Debug, PartialEq)]
enum ListFrom {
    /// The first list: whatever the watch cache holds (`resourceVersion=0`).
    Any,
    /// A list after the watch expired (410): the watch cache once it holds at least what this
    /// replica already saw. With several apiservers, one's cache can be behind the one the
    /// watch was on; listing from it would bring back deleted jobs and drop new ones.
    NotOlderThan(String),
    /// A consistent read, from etcd (one response all the same): when the cache could not
    /// answer the above (e.g. it stayed behind that resourceVersion).
    MostRecent,
}

impl ListFrom {
    fn params(&self) -> ListParams {
        match self {
            ListFrom::Any => ListParams::default().match_any(),
            ListFrom::NotOlderThan(rv) => ListParams::default()
                .at(rv)
                .matching(VersionMatch::NotOlderThan),
            ListFrom::MostRecent => ListParams::default(),
        }
    }

    /// What to list from after a list from here failed with `e`: the apiserver refusing a
    /// resourceVersion gets a consistent read next; anything else, the same again.
    fn after_failure(self, e: &kube::Error) -> ListFrom {
        match (self, e) {
            (ListFrom::NotOlderThan(_), kube::Error::Api(_)) => ListFrom::MostRecent,
            (from, _) => from,
        }
    }
}

/// What the decoding thread sends: each job, then how the list ended (its resourceVersion).
enum Listed {
    Job(Box<WatchedJob>),
    End(Result<Option<String>, kube::Error>),
}

/// One step: an event to yield (or none, to step again) and the next state.
async fn step(client: &Client, api: &Api<WatchedJob>, state: State) -> (Option<Item>, State) {
    match state {
        State::Empty { from } => match start_list(client, api, &from).await {
            Ok(rx) => (Some(Ok(Event::Init)), State::Listing { rx, from }),
            Err(e) => {
                let from = from.after_failure(&e);
                (
                    Some(Err(watcher::Error::InitialListFailed(e))),
                    State::Empty { from },
                )
            }
        },
        State::Listing { mut rx, from } => {
            match tokio::time::timeout(LIST_IDLE, rx.recv()).await {
                Ok(Some(Listed::Job(job))) => (
                    Some(Ok(Event::InitApply(*job))),
                    State::Listing { rx, from },
                ),
                Ok(Some(Listed::End(Ok(Some(rv))))) if !rv.is_empty() => {
                    (Some(Ok(Event::InitDone)), State::Listed { rv })
                }
                Ok(Some(Listed::End(Ok(_)))) => (
                    Some(Err(watcher::Error::NoResourceVersion)),
                    State::Empty { from },
                ),
                Ok(Some(Listed::End(Err(e)))) => {
                    let from = from.after_failure(&e);
                    (
                        Some(Err(watcher::Error::InitialListFailed(e))),
                        State::Empty { from },
                    )
                }
                // The thread ended without saying how (it panicked), or the list went silent:
                // dropping `rx` stops the thread (see `Blocking`).
                stopped => {
                    let why = match stopped {
                        Err(_) => format!("the list sent nothing for {} s", LIST_IDLE.as_secs()),
                        Ok(_) => "the list's decoder stopped".to_string(),
                    };
                    let e = kube::Error::SerdeError(de::Error::custom(why));
                    (
                        Some(Err(watcher::Error::InitialListFailed(e))),
                        State::Empty { from },
                    )
                }
            }
        }
        State::Listed { rv } => {
            let params = WatchParams::default().timeout(WATCH_TIMEOUT_S);
            match api.watch(&params, &rv).await {
                Ok(stream) => (
                    None,
                    State::Watching {
                        rv,
                        stream: stream.boxed(),
                    },
                ),
                Err(e) => (
                    Some(Err(watcher::Error::WatchStartFailed(e))),
                    State::Listed { rv },
                ),
            }
        }
        State::Watching { rv, mut stream } => {
            let idle = Duration::from_secs(u64::from(WATCH_TIMEOUT_S)) + IDLE_MARGIN;
            let next = tokio::time::timeout(idle, stream.next())
                .await
                .ok()
                .flatten();
            match next {
                Some(Ok(WatchEvent::Added(job) | WatchEvent::Modified(job))) => {
                    watched(job, Event::Apply, rv, stream)
                }
                Some(Ok(WatchEvent::Deleted(job))) => watched(job, Event::Delete, rv, stream),
                Some(Ok(WatchEvent::Bookmark(mark))) => (
                    None,
                    State::Watching {
                        rv: mark.metadata.resource_version,
                        stream,
                    },
                ),
                // 410 Gone: the resourceVersion left the apiserver's window; list again.
                Some(Ok(WatchEvent::Error(e))) if e.code == 410 => (
                    Some(Err(watcher::Error::WatchError(e.boxed()))),
                    State::Empty {
                        from: ListFrom::NotOlderThan(rv),
                    },
                ),
                Some(Ok(WatchEvent::Error(e))) => (
                    Some(Err(watcher::Error::WatchError(e.boxed()))),
                    State::Watching { rv, stream },
                ),
                Some(Err(e)) => (
                    Some(Err(watcher::Error::WatchFailed(e))),
                    State::Watching { rv, stream },
                ),
                // Ended by the server's timeout, or idle: resume where it was.
                None => (None, State::Listed { rv }),
            }
        }
    }
}

/// A watched change, and the watch going on from its resourceVersion (`rv`: the one before).
fn watched(
    job: WatchedJob,
    event: fn(WatchedJob) -> Event<WatchedJob>,
    rv: String,
    stream: BoxStream<'static, kube::Result<WatchEvent<WatchedJob>>>,
) -> (Option<Item>, State) {
    match job.resource_version().filter(|rv| !rv.is_empty()) {
        Some(rv) => (Some(Ok(event(job))), State::Watching { rv, stream }),
        None => (
            Some(Err(watcher::Error::NoResourceVersion)),
            State::Empty {
                from: ListFrom::NotOlderThan(rv),
            },
        ),
    }
}

/// Ask for the list (without pages) and start decoding it on a thread of its own (serde decodes
/// from a blocking reader); the jobs come through the returned channel.
async fn start_list(
    client: &Client,
    api: &Api<WatchedJob>,
    from: &ListFrom,
) -> Result<mpsc::Receiver<Listed>, kube::Error> {
    let request = kube::core::Request::new(api.resource_url())
        .list(&from.params())
        .map_err(kube::Error::BuildRequest)?;
    let body = Box::pin(client.request_stream(request).await?);
    let (tx, rx) = mpsc::channel(AHEAD);
    tokio::task::spawn_blocking(move || {
        let reader = Blocking {
            body,
            wanted: tx.clone(),
        };
        let reader = std::io::BufReader::with_capacity(READ_BUFFER, reader);
        let end = decode_list(reader, |job: WatchedJob| {
            tx.blocking_send(Listed::Job(Box::new(job))).is_ok()
        })
        .map_err(|e| match e.io_error_kind() {
            Some(kind) => kube::Error::ReadEvents(std::io::Error::new(kind, e.to_string())),
            None => kube::Error::SerdeError(e),
        });
        // Nobody to tell if the stream was dropped meanwhile.
        let _ = tx.blocking_send(Listed::End(end));
    });
    Ok(rx)
}

/// The response body as a blocking reader, for the decoding thread (never a runtime thread:
/// `block_on` parks the thread until the connection, driven by the runtime, has bytes). A read
/// ends early once nobody wants the jobs any more (`wanted` closed: the stream was dropped, or
/// gave up on a silent list), so the thread and the connection go with it.
struct Blocking<R> {
    body: std::pin::Pin<Box<R>>,
    wanted: mpsc::Sender<Listed>,
}

impl<R: AsyncRead> Read for Blocking<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Blocking { body, wanted } = self;
        let mut body = body.as_mut();
        let read = body.read(buf);
        let unwanted = std::pin::pin!(wanted.closed());
        match futures::executor::block_on(futures::future::select(read, unwanted)) {
            futures::future::Either::Left((read, _)) => read,
            futures::future::Either::Right(_) => {
                Err(std::io::Error::other("the list is no longer wanted"))
            }
        }
    }
}

/// Decode a Kubernetes list (`{"items": [...], "metadata": {"resourceVersion": ...}, ...}`, in
/// any key order) from `reader`, handing each item to `each` as soon as it is decoded; `each`
/// returning false stops the decoding (an error). Returns the list's resourceVersion.
fn decode_list<T: DeserializeOwned>(
    reader: impl Read,
    each: impl FnMut(T) -> bool,
) -> serde_json::Result<Option<String>> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let rv = ListSeed {
        each,
        item: std::marker::PhantomData,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(rv)
}

/// The list object: `items` go one by one to `each`; `metadata.resourceVersion` is returned.
struct ListSeed<T, F> {
    each: F,
    item: std::marker::PhantomData<fn() -> T>,
}

impl<'de, T: DeserializeOwned, F: FnMut(T) -> bool> DeserializeSeed<'de> for ListSeed<T, F> {
    type Value = Option<String>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned, F: FnMut(T) -> bool> de::Visitor<'de> for ListSeed<T, F> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Kubernetes list")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        #[derive(serde::Deserialize)]
        struct ListMeta {
            #[serde(rename = "resourceVersion")]
            resource_version: Option<String>,
        }
        let mut rv = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "items" => map.next_value_seed(Items {
                    each: &mut self.each,
                    item: self.item,
                })?,
                "metadata" => rv = map.next_value::<ListMeta>()?.resource_version,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(rv)
    }
}

/// The `items` array (or `null`, for none), each element handed on as decoded.
struct Items<'a, T, F> {
    each: &'a mut F,
    item: std::marker::PhantomData<fn() -> T>,
}

impl<'de, T: DeserializeOwned, F: FnMut(T) -> bool> DeserializeSeed<'de> for Items<'_, T, F> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: DeserializeOwned, F: FnMut(T) -> bool> de::Visitor<'de> for Items<'_, T, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the list's items")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<T>()? {
            if !(self.each)(item) {
                return Err(de::Error::custom("the list's reader went away"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(text: &str) -> (Vec<u32>, serde_json::Result<Option<String>>) {
        let mut seen = Vec::new();
        let end = decode_list(text.as_bytes(), |n: u32| {
            seen.push(n);
            true
        });
        (seen, end)
    }

    #[test]
    fn items_are_handed_on_in_order_and_the_resource_version_returned_in_either_key_order() {
        // Custom resources' lists put `items` before `metadata`; built-in types after.
        for text in [
            r#"{"apiVersion":"kubebeat.io/v1alpha1","items":[1,2,3],"kind":"ScheduledJobList","metadata":{"continue":"","resourceVersion":"42"}}"#,
            r#"{"kind":"List","metadata":{"resourceVersion":"42"},"items":[1,2,3],"extra":{"a":[1,{"b":null}]}}"#,
        ] {
            let (seen, end) = decoded(text);
            assert_eq!(seen, [1, 2, 3]);
            assert_eq!(end.expect("decoded").as_deref(), Some("42"));
        }
    }

    #[test]
    fn an_empty_list_and_one_without_a_resource_version() {
        let (seen, end) = decoded(r#"{"items":null,"metadata":{"resourceVersion":"7"}}"#);
        assert!(seen.is_empty());
        assert_eq!(end.expect("decoded").as_deref(), Some("7"));
        let (seen, end) = decoded(r#"{"items":[]}"#);
        assert!(seen.is_empty());
        assert_eq!(end.expect("decoded"), None);
    }

    #[test]
    fn a_cut_off_response_is_an_error_after_the_items_it_held() {
        let (seen, end) = decoded(r#"{"items":[1,2,"#);
        assert_eq!(seen, [1, 2]);
        assert!(end.is_err());
        let (_, end) = decoded(r#"{"items":[1]} trailing"#);
        assert!(end.is_err(), "anything after the list is an error");
    }

    #[test]
    fn the_decoding_stops_when_the_items_are_no_longer_wanted() {
        let mut seen = Vec::new();
        let end = decode_list(r#"{"items":[1,2,3,4]}"#.as_bytes(), |n: u32| {
            seen.push(n);
            n < 2
        });
        assert_eq!(seen, [1, 2]);
        assert!(end.is_err());
    }

    #[test]
    fn jobs_decode_from_a_list_one_at_a_time() {
        let text = serde_json::json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJobList",
            "items": [
                {"metadata": {"name": "a", "namespace": "ns", "uid": "uid-a", "resourceVersion": "5"},
                 "spec": {"taskFunction": "f", "schedule": {"interval": {"hours": 1}}}},
                // Not what the schema says: recorded on the job, not an error for the list.
                {"metadata": {"name": "b", "namespace": "ns", "uid": "uid-b", "resourceVersion": "6"},
                 "spec": {"taskFunction": 3}},
            ],
            "metadata": {"resourceVersion": "9"},
        })
        .to_string();
        let mut names = Vec::new();
        let end = decode_list(text.as_bytes(), |w: WatchedJob| {
            names.push((w.job.name().to_string(), w.resource_version()));
            true
        });
        assert_eq!(end.expect("decoded").as_deref(), Some("9"));
        assert_eq!(
            names,
            [
                ("a".to_string(), Some("5".to_string())),
                ("b".to_string(), Some("6".to_string()))
            ]
        );
    }

    use hyper::body::{Bytes, Frame};

    type Chunks = futures::channel::mpsc::UnboundedReceiver<Result<Frame<Bytes>, std::io::Error>>;
    type Feed = futures::channel::mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>>;

    /// An answer whose body is all there: status and text.
    fn answer(status: u16, text: String) -> (u16, Chunks) {
        let (feed, chunks) = futures::channel::mpsc::unbounded();
        feed.unbounded_send(Ok(Frame::data(Bytes::from(text))))
            .expect("open");
        (status, chunks)
    }

    /// An answer whose body is sent as the test goes (through the returned feed).
    fn answer_fed() -> ((u16, Chunks), Feed) {
        let (feed, chunks) = futures::channel::mpsc::unbounded();
        ((200, chunks), feed)
    }

    /// A fake apiserver answering the job watch's requests in turn from `answers` (500 once
    /// they run out); the request URIs are recorded.
    fn fake_apiserver(
        answers: Vec<(u16, Chunks)>,
    ) -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::sync::{Arc, Mutex};
        let asked = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(std::collections::VecDeque::from(answers)));
        let recorded = asked.clone();
        let svc = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
            recorded.lock().expect("uris").push(req.uri().to_string());
            let (status, chunks) = answers
                .lock()
                .expect("answers")
                .pop_front()
                .unwrap_or_else(|| answer(500, String::new()));
            async move {
                let resp = axum::http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(http_body_util::StreamBody::new(chunks))?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(resp)
            }
        });
        (Client::new(svc, "default"), asked)
    }

    fn job(name: &str, rv: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                         "resourceVersion": rv},
            "spec": {"taskFunction": "f", "schedule": {"interval": {"hours": 1}}},
        })
    }

    fn list(jobs: &[serde_json::Value], rv: &str) -> String {
        serde_json::json!({"apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJobList",
                           "items": jobs, "metadata": {"resourceVersion": rv}})
        .to_string()
    }

    fn events(lines: &[serde_json::Value]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    /// What the stream yielded, as text: `init`, `+name`, `done`, `~name`, `-name`, `error`.
    fn shown(item: &Item) -> String {
        match item {
            Ok(Event::Init) => "init".into(),
            Ok(Event::InitApply(j)) => format!("+{}", j.job.name()),
            Ok(Event::InitDone) => "done".into(),
            Ok(Event::Apply(j)) => format!("~{}", j.job.name()),
            Ok(Event::Delete(j)) => format!("-{}", j.job.name()),
            Err(_) => "error".into(),
        }
    }

    #[tokio::test]
    async fn lists_from_the_watch_cache_resumes_after_bookmarks_and_lists_again_when_gone() {
        let bookmark = serde_json::json!({"type": "BOOKMARK", "object": {
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
            "metadata": {"resourceVersion": "12"}}});
        let gone = serde_json::json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410}});
        let (client, asked) = fake_apiserver(vec![
            answer(200, list(&[job("a", "5"), job("b", "6")], "10")),
            answer(
                200,
                events(&[
                    serde_json::json!({"type": "ADDED", "object": job("c", "11")}),
                    bookmark,
                ]),
            ),
            answer(
                200,
                events(&[
                    serde_json::json!({"type": "DELETED", "object": job("a", "13")}),
                    gone,
                ]),
            ),
            answer(200, list(&[job("b", "6")], "20")),
        ]);
        let stream = watch_jobs(client, Some("ns"));
        let seen: Vec<String> = stream.take(11).map(|i| shown(&i)).collect().await;
        assert_eq!(
            seen,
            [
                "init", "+a", "+b", "done", "~c", "-a", "error", "init", "+b", "done", "error"
            ]
        );
        let asked = asked.lock().expect("uris").clone();
        let path = "/apis/kubebeat.io/v1alpha1/namespaces/ns/scheduledjobs";
        assert_eq!(
            asked[0],
            format!("{path}?&resourceVersion=0&resourceVersionMatch=NotOlderThan")
        );
        assert!(!asked[0].contains("limit"), "the watch cache has no pages");
        assert!(
            asked[1].contains("watch=true") && asked[1].contains("resourceVersion=10"),
            "{}",
            asked[1]
        );
        assert!(
            asked[2].contains("resourceVersion=12"),
            "resumed after the bookmark: {}",
            asked[2]
        );
        assert_eq!(
            asked[3],
            format!("{path}?&resourceVersion=13&resourceVersionMatch=NotOlderThan"),
            "listed again, no older than what the watch saw"
        );
        assert!(asked[4].contains("resourceVersion=20"), "{}", asked[4]);
    }

    #[tokio::test]
    async fn a_list_the_cache_cannot_answer_is_asked_again_as_a_consistent_read() {
        let gone = serde_json::json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410}});
        let too_large = serde_json::json!({"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "message": "Too large resource version", "reason": "Timeout",
            "code": 504});
        let (client, asked) = fake_apiserver(vec![
            answer(200, list(&[job("a", "5")], "10")),
            answer(
                200,
                events(&[
                    serde_json::json!({"type": "MODIFIED", "object": job("a", "14")}),
                    gone,
                ]),
            ),
            answer(504, too_large.to_string()),
            answer(200, list(&[job("a", "15")], "16")),
        ]);
        let seen: Vec<String> = watch_jobs(client, Some("ns"))
            .take(9)
            .map(|i| shown(&i))
            .collect()
            .await;
        assert_eq!(
            seen,
            [
                "init", "+a", "done", "~a", "error", "error", "init", "+a", "done"
            ]
        );
        let asked = asked.lock().expect("uris").clone();
        let path = "/apis/kubebeat.io/v1alpha1/namespaces/ns/scheduledjobs";
        assert_eq!(
            asked[2],
            format!("{path}?&resourceVersion=14&resourceVersionMatch=NotOlderThan")
        );
        assert!(
            asked[3].starts_with(path)
                && !asked[3].contains("resourceVersion")
                && !asked[3].contains("limit")
                && !asked[3].contains("watch"),
            "a consistent read, still without pages: {}",
            asked[3]
        );
    }

    #[tokio::test]
    async fn jobs_come_out_while_the_list_arrives_and_dropping_the_watch_lets_go_of_it() {
        let (fed, feed) = answer_fed();
        let (client, _) = fake_apiserver(vec![fed]);
        let mut stream = Box::pin(watch_jobs(client, Some("ns")));
        // Only the start of the response: one job, and the list still open.
        let head = format!(
            r#"{{"apiVersion":"kubebeat.io/v1alpha1","kind":"ScheduledJobList","items":[{},"#,
            job("a", "5")
        );
        feed.unbounded_send(Ok(Frame::data(Bytes::from(head))))
            .expect("open");
        for expected in ["init", "+a"] {
            let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("handed out before the response ended")
                .expect("an item");
            assert_eq!(shown(&item), expected);
        }
        drop(stream);
        // The decoding thread, waiting for the rest of the response, lets go of it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !feed.is_closed() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the response is still read after the watch was dropped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
