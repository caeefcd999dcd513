//! The outbox in memory: PENDING runs read from Postgres and held until they are due, the
//! earliest read and encoded ahead (see `publisher`).

use chrono::{DateTime, Utc};

use super::{RunAt, encode::Encoder};
use crate::{celery::Prepared, store::outbox::OutboxRow};

/// A run held for its time: its row or message once read (the earliest chunks), else only
/// its id and time.
pub(super) struct HeldRun {
    pub(super) id: i64,
    pub(super) due: DateTime<Utc>,
    pub(super) loaded: Option<Box<Loaded>>,
    /// Handed to a reader started before its time (`encode::Reader::start_early`), which reads
    /// and encodes it. A flag, not a `Loaded` variant: it fits the struct's padding, where a
    /// box would cost ~110 bytes a run of a 100,000-run burst.
    pub(super) reading: bool,
}

impl HeldRun {
    fn unread(&self) -> bool {
        self.loaded.is_none() && !self.reading
    }
}

/// A run once read: its row until it is encoded, then only its message.
pub(super) enum Loaded {
    /// Boxed: a row is ~380 bytes inline, and a run's box keeps the size of the largest
    /// variant once it is encoded (~100 bytes).
    Row(Box<OutboxRow>),
    Encoded {
        id: i64,
        due: DateTime<Utc>,
        /// Its job's namespace, hashed (see [`first_round`]).
        tenant: u64,
        message: Prepared,
    },
}

/// A run read ahead, on its way out: when it is due, whose it is, and its message.
pub(super) struct AheadRun {
    pub(super) run: RunAt,
    /// Its job's namespace, hashed: runs of one tenant share it.
    pub(super) tenant: u64,
    pub(super) message: Prepared,
}

/// The runs' messages, for a chunk (`encode::ChunkEncoder::new`).
pub(super) fn messages(runs: Vec<AheadRun>) -> Vec<(RunAt, Prepared)> {
    runs.into_iter().map(|a| (a.run, a.message)).collect()
}

/// A namespace as a small key (the read-ahead runs keep no strings of their rows).
pub(super) fn tenant(namespace: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    namespace.hash(&mut h);
    h.finish()
}

/// Of runs going out together (in time order), the first of each tenant, to be published on
/// their own before the rest: a tenant with one job is then not held up by another's thousand
/// due in the same second (a publish of a thousand messages to RabbitMQ took 300-600 ms in a
/// debug build). Nothing is split off for a single tenant, or when every run is its tenant's
/// first. Each part keeps the runs' order (chunks are put in time order when encoded).
pub(super) fn first_round(ahead: Vec<AheadRun>) -> (Vec<AheadRun>, Vec<AheadRun>) {
    let mut seen = std::collections::HashSet::new();
    let (first, rest): (Vec<AheadRun>, Vec<AheadRun>) =
        ahead.into_iter().partition(|a| seen.insert(a.tenant));
    if seen.len() < 2 || rest.is_empty() {
        let mut all = first;
        all.extend(rest);
        return (Vec::new(), all);
    }
    (first, rest)
}

/// Runs read from the outbox, held until they are due, earliest first.
pub(super) struct Held {
    runs: std::collections::VecDeque<HeldRun>,
    /// The highest execution id read so far: later reads ask only for newer ones.
    max_id: i64,
    /// Ids held, so a run read again is not held (and published) twice.
    ids: std::collections::HashSet<i64>,
}

impl Held {
    pub(super) fn new(batch: Vec<(i64, DateTime<Utc>)>) -> Self {
        let mut held = Held {
            runs: std::collections::VecDeque::new(),
            max_id: 0,
            ids: std::collections::HashSet::new(),
        };
        held.add(batch);
        held
    }

    /// Merge newly read runs (they may be due before some held ones).
    pub(super) fn add(&mut self, batch: Vec<(i64, DateTime<Utc>)>) {
        for (id, due) in batch {
            self.max_id = self.max_id.max(id);
            if !self.ids.insert(id) {
                continue;
            }
            self.runs.push_back(HeldRun {
                id,
                due,
                loaded: None,
                reading: false,
            });
        }
        self.runs.make_contiguous().sort_by_key(|r| (r.due, r.id));
    }

    /// The ids among the first `n` runs whose rows are not read yet (nor being read).
    pub(super) fn unloaded(&self, n: usize) -> Vec<i64> {
        self.runs
            .iter()
            .take(n)
            .filter(|r| r.unread())
            .map(|r| r.id)
            .collect()
    }

    /// Attach the rows read for `asked`; an asked run that did not come back is no longer
    /// PENDING and is let go.
    pub(super) fn attach(&mut self, asked: &[i64], rows: Vec<OutboxRow>) {
        let mut rows: std::collections::HashMap<i64, OutboxRow> =
            rows.into_iter().map(|p| (p.id, p)).collect();
        let gone: std::collections::HashSet<i64> = asked
            .iter()
            .filter(|id| !rows.contains_key(id))
            .copied()
            .collect();
        for r in self.runs.iter_mut() {
            if let Some(p) = rows.remove(&r.id) {
                r.loaded = Some(Box::new(Loaded::Row(Box::new(p))));
            }
        }
        if !gone.is_empty() {
            self.runs.retain(|r| !gone.contains(&r.id));
            self.ids.retain(|id| !gone.contains(id));
        }
    }

    /// Encode the first `n` runs that are read and not encoded yet: a burst's first chunks then
    /// go out as soon as they are due. Only the first `n`, since an envelope is ~1 KB.
    pub(super) fn encode_ahead(&mut self, n: usize, encoder: &Encoder) {
        for r in self.runs.iter_mut().take(n) {
            if !matches!(r.loaded.as_deref(), Some(Loaded::Row(_))) {
                continue;
            }
            if let Some(loaded) = r.loaded.take()
                && let Loaded::Row(p) = *loaded
            {
                r.loaded = Some(Box::new(Loaded::Encoded {
                    id: r.id,
                    due: r.due,
                    tenant: tenant(&p.namespace),
                    message: encoder.encode(*p),
                }));
            }
        }
    }

    /// Whether some run due by `by` is not read yet (nor handed to a reader). The runs are in
    /// time order (`add` sorts them; nothing else reorders them).
    pub(super) fn unread_by(&self, by: DateTime<Utc>) -> bool {
        self.runs
            .iter()
            .take_while(|r| r.due <= by)
            .any(HeldRun::unread)
    }

    /// The runs due by `by` that are not read yet, marked as handed to a reader: reading ahead
    /// leaves them alone, and they are not read again when they go out.
    pub(super) fn hand_to_reader(&mut self, by: DateTime<Utc>) -> Vec<i64> {
        let mut ids = Vec::new();
        for r in self.runs.iter_mut().take_while(|r| r.due <= by) {
            if r.unread() {
                r.reading = true;
                ids.push(r.id);
            }
        }
        ids
    }

    pub(super) fn len(&self) -> usize {
        self.runs.len()
    }

    pub(super) fn max_id(&self) -> i64 {
        self.max_id
    }

    pub(super) fn first_due(&self) -> Option<chrono::DateTime<Utc>> {
        self.runs.front().map(|r| r.due)
    }

    /// Remove and return the runs due by `now`.
    pub(super) fn take_due(&mut self, now: chrono::DateTime<Utc>) -> Vec<HeldRun> {
        let n = self.runs.partition_point(|r| r.due <= now);
        let due: Vec<_> = self.runs.drain(..n).collect();
        for r in &due {
            self.ids.remove(&r.id);
        }
        due
    }
}

/// Of runs taken out to publish, those read ahead as messages (a row read but not encoded yet
/// is encoded now), and the ids of the rest, still to read (not those handed to a reader).
pub(super) fn read_ahead(due: Vec<HeldRun>, encoder: &Encoder) -> (Vec<AheadRun>, Vec<i64>) {
    let mut to_read = Vec::new();
    // Sized for what was read ahead, not the whole burst (100,000 slots of ~100 bytes).
    let mut runs = Vec::with_capacity(due.iter().filter(|r| r.loaded.is_some()).count());
    for r in due {
        match r.loaded.map(|b| *b) {
            None if r.reading => {}
            None => to_read.push(r.id),
            Some(Loaded::Row(p)) => runs.push(AheadRun {
                run: (p.id, p.due),
                tenant: tenant(&p.namespace),
                message: encoder.encode(*p),
            }),
            Some(Loaded::Encoded {
                id,
                due,
                tenant,
                message,
            }) => runs.push(AheadRun {
                run: (id, due),
                tenant,
                message,
            }),
        }
    }
    (runs, to_read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{
        RunAt,
        encode::{
            ChunkEncoder,
            tests::{encoder, run},
        },
    };
    use chrono::TimeDelta;

    fn ids(due: &[HeldRun]) -> Vec<i64> {
        due.iter().map(|r| r.id).collect()
    }

    fn ids_of(sent: &[RunAt]) -> Vec<i64> {
        sent.iter().map(|(id, _)| *id).collect()
    }

    fn times(runs: &[OutboxRow]) -> Vec<(i64, DateTime<Utc>)> {
        runs.iter().map(|p| (p.id, p.due)).collect()
    }

    fn ahead(id: i64, namespace: &str) -> AheadRun {
        let mut row = run(id, Utc::now());
        row.namespace = namespace.into();
        AheadRun {
            run: (row.id, row.due),
            tenant: tenant(namespace),
            message: encoder().encode(row),
        }
    }

    fn ids_ahead(runs: &[AheadRun]) -> Vec<i64> {
        runs.iter().map(|a| a.run.0).collect()
    }

    #[test]
    fn each_tenants_first_run_goes_out_before_any_tenants_second() {
        // Team B's flood happens to come first; team A's one job is in the first round.
        let mut runs: Vec<AheadRun> = (1..=5).map(|i| ahead(i, "team-b")).collect();
        runs.push(ahead(6, "team-a"));
        runs.push(ahead(7, "team-c"));
        let (first, rest) = first_round(runs);
        assert_eq!(ids_ahead(&first), [1, 6, 7]);
        assert_eq!(ids_ahead(&rest), [2, 3, 4, 5]);
        // One tenant, or one run each: nothing to split off.
        let (first, rest) = first_round((1..=3).map(|i| ahead(i, "team-b")).collect());
        assert!(first.is_empty());
        assert_eq!(ids_ahead(&rest), [1, 2, 3]);
        let (first, rest) = first_round(vec![ahead(1, "a"), ahead(2, "b")]);
        assert!(first.is_empty());
        assert_eq!(ids_ahead(&rest), [1, 2]);
        assert!(first_round(Vec::new()).1.is_empty());
    }

    #[test]
    fn held_runs_come_out_by_time_once_each() {
        let t0 = Utc::now();
        let s = TimeDelta::seconds;
        let mut held = Held::new(times(&[run(1, t0 + s(2)), run(2, t0 + s(4))]));
        assert_eq!(held.max_id(), 2);
        // A newer claim due sooner, a late-committed lower id due now, and a run already held.
        held.add(times(&[run(5, t0 + s(1)), run(0, t0), run(2, t0 + s(4))]));
        assert_eq!(held.len(), 4, "the run read twice is held once");
        assert_eq!(held.max_id(), 5);
        assert_eq!(held.first_due(), Some(t0));
        assert_eq!(ids(&held.take_due(t0 + s(1))), vec![0, 5]);
        assert!(held.take_due(t0 + s(1)).is_empty(), "nothing twice");
        assert_eq!(ids(&held.take_due(t0 + s(3))), vec![1]);
        // Only what is held counts (a published run is no longer PENDING, so never read again).
        held.add(times(&[run(1, t0 + s(2))]));
        assert_eq!(ids(&held.take_due(t0 + s(10))), vec![1, 2]);
        assert_eq!(held.first_due(), None);
    }

    #[test]
    fn runs_handed_to_an_early_reader_are_neither_read_ahead_nor_read_again() {
        let t0 = Utc::now();
        let s = TimeDelta::seconds;
        // A burst of four due at t0 + 1 s, one run after it.
        let mut held = Held::new(vec![
            (1, t0 + s(1)),
            (2, t0 + s(1)),
            (3, t0 + s(1)),
            (4, t0 + s(1)),
            (5, t0 + s(2)),
        ]);
        // The first two read ahead.
        held.attach(&[1, 2], vec![run(1, t0 + s(1)), run(2, t0 + s(1))]);
        assert!(!held.unread_by(t0), "nothing due by then");
        assert!(held.unread_by(t0 + s(1)));
        // The rest of the burst goes to the reader, not the run after it.
        assert_eq!(held.hand_to_reader(t0 + s(1)), [3, 4]);
        assert!(!held.unread_by(t0 + s(1)), "all read or being read");
        assert!(held.unread_by(t0 + s(2)));
        assert_eq!(held.hand_to_reader(t0 + s(1)), Vec::<i64>::new(), "once");
        // Reading ahead leaves them to the reader.
        assert_eq!(held.unloaded(5), [5]);
        // A run claimed later for the same second is not the reader's: read when it goes out.
        held.add(vec![(6, t0 + s(1))]);
        assert_eq!(held.unloaded(6), [6, 5]);
        let due = held.take_due(t0 + s(1));
        assert_eq!(ids(&due), [1, 2, 3, 4, 6]);
        let (ahead, to_read) = read_ahead(due, &encoder());
        assert_eq!(ids_ahead(&ahead), [1, 2], "read ahead");
        assert_eq!(to_read, [6], "neither read ahead nor the reader's");
        assert_eq!(held.len(), 1);
    }

    #[test]
    fn only_the_earliest_held_runs_are_encoded_ahead_and_the_rest_when_published() {
        let t0 = Utc::now();
        let s = TimeDelta::seconds;
        let rows: Vec<OutboxRow> = (1..=5).map(|i| run(i, t0 + s(i))).collect();
        let mut held = Held::new(times(&rows));
        // Read ahead: the rows of the first two (only those are asked for), run 2 no longer
        // PENDING (it did not come back), so it is let go.
        assert_eq!(held.unloaded(2), [1, 2]);
        held.attach(&[1, 2], vec![rows[0].clone()]);
        assert_eq!(held.len(), 4);
        assert_eq!(held.unloaded(2), [3]);
        held.attach(&[3], vec![rows[2].clone()]);
        held.encode_ahead(2, &encoder());
        let state = |held: &Held| -> Vec<(bool, bool)> {
            held.runs
                .iter()
                .map(|r| {
                    (
                        r.loaded.is_some(),
                        r.loaded
                            .as_ref()
                            .is_some_and(|l| matches!(**l, Loaded::Encoded { .. })),
                    )
                })
                .collect()
        };
        assert_eq!(
            state(&held),
            [(true, true), (true, true), (false, false), (false, false)]
        );
        // A run read later and due sooner is read and encoded next; the rest stay ids.
        held.add(vec![(9, t0)]);
        assert_eq!(held.unloaded(4), [9, 4]);
        held.attach(&[9], vec![run(9, t0)]);
        held.encode_ahead(2, &encoder());
        assert_eq!(
            state(&held),
            [
                (true, true),
                (true, true),
                (true, true),
                (false, false),
                (false, false)
            ]
        );
        let due = held.take_due(t0 + s(10));
        assert_eq!(ids(&due), [9, 1, 3, 4, 5]);
        // What a chunk's publish does with them: read the rest (here, as the query would
        // return them), then encode what is not encoded.
        let read: Vec<OutboxRow> = due
            .iter()
            .filter(|r| r.loaded.is_none())
            .map(|r| rows[r.id as usize - 1].clone())
            .collect();
        let encoder = encoder();
        let (ahead, to_read) = read_ahead(due, &encoder);
        let mut encoding = ChunkEncoder::new(&encoder, messages(ahead));
        assert_eq!(to_read, [4, 5], "only what was not read ahead");
        for p in read {
            encoding.row(p);
        }
        let (runs, prepared) = encoding.finish();
        assert_eq!(runs.len(), 5);
        assert_eq!(ids_of(&runs), [9, 1, 3, 4, 5], "in time order");
        for ((run_id, due), m) in runs.iter().zip(&prepared) {
            let Prepared::Redis { id, envelope, .. } = m else {
                panic!("encoded for Redis")
            };
            assert_eq!(id, &format!("t{run_id}"), "each run keeps its own message");
            assert!(envelope.contains(&format!("\"kubebeat_job\":\"ns/j{run_id}\"")));
            assert_eq!(*due, if *run_id == 9 { t0 } else { t0 + s(*run_id) });
        }
    }
}
