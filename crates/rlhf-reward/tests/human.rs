//! The human-label scorer against its real labeling page over HTTP on loopback: which pairs are
//! routed, how labels become rewards, claims, deadlines, late labels, the labels file read back
//! after a restart, tokens, and bad requests.

use std::path::Path;
use std::time::{Duration, Instant};

use rlhf_reward::{
    HumanConfig, HumanScorer, OnTimeout, Route, RuleRegistry, Score, ScoreError, ScoreInput,
    Scorer, ScorerConfig,
};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Base scorer: one point per `x` in the completion.
fn base() -> ScorerConfig {
    serde_json::from_value(json!({"type": "regex", "pattern": "x", "mode": "count"}))
        .expect("regex config")
}

fn config(dir: &Path) -> HumanConfig {
    let mut c = HumanConfig::new(base(), 0.5, dir.join("labels.jsonl"));
    c.listen = "127.0.0.1:0".into();
    c.label_margin = Some(1.0);
    c.deadline_s = 30.0;
    c
}

fn start(c: &HumanConfig) -> Result<HumanScorer, Box<dyn std::error::Error>> {
    let base = c.base.build(&RuleRegistry::new())?;
    Ok(HumanScorer::start(c, base, "")?)
}

fn sample(iteration: u64, prompt: &str, index: u32, completion: &str) -> ScoreInput {
    let mut s =
        ScoreInput::new(prompt, format!("prompt {prompt}"), completion).with_sample_index(index);
    s.sample_id.iteration = iteration;
    s
}

/// p1: a clear best (3) and worst (1); p2: a tie the base cannot break; p3: a tie, but an
/// evaluation sample; p4: one sample only.
fn inputs() -> Vec<ScoreInput> {
    let mut held_out = vec![sample(2, "p3", 0, "x"), sample(2, "p3", 1, "x")];
    for s in &mut held_out {
        s.evaluation = true;
    }
    let mut v = vec![
        sample(2, "p1", 0, "xxx"),
        sample(2, "p1", 1, "x"),
        sample(2, "p1", 2, "xx"),
        sample(2, "p2", 0, "xx yes"),
        sample(2, "p2", 1, "xx no"),
    ];
    v.extend(held_out);
    v.push(sample(2, "p4", 0, ""));
    v
}

struct Page {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Page {
    fn new(scorer: &HumanScorer) -> Self {
        Page {
            base: format!("http://{}", scorer.local_addr()),
            http: reqwest::Client::new(),
            token: None,
        }
    }

    async fn call(&self, path: &str, body: Option<Value>) -> Result<(u16, Value), reqwest::Error> {
        let url = format!("{}{path}", self.base);
        let mut req = match &body {
            Some(b) => self.http.post(url).body(b.to_string()),
            None => self.http.get(url),
        };
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Waits until `n` comparisons are open and returns them.
    async fn pending(&self, n: usize) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, v) = self.call("/api/pending", None).await?;
            assert_eq!(status, 200, "{v}");
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if items.len() >= n {
                return Ok(items);
            }
            assert!(Instant::now() < until, "{n} comparisons never opened: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn label(
        &self,
        item: &Value,
        choice: &str,
        who: &str,
    ) -> Result<(u16, Value), reqwest::Error> {
        self.call(
            "/api/label",
            Some(json!({"item": item["item"], "choice": choice, "labeler": who})),
        )
        .await
    }
}

fn value(r: &Result<Score, ScoreError>) -> f64 {
    r.as_ref().map(|s| s.value).unwrap_or(f64::NAN)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn uncertain_pairs_go_to_people_and_their_labels_become_rewards() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let scorer = std::sync::Arc::new(start(&cfg)?);
    let page = Page::new(&scorer);
    let (status, html) = page.call("/", None).await?;
    assert_eq!(status, 200);
    assert!(
        html.as_str()
            .is_some_and(|h| h.contains("Which answer is better?"))
    );

    let inputs = inputs();
    let call = {
        let (scorer, inputs) = (scorer.clone(), inputs.clone());
        tokio::spawn(async move { scorer.score(&inputs).await })
    };
    // Only p2 is uncertain: p1's margin is 2, p3 is evaluation, p4 has one sample.
    let open = page.pending(1).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let open_now = page.pending(1).await?;
    assert_eq!(open_now.len(), 1, "{open_now:?}");
    let item = &open[0];
    assert_eq!(item["prompt_id"], "p2");
    assert_eq!(item["prompt"], "prompt p2");
    assert!(item.get("base").is_none(), "base scores are not shown");
    let shown: Vec<&str> = [&item["a"], &item["b"]]
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let mut sorted = shown.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["xx no", "xx yes"]);

    // A labeller claims it; another one gets nothing meanwhile.
    let (status, next) = page
        .call("/api/next", Some(json!({"labeler": "ann"})))
        .await?;
    assert_eq!((status, &next["item"]["item"]), (200, &item["item"]));
    let (_, other) = page
        .call("/api/next", Some(json!({"labeler": "bob"})))
        .await?;
    assert_eq!(other["item"], Value::Null, "{other}");
    assert_eq!(other["open"], 1);
    // Ann passes on it: it is not handed to her again, and Bob gets it now.
    let skip = json!({"item": item["item"], "labeler": "ann"});
    assert_eq!(page.call("/api/skip", Some(skip)).await?.0, 200);
    let (_, after) = page
        .call("/api/next", Some(json!({"labeler": "ann"})))
        .await?;
    assert_eq!(after["item"], Value::Null, "{after}");
    let (_, bob) = page
        .call("/api/next", Some(json!({"labeler": "bob"})))
        .await?;
    assert_eq!(bob["item"]["item"], item["item"], "{bob}");
    let unknown = json!({"item": 999, "labeler": "ann"});
    assert_eq!(page.call("/api/skip", Some(unknown)).await?.0, 404);

    // Bad requests are refused, naming what is wrong.
    let (status, bad) = page.label(item, "left", "ann").await?;
    assert_eq!(status, 400);
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("choice") || e.contains("variant")),
        "{bad}"
    );
    let (status, bad) = page.label(item, "a", " ").await?;
    assert_eq!(status, 400);
    assert!(
        bad["error"].as_str().is_some_and(|e| e.contains("labeler")),
        "{bad}"
    );
    let (status, _) = page.label(&json!({"item": 999}), "a", "ann").await?;
    assert_eq!(status, 404);

    // Ann prefers "xx no", whichever side it was shown on.
    let side = if item["a"] == "xx no" { "a" } else { "b" };
    let (status, ok) = page.label(item, side, "ann").await?;
    assert_eq!(
        (status, &ok),
        (200, &json!({"recorded": true, "used": true}))
    );
    let (status, again) = page.label(item, "tie", "bob").await?;
    assert_eq!(status, 409, "{again}");
    assert!(again["error"].as_str().is_some_and(|e| e.contains("ann")));

    let results = call.await?;
    let values: Vec<f64> = results.iter().map(value).collect();
    // p1 and p3 keep their base scores; p2: the preferred gets 2 + 0.5, the other 2 - 0.5.
    assert_eq!(values, vec![3.0, 1.0, 2.0, 1.5, 2.5, 1.0, 1.0, 0.0]);
    let labelled = results[4].as_ref().map_err(|e| e.to_string())?;
    assert_eq!(labelled.provenance, "human:ann");
    assert_eq!(labelled.components.get("base"), Some(&2.0));
    assert_eq!(labelled.components.get("human"), Some(&1.0));
    let other = results[3].as_ref().map_err(|e| e.to_string())?;
    assert_eq!(other.components.get("human"), Some(&0.0));
    assert_ne!(
        results[0].as_ref().map(|s| s.provenance.as_str()),
        Ok("human:ann")
    );

    // The label is on disk with what was shown, and who said what.
    let file = lines(&cfg.labels_file);
    assert_eq!(file.len(), 1);
    let r = &file[0];
    assert_eq!(r["labeler"], "ann");
    assert_eq!(r["choice"], side);
    assert_eq!(r["preferred"]["prompt_id"], "p2");
    assert_eq!(r["preferred"]["sample_index"], 1);
    assert_eq!(r["late"], false);
    assert_eq!(r["prompt"], "prompt p2");
    assert!(r["answered_at"].as_f64() >= r["asked_at"].as_f64());
    let stats = scorer.human_stats();
    assert_eq!((stats.asked, stats.labelled, stats.open), (1, 1, 0));
    // A retried call (the coordinator retries after a transport error) is answered at once.
    let retried = scorer.score(&inputs).await;
    assert_eq!(retried.iter().map(value).collect::<Vec<_>>(), values);
    assert_eq!(
        (scorer.human_stats().asked, scorer.human_stats().reused),
        (1, 1)
    );

    // A restarted scorer reads the file back and answers the same pair without asking.
    drop(scorer);
    let again = start(&cfg)?;
    let repeat = again.score(&inputs).await;
    assert_eq!(repeat.iter().map(value).collect::<Vec<_>>(), values);
    let stats = again.human_stats();
    assert_eq!((stats.asked, stats.reused), (0, 1));
    // A different completion under the same sample ids is a new question.
    let mut changed = inputs.clone();
    changed[3].completion = "xx maybe".into();
    let mut quick = cfg.clone();
    quick.deadline_s = 0.2;
    drop(again);
    let short = start(&quick)?;
    let out = short.score(&changed).await;
    assert_eq!(value(&out[3]), 2.0, "timed out: base kept");
    assert_eq!(short.human_stats().timed_out, 1);
    Ok(())
}

#[tokio::test]
async fn labels_after_the_deadline_are_kept_and_used_next_time() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path());
    cfg.deadline_s = 0.3;
    cfg.on_timeout = OnTimeout::Missing;
    let scorer = start(&cfg)?;
    let page = Page::new(&scorer);
    let inputs = inputs();
    let results = scorer.score(&inputs).await;
    for k in [3, 4] {
        match &results[k] {
            Err(ScoreError::Timeout { message, .. }) => {
                assert!(message.contains("no label"), "{message}")
            }
            other => panic!("sample {k}: expected a timeout, got {other:?}"),
        }
    }
    assert_eq!(value(&results[0]), 3.0);
    let (_, pending) = page.call("/api/pending", None).await?;
    assert_eq!(pending["items"], json!([]));
    // The timed-out comparison can still be answered: kept, not used.
    let stats = scorer.human_stats();
    assert_eq!((stats.asked, stats.timed_out), (1, 1));
    let (status, late) = page.label(&json!({"item": 1}), "tie", "cy").await?;
    assert_eq!(
        (status, &late),
        (200, &json!({"recorded": true, "used": false}))
    );
    assert_eq!(lines(&cfg.labels_file)[0]["late"], true);
    assert_eq!(scorer.human_stats().late, 1);
    // The next call with the same pair (a retry) uses it: a tie gives both the mean.
    let retry = scorer.score(&inputs).await;
    assert_eq!((value(&retry[3]), value(&retry[4])), (2.0, 2.0));
    assert_eq!(
        retry[3].as_ref().map(|s| s.provenance.clone()),
        Ok("human:cy".to_string())
    );
    Ok(())
}

#[tokio::test]
async fn route_all_with_a_full_desk_and_a_token() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path());
    cfg.route = Route::All;
    cfg.margin = None;
    cfg.max_open = 1;
    cfg.token_env = Some("CARGO_MANIFEST_DIR".into());
    let scorer = std::sync::Arc::new(start(&cfg)?);
    let mut page = Page::new(&scorer);
    let (status, refused) = page.call("/api/stats", None).await?;
    assert_eq!(status, 401, "{refused}");
    page.token = Some("not the token at all".into());
    assert_eq!(page.call("/api/pending", None).await?.0, 401);
    page.token = Some(env!("CARGO_MANIFEST_DIR").into());
    let inputs = inputs();
    let call = {
        let (scorer, inputs) = (scorer.clone(), inputs.clone());
        tokio::spawn(async move { scorer.score(&inputs).await })
    };
    // p1 and p2 both qualify; one fits on the desk.
    let open = page.pending(1).await?;
    assert_eq!(open[0]["prompt_id"], "p1");
    let side = if open[0]["a"] == "x" { "a" } else { "b" };
    assert_eq!(page.label(&open[0], side, "dee").await?.0, 200);
    let results = call.await?;
    // p1: "x" (base 1) preferred over "xxx" (base 3): 3.5 and 0.5; p2 kept (busy).
    let values: Vec<f64> = results.iter().map(value).collect();
    assert_eq!(values, vec![0.5, 3.5, 2.0, 2.0, 2.0, 1.0, 1.0, 0.0]);
    let (status, stats) = page.call("/api/stats", None).await?;
    assert_eq!(status, 200);
    assert_eq!(
        (stats["busy"].as_u64(), stats["labelled"].as_u64()),
        (Some(1), Some(1))
    );
    // Prometheus counters need no token (counts only).
    page.token = None;
    let (status, metrics) = page.call("/metrics", None).await?;
    assert_eq!(status, 200);
    let text = metrics.as_str().unwrap_or_default();
    for line in [
        "rlhf_human_asked_total 1",
        "rlhf_human_busy_total 1",
        "rlhf_human_labelled_total 1",
        "rlhf_human_open 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing: {text}");
    }
    Ok(())
}

#[tokio::test]
async fn bad_configs_and_files_are_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    let registry = RuleRegistry::new();
    let parse = |v: Value| serde_json::from_value::<ScorerConfig>(v);
    let labels = dir.path().join("l.jsonl");
    let cases = [
        (
            json!({"type": "human", "base": {"type": "regex", "pattern": "x"}, "labels_file": labels}),
            "margin",
        ),
        (
            json!({"type": "human", "route": "all", "base": {"type": "regex", "pattern": "x"}, "labels_file": labels}),
            "label_margin",
        ),
        (
            json!({"type": "human", "margin": 0.0, "base": {"type": "regex", "pattern": "x"}, "labels_file": labels}),
            "label_margin",
        ),
        (
            json!({"type": "human", "margin": 0.1, "listen": "nowhere", "base": {"type": "regex", "pattern": "x"}, "labels_file": labels}),
            "listen",
        ),
        (
            json!({"type": "human", "margin": 0.1, "deadline_s": 0, "base": {"type": "regex", "pattern": "x"}, "labels_file": labels}),
            "deadline_s",
        ),
        (
            json!({"type": "human", "margin": 0.1, "base": {"type": "regex", "pattern": "("}, "labels_file": labels}),
            "base.pattern",
        ),
        (
            json!({"type": "human", "margin": 0.1, "token_env": "CARGO_PKG_NAME", "listen": "127.0.0.1:0", "base": {"type": "regex", "pattern": "x"}, "labels_file": labels}),
            "token_env",
        ),
    ];
    for (v, field) in cases {
        let err = match parse(v.clone())?.build(&registry) {
            Ok(_) => panic!("{v} should be refused"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&format!("`{field}`")), "{v}: {err}");
    }
    assert!(
        parse(json!({"type": "human", "margin": 1, "base": {"type": "regex", "pattern": "x"}}))
            .is_err()
    );

    // A torn last line (a crash mid-write) is skipped; a bad line elsewhere is an error naming it.
    let good = json!({"item": 1, "key": "k", "iteration": 1, "prompt_id": "p", "prompt": "",
        "a": {"sample_id": {"iteration": 1, "prompt_id": "p", "sample_index": 0}, "completion": "", "base": 0.0},
        "b": {"sample_id": {"iteration": 1, "prompt_id": "p", "sample_index": 1}, "completion": "", "base": 0.0},
        "choice": "tie", "preferred": null, "labeler": "x", "asked_at": 0.0, "answered_at": 1.0, "late": false});
    let mut cfg = config(dir.path());
    std::fs::write(&cfg.labels_file, format!("{good}\n{{\"item\": 2, \"ke"))?;
    let scorer = start(&cfg)?;
    drop(scorer);
    let text = std::fs::read_to_string(&cfg.labels_file)?;
    assert!(
        text.ends_with('\n'),
        "new labels start on a line of their own"
    );
    // ... and the file still opens after that restart (the torn part is gone, not a bad line).
    drop(start(&cfg)?);
    cfg.labels_file = dir.path().join("bad.jsonl");
    std::fs::write(&cfg.labels_file, format!("not json\n{good}\n"))?;
    let err = start(&cfg).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("labels_file") && err.contains("bad.jsonl:1"),
        "{err}"
    );
    Ok(())
}

#[test]
fn labels_export_as_preference_pairs_the_last_label_winning() -> TestResult {
    let dir = tempfile::tempdir()?;
    let side = |i: u32, text: &str| json!({"sample_id": {"iteration": 1, "prompt_id": "p", "sample_index": i}, "completion": text, "base": 0.0});
    let record = |key: &str, choice: &str, preferred: Value, late: bool| {
        json!({"item": 1, "key": key, "iteration": 1, "prompt_id": "p", "prompt": "Say hi",
            "a": side(0, "hi"), "b": side(1, "bye"), "choice": choice, "preferred": preferred,
            "labeler": "ann", "asked_at": 0.0, "answered_at": 1.0, "late": late})
    };
    let a = json!({"iteration": 1, "prompt_id": "p", "sample_index": 0});
    let b = json!({"iteration": 1, "prompt_id": "p", "sample_index": 1});
    let lines = [
        record("k1", "a", a.clone(), false),
        record("k1", "b", b, true), // k1 labelled again: this one counts
        record("k2", "tie", Value::Null, false),
        record("k3", "a", a, false),
    ];
    let path = dir.path().join("labels.jsonl");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&path, text.join("\n") + "\n")?;
    let (pairs, export) = rlhf_reward::human::preference_pairs(&path)?;
    assert_eq!((export.pairs, export.ties, export.superseded), (2, 1, 1));
    assert_eq!(pairs[0]["id"], "k1");
    assert_eq!(
        (&pairs[0]["chosen"], &pairs[0]["rejected"]),
        (&json!("bye"), &json!("hi"))
    );
    assert_eq!(pairs[0]["late"], true);
    assert_eq!(pairs[1]["chosen"], "hi");
    assert_eq!(pairs[1]["prompt"], "Say hi");
    Ok(())
}
