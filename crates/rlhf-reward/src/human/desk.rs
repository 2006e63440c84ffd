//! The labeling desk: open comparisons, who holds which, the labels file, and the labels known
//! from it. Shared by the scorer (which asks and waits) and the page (which hands out and
//! records).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rlhf_core::{ChatMessage, SampleId};
use rlhf_data::{DataError, JsonlWriter, read_jsonl};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::scorer::ScoreInput;

/// Closed comparisons remembered for late labels and duplicate answers.
const KEEP_CLOSED: usize = 4096;

/// A labeller's answer about the pair as shown (`a` left, `b` right).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// The left completion is better.
    A,
    /// The right completion is better.
    B,
    /// Neither is better.
    Tie,
}

/// Counts of what the desk did since the scorer started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HumanStats {
    /// Comparisons put on the page.
    pub asked: u64,
    /// Labels that arrived in time and were used.
    pub labelled: u64,
    /// Pairs answered from a label given before (the labels file, a retried call).
    pub reused: u64,
    /// Comparisons whose scoring call stopped waiting (deadline, or the call was dropped).
    pub timed_out: u64,
    /// Uncertain pairs not asked because `max_open` comparisons were open.
    pub busy: u64,
    /// Labels that arrived after their call stopped waiting (kept in the file, reused later).
    pub late: u64,
    /// Comparisons open now.
    pub open: u64,
}

/// One completion of a pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Side {
    pub sample_id: SampleId,
    pub completion: String,
    /// The base scorer's value (not shown to labellers).
    pub base: f64,
}

/// A comparison to ask about, in the order it is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Ask {
    /// Identifies the pair across restarts: sample ids and texts, independent of the order.
    pub key: String,
    pub iteration: u64,
    pub prompt_id: String,
    pub prompt: String,
    /// The prompt's chat messages, when the dataset has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    pub a: Side,
    pub b: Side,
}

impl Ask {
    /// The comparison of `first` and `second` (samples of `input`'s prompt), shown in a random
    /// order so that position bias does not favour the base scorer's choice.
    pub fn new(input: &ScoreInput, first: Side, second: Side) -> Self {
        let mut ends = [&first, &second];
        ends.sort_by_key(|s| s.sample_id.clone());
        let mut h = Sha256::new();
        h.update(input.sample_id.iteration.to_le_bytes());
        h.update(input.sample_id.prompt_id.as_bytes());
        for s in ends {
            h.update([0]);
            h.update(s.sample_id.to_string().as_bytes());
            h.update([0]);
            h.update(s.completion.as_bytes());
        }
        let key = h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (a, b) = if rand::random::<bool>() {
            (first, second)
        } else {
            (second, first)
        };
        Ask {
            key,
            iteration: input.sample_id.iteration,
            prompt_id: input.sample_id.prompt_id.clone(),
            prompt: input.prompt.clone(),
            messages: input.messages.clone(),
            a,
            b,
        }
    }
}

/// A label as the scorer uses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Label {
    /// The better sample; none for a tie.
    pub preferred: Option<SampleId>,
    pub labeler: String,
}

/// One line of the labels file.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    item: u64,
    #[serde(flatten)]
    ask: Ask,
    choice: Choice,
    #[serde(flatten)]
    label: Label,
    asked_at: f64,
    answered_at: f64,
    late: bool,
}

/// What [`Desk::ask`] did.
pub(super) enum Asked {
    /// The pair was labelled before.
    Known(Label),
    /// Put on the page as this item; the label comes through the receiver.
    Open(u64, oneshot::Receiver<Label>),
    /// Too many comparisons open.
    Busy,
}

enum State {
    Open {
        reply: oneshot::Sender<Label>,
        claim: Option<(String, Instant)>,
    },
    TimedOut,
    Labelled(String),
}

struct Entry {
    ask: Ask,
    asked_at: f64,
    state: State,
    /// Labellers who passed on it (never handed it again).
    skipped_by: Vec<String>,
}

/// An open comparison as the page shows it.
#[derive(Debug, Serialize)]
pub(super) struct Shown {
    pub item: u64,
    pub iteration: u64,
    pub prompt_id: String,
    pub prompt: String,
    pub a: String,
    pub b: String,
    pub asked_s_ago: f64,
    pub claimed_by: Option<String>,
}

/// Why a label was not taken.
#[derive(Debug)]
pub(super) enum Refused {
    /// No such comparison (never asked, or forgotten long ago).
    Unknown(u64),
    /// Someone labelled it already.
    Labelled(u64, String),
    /// The labels file could not be written; the comparison stays open.
    Write(String),
}

struct Inner {
    next_id: u64,
    items: BTreeMap<u64, Entry>,
    known: HashMap<String, Label>,
    stats: HumanStats,
    log: JsonlWriter<Record>,
}

pub(super) struct Desk {
    inner: Mutex<Inner>,
    token: Option<[u8; 32]>,
    max_open: usize,
    claim: Duration,
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The labels in the file at `path` (rlhf-data's JSONL reader: a crash's partial last line is
/// skipped; any other bad line is an error naming the file and line).
fn read_records(path: &Path) -> Result<Vec<Record>, String> {
    read_jsonl::<Record>(path)
        .map(|log| log.records)
        .map_err(|e| match e {
            DataError::Log {
                path,
                line,
                message,
            } => format!("{}:{line}: {message}", path.display()),
            other => other.to_string(),
        })
}

/// What [`preference_pairs`] made of a labels file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Export {
    /// Pairs written (one per labelled pair; the last label of a pair wins).
    pub pairs: usize,
    /// Labels that said neither is better (no pair).
    pub ties: usize,
    /// Earlier labels of a pair labelled again.
    pub superseded: usize,
}

/// The labels of the labels file at `path` as preference pairs, one JSON object per pair in
/// the format `rlhf rm` and `rlhf eval`'s ranking read: `id` (the pair's key), `prompt` or
/// `messages`, `chosen`, `rejected`, plus `labeler`, `iteration`, `prompt_id`, `late`.
pub fn preference_pairs(path: &Path) -> Result<(Vec<serde_json::Value>, Export), String> {
    let records = read_records(path)?;
    let mut export = Export::default();
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (k, r) in records.iter().enumerate() {
        if last.insert(r.ask.key.as_str(), k).is_some() {
            export.superseded += 1;
        }
    }
    let mut pairs = Vec::new();
    for (k, r) in records.iter().enumerate() {
        if last.get(r.ask.key.as_str()) != Some(&k) {
            continue;
        }
        let Some(preferred) = &r.label.preferred else {
            export.ties += 1;
            continue;
        };
        let (chosen, rejected) = if *preferred == r.ask.a.sample_id {
            (&r.ask.a, &r.ask.b)
        } else {
            (&r.ask.b, &r.ask.a)
        };
        let mut pair = serde_json::json!({
            "id": r.ask.key,
            "chosen": chosen.completion,
            "rejected": rejected.completion,
            "labeler": r.label.labeler,
            "iteration": r.ask.iteration,
            "prompt_id": r.ask.prompt_id,
            "late": r.late,
        });
        match &r.ask.messages {
            Some(m) if !m.is_empty() => pair["messages"] = serde_json::json!(m),
            _ => pair["prompt"] = serde_json::json!(r.ask.prompt),
        }
        pairs.push(pair);
    }
    export.pairs = pairs.len();
    Ok((pairs, export))
}

impl Desk {
    /// Opens (creating it and its folder if needed) and reads the labels file; a partial last
    /// line left by a crash is cut off, with a warning, so the next label starts a line.
    pub fn open(
        path: &Path,
        token: Option<String>,
        max_open: usize,
        claim: Duration,
    ) -> Result<Desk, String> {
        let log = JsonlWriter::<Record>::open(path).map_err(|e| e.to_string())?;
        if log.repaired_bytes() > 0 {
            tracing::warn!(file = %path.display(), bytes = log.repaired_bytes(),
                "cut off the labels file's unfinished last line");
        }
        let known = read_records(path)?
            .into_iter()
            .map(|r| (r.ask.key, r.label))
            .collect();
        Ok(Desk {
            inner: Mutex::new(Inner {
                next_id: 1,
                items: BTreeMap::new(),
                known,
                stats: HumanStats::default(),
                log,
            }),
            token: token.as_deref().map(digest),
            max_open,
            claim,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every change is one step).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `presented` (the bearer token of a request, if any) is acceptable.
    pub fn authorized(&self, presented: Option<&str>) -> bool {
        match (&self.token, presented) {
            (None, _) => true,
            (Some(want), Some(got)) => digest(got) == *want,
            (Some(_), None) => false,
        }
    }

    /// Labels read from the file at start.
    pub fn known_labels(&self) -> usize {
        self.lock().known.len()
    }

    pub fn stats(&self) -> HumanStats {
        let mut inner = self.lock();
        inner.reap();
        let mut stats = inner.stats.clone();
        stats.open = inner.open() as u64;
        stats
    }

    /// Puts a comparison on the page, unless it was labelled before or the page is full.
    pub fn ask(&self, ask: Ask) -> Asked {
        let mut inner = self.lock();
        inner.reap();
        if let Some(label) = inner.known.get(&ask.key).cloned() {
            inner.stats.reused += 1;
            return Asked::Known(label);
        }
        if inner.open() >= self.max_open {
            inner.stats.busy += 1;
            return Asked::Busy;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let (reply, rx) = oneshot::channel();
        inner.items.insert(
            id,
            Entry {
                ask,
                asked_at: now_s(),
                state: State::Open { reply, claim: None },
                skipped_by: Vec::new(),
            },
        );
        inner.stats.asked += 1;
        Asked::Open(id, rx)
    }

    /// The scoring call stopped waiting for `id`.
    pub fn time_out(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(e) = inner.items.get_mut(&id)
            && matches!(e.state, State::Open { .. })
        {
            e.state = State::TimedOut;
            inner.stats.timed_out += 1;
        }
        inner.prune();
    }

    /// The oldest open comparison not held by another labeller, now held by `labeler`.
    pub fn next(&self, labeler: &str) -> Option<Shown> {
        let mut inner = self.lock();
        inner.reap();
        let now = Instant::now();
        let claim = self.claim;
        let (id, entry) = inner.items.iter_mut().find(|(_, e)| match &e.state {
            _ if e.skipped_by.iter().any(|s| s == labeler) => false,
            State::Open { claim: held, .. } => match held {
                Some((who, since)) => who == labeler || now.duration_since(*since) > claim,
                None => true,
            },
            _ => false,
        })?;
        if let State::Open { claim: held, .. } = &mut entry.state {
            *held = Some((labeler.to_owned(), now));
        }
        Some(shown(*id, entry))
    }

    /// `labeler` passes on item `id`: its hold ends and it is not handed to them again (others
    /// still get it). False when there is no such open comparison.
    pub fn skip(&self, id: u64, labeler: &str) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.items.get_mut(&id) else {
            return false;
        };
        let State::Open { claim, .. } = &mut entry.state else {
            return false;
        };
        if claim.as_ref().is_some_and(|(who, _)| who == labeler) {
            *claim = None;
        }
        if !entry.skipped_by.iter().any(|s| s == labeler) {
            entry.skipped_by.push(labeler.to_owned());
        }
        true
    }

    /// Every open comparison, oldest first.
    pub fn pending(&self) -> Vec<Shown> {
        let mut inner = self.lock();
        inner.reap();
        inner
            .items
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Open { .. }))
            .map(|(id, e)| shown(*id, e))
            .collect()
    }

    /// Records `choice` by `labeler` for item `id` in the file, then hands it to the waiting
    /// call. Returns whether the label was used by that call (false: it came too late, and is
    /// kept for reuse).
    pub fn label(&self, id: u64, choice: Choice, labeler: &str) -> Result<bool, Refused> {
        let mut inner = self.lock();
        let entry = inner.items.get(&id).ok_or(Refused::Unknown(id))?;
        if let State::Labelled(by) = &entry.state {
            return Err(Refused::Labelled(id, by.clone()));
        }
        let preferred = match choice {
            Choice::A => Some(entry.ask.a.sample_id.clone()),
            Choice::B => Some(entry.ask.b.sample_id.clone()),
            Choice::Tie => None,
        };
        let label = Label {
            preferred,
            labeler: labeler.to_owned(),
        };
        let open = matches!(entry.state, State::Open { .. });
        let record = Record {
            item: id,
            ask: entry.ask.clone(),
            choice,
            label: label.clone(),
            asked_at: entry.asked_at,
            answered_at: now_s(),
            late: !open,
        };
        // One write, then fdatasync: on disk before the page is told.
        inner
            .log
            .append_batch(std::iter::once(&record))
            .map_err(|e| Refused::Write(e.to_string()))?;
        let key = record.ask.key;
        inner.known.insert(key, label.clone());
        let Some(entry) = inner.items.get_mut(&id) else {
            return Err(Refused::Unknown(id));
        };
        let state = std::mem::replace(&mut entry.state, State::Labelled(labeler.to_owned()));
        let used = match state {
            State::Open { reply, .. } => reply.send(label).is_ok(),
            _ => false,
        };
        if used {
            inner.stats.labelled += 1;
        } else {
            inner.stats.late += 1;
        }
        inner.prune();
        Ok(used)
    }
}

fn shown(id: u64, e: &Entry) -> Shown {
    Shown {
        item: id,
        iteration: e.ask.iteration,
        prompt_id: e.ask.prompt_id.clone(),
        prompt: e.ask.prompt.clone(),
        a: e.ask.a.completion.clone(),
        b: e.ask.b.completion.clone(),
        asked_s_ago: (now_s() - e.asked_at).max(0.0),
        claimed_by: match &e.state {
            State::Open {
                claim: Some((who, _)),
                ..
            } => Some(who.clone()),
            _ => None,
        },
    }
}

impl Inner {
    fn open(&self) -> usize {
        self.items
            .values()
            .filter(|e| matches!(e.state, State::Open { .. }))
            .count()
    }

    /// Closes comparisons whose scoring call went away (dropped, cancelled).
    fn reap(&mut self) {
        let mut gone = 0;
        for e in self.items.values_mut() {
            if let State::Open { reply, .. } = &e.state
                && reply.is_closed()
            {
                e.state = State::TimedOut;
                gone += 1;
            }
        }
        self.stats.timed_out += gone;
    }

    /// Forgets the oldest closed comparisons beyond [`KEEP_CLOSED`].
    fn prune(&mut self) {
        let closed: Vec<u64> = self
            .items
            .iter()
            .filter(|(_, e)| !matches!(e.state, State::Open { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in closed.iter().take(closed.len().saturating_sub(KEEP_CLOSED)) {
            self.items.remove(id);
        }
    }
}
