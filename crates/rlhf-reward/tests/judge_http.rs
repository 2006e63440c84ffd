//! The LLM judge against real HTTP servers on loopback that imitate the OpenAI
//! chat-completions API: position bias and its calibration, retries, deadlines, unreachable
//! servers, malformed replies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rlhf_reward::{
    JudgeConfig, JudgeMode, JudgeScorer, PairwiseSummary, RuleRegistry, ScoreError, ScoreInput,
    Scorer, ScorerConfig, Verdict,
};
use serde_json::{Value, json};

/// What the imitation server answers.
enum Reply {
    /// A well-formed completion with this content.
    Content(String),
    /// An HTTP error status with a body.
    Status(u16, &'static str),
    /// A 200 with this raw body.
    Raw(&'static str),
    /// Never answer.
    Hang,
}

type Behaviour = dyn Fn(&Value, usize) -> Reply + Send + Sync;
/// A request as the server saw it: the `Authorization` header and the JSON body.
type Request = (Option<String>, Value);
/// A reply chosen without looking at the request.
type Canned = fn(&Value, usize) -> Reply;

#[derive(Clone)]
struct Imitation {
    behaviour: Arc<Behaviour>,
    calls: Arc<AtomicUsize>,
    /// (Authorization header, request body) of every call.
    requests: Arc<Mutex<Vec<Request>>>,
}

async fn chat_completions(
    State(s): State<Imitation>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let n = s.calls.fetch_add(1, Ordering::SeqCst);
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Ok(mut log) = s.requests.lock() {
        log.push((auth, request.clone()));
    }
    let json_response = |status: StatusCode, body: String| {
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    match (s.behaviour)(&request, n) {
        Reply::Content(text) => json_response(
            StatusCode::OK,
            json!({
                "id": format!("chatcmpl-{n}"),
                "object": "chat.completion",
                "model": request["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            })
            .to_string(),
        ),
        Reply::Status(code, body) => json_response(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body.to_owned(),
        ),
        Reply::Raw(body) => json_response(StatusCode::OK, body.to_owned()),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            json_response(StatusCode::OK, String::new())
        }
    }
}

/// Starts an imitation server on a free port; returns its base URL (`http://127.0.0.1:N/v1`).
async fn serve(
    behaviour: impl Fn(&Value, usize) -> Reply + Send + Sync + 'static,
) -> anyhow::Result<(String, Imitation)> {
    let state = Imitation {
        behaviour: Arc::new(behaviour),
        calls: Arc::default(),
        requests: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, state))
}

/// The user message of a request.
fn user_text(request: &Value) -> String {
    request["messages"][1]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The text between two markers of the pairwise template.
fn section(text: &str, start: &str, end: &str) -> String {
    text.split_once(start)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(s, _)| s.trim().to_owned())
        .unwrap_or_default()
}

fn config(url: &str, mode: JudgeMode) -> JudgeConfig {
    JudgeConfig {
        timeout_s: 5.0,
        deadline_s: 10.0,
        backoff_s: 0.01,
        ..JudgeConfig::new(url, "judge-model", mode)
    }
}

/// A judge that always prefers whatever is shown first.
fn first_position(_: &Value, _: usize) -> Reply {
    Reply::Content("Assistant A's answer is more helpful. [[A]]".into())
}

/// A judge that prefers the longer answer, wherever it is shown.
fn longer(request: &Value, _: usize) -> Reply {
    let text = user_text(request);
    let a = section(
        &text,
        "[The Start of Assistant A's Answer]",
        "[The End of Assistant A's Answer]",
    );
    let b = section(
        &text,
        "[The Start of Assistant B's Answer]",
        "[The End of Assistant B's Answer]",
    );
    let verdict = match a.len().cmp(&b.len()) {
        std::cmp::Ordering::Greater => "[[A]]",
        std::cmp::Ordering::Less => "[[B]]",
        std::cmp::Ordering::Equal => "[[C]]",
    };
    Reply::Content(format!("Comparing lengths. {verdict}"))
}

#[tokio::test]
async fn position_bias_is_calibrated_away() -> anyhow::Result<()> {
    let (url, server) = serve(first_position).await?;
    let judge = JudgeScorer::new(&config(&url, JudgeMode::Pairwise), Some("sk-test".into()))?;
    // Two identical policies: the same completions for every prompt.
    let completions: Vec<String> = (0..8).map(|i| format!("The answer is {i}.")).collect();
    let mut comparisons = Vec::new();
    for (i, c) in completions.iter().enumerate() {
        comparisons.push(judge.compare(&format!("Question {i}?"), c, c).await?);
    }
    let summary = PairwiseSummary::of(&comparisons);
    assert_eq!(summary.n, 8);
    assert_eq!(summary.win_rate_a, 0.5, "{summary:?}");
    assert_eq!(summary.ties, 8);
    assert_eq!(
        summary.position_agreement, 0.0,
        "a position-biased judge never agrees with itself"
    );
    assert_eq!(summary.first_position_rate, 1.0);
    assert!(
        comparisons
            .iter()
            .all(|c| c.a_first == Verdict::A && c.b_first == Verdict::B)
    );
    assert_eq!(
        server.calls.load(Ordering::SeqCst),
        16,
        "each pair is judged in both orders"
    );

    // What went over the wire: the model, temperature 0, the key, both orders.
    let requests = server
        .requests
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    for (auth, body) in &requests {
        assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
        assert_eq!(body["model"], "judge-model");
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][1]["role"], "user");
    }
    Ok(())
}

#[tokio::test]
async fn a_consistent_judge_agrees_across_orders() -> anyhow::Result<()> {
    let (url, _server) = serve(longer).await?;
    let judge = JudgeScorer::new(&config(&url, JudgeMode::Pairwise), None)?;
    let c = judge
        .compare("q", "a long and detailed answer", "short")
        .await?;
    assert_eq!(
        (c.prob_a, c.verdict, c.position_agreement),
        (1.0, Verdict::A, true)
    );
    let c = judge
        .compare("q", "short", "a long and detailed answer")
        .await?;
    assert_eq!(
        (c.prob_a, c.verdict, c.position_agreement),
        (0.0, Verdict::B, true)
    );

    // As a scorer: a round robin among each prompt's samples, or against the reference answer.
    let inputs = vec![
        ScoreInput::new("p1", "q", "medium answer").with_sample_index(0),
        ScoreInput::new("p1", "q", "short").with_sample_index(1),
        ScoreInput::new("p1", "q", "the longest answer of all three").with_sample_index(2),
        ScoreInput::new("p2", "q", "tiny").with_answer("a much longer reference"),
        ScoreInput::new("p3", "q", "alone, with nothing to compare against"),
    ];
    let out = judge.score(&inputs).await;
    let values: Vec<Option<f64>> = out
        .iter()
        .map(|r| r.as_ref().ok().map(|s| s.value))
        .collect();
    assert_eq!(values, [Some(0.5), Some(0.0), Some(1.0), Some(0.0), None]);
    let first = out[0].as_ref().map_err(Clone::clone)?;
    assert_eq!(first.components["position_agreement"], 1.0);
    assert_eq!(first.components["comparisons"], 2.0);
    assert!(
        first
            .provenance
            .starts_with("judge:judge-model@http://127.0.0.1:"),
        "{}",
        first.provenance
    );
    assert!(matches!(&out[4], Err(ScoreError::Invalid { message, .. }) if message.contains("p3")));
    Ok(())
}

#[tokio::test]
async fn biased_judge_as_scorer_reports_low_agreement() -> anyhow::Result<()> {
    let (url, server) = serve(first_position).await?;
    // Built from config, with the API key read from an environment variable that cargo sets.
    let mut cfg = config(&url, JudgeMode::Pairwise);
    cfg.api_key_env = Some("CARGO_PKG_NAME".into());
    let scorer = ScorerConfig::Judge(cfg).build(&RuleRegistry::new())?;
    let inputs: Vec<_> = (0..2)
        .map(|k| ScoreInput::new("p", "q", "same").with_sample_index(k))
        .collect();
    for r in scorer.score(&inputs).await {
        let s = r?;
        assert_eq!(s.value, 0.5);
        assert_eq!(s.components["position_agreement"], 0.0);
    }
    let requests = server
        .requests
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    assert!(
        requests
            .iter()
            .all(|(auth, _)| auth.as_deref() == Some("Bearer rlhf-reward"))
    );

    let mut missing = config(&url, JudgeMode::Pairwise);
    missing.api_key_env = Some("RLHF_REWARD_TEST_KEY_THAT_IS_NOT_SET".into());
    let err = ScorerConfig::Judge(missing)
        .build(&RuleRegistry::new())
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some(
            "invalid scorer config: `api_key_env`: environment variable `RLHF_REWARD_TEST_KEY_THAT_IS_NOT_SET` is not set (or not valid UTF-8)"
        )
    );
    Ok(())
}

#[tokio::test]
async fn retries_until_the_server_recovers() -> anyhow::Result<()> {
    let (url, server) = serve(|_, n| match n {
        0 => Reply::Status(503, r#"{"error": "overloaded"}"#),
        1 => Reply::Status(429, r#"{"error": "rate limited"}"#),
        _ => Reply::Content("A fine answer.\nRating: [[8]]".into()),
    })
    .await?;
    let judge = JudgeScorer::new(&config(&url, JudgeMode::Pointwise), None)?;
    let score = judge
        .rate(&ScoreInput::new("p", "What is 2+2?", "4"))
        .await?;
    assert_eq!(score.value, 8.0);
    assert_eq!(score.components["rating"], 8.0);
    assert_eq!(server.calls.load(Ordering::SeqCst), 3);

    // With too few retries the same failures are the final answer, naming the URL.
    let (url, server) = serve(|_, _| Reply::Status(503, "down")).await?;
    let judge = JudgeScorer::new(
        &JudgeConfig {
            retries: 1,
            ..config(&url, JudgeMode::Pointwise)
        },
        None,
    )?;
    let err = judge.rate(&ScoreInput::new("p", "q", "c")).await.err();
    assert!(
        matches!(&err, Some(ScoreError::Unreachable { message, .. })
            if message.contains(&format!("{url}/chat/completions")) && message.contains("503")),
        "{err:?}"
    );
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);

    // A 4xx other than 429 is final at once.
    let (url, server) = serve(|_, _| Reply::Status(401, r#"{"error": "bad key"}"#)).await?;
    let judge = JudgeScorer::new(&config(&url, JudgeMode::Pointwise), None)?;
    let err = judge.rate(&ScoreInput::new("p", "q", "c")).await.err();
    assert!(
        matches!(&err, Some(ScoreError::Rejected { message, .. }) if message.contains("401")),
        "{err:?}"
    );
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn unreachable_judge_fails_within_the_deadline() -> anyhow::Result<()> {
    // A port that nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    drop(listener);

    let patient = JudgeConfig {
        retries: 1000,
        deadline_s: 1.0,
        backoff_s: 0.05,
        ..config(&url, JudgeMode::Pointwise)
    };
    let judge = JudgeScorer::new(&patient, None)?;
    let start = Instant::now();
    let err = judge.rate(&ScoreInput::new("p", "q", "c")).await.err();
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    assert!(
        matches!(&err, Some(ScoreError::Timeout { message, .. })
            if message.contains(&format!("POST {url}/chat/completions")) && message.contains("deadline of 1s")),
        "{err:?}"
    );

    let impatient = JudgeConfig {
        retries: 2,
        ..patient
    };
    let out = JudgeScorer::new(&impatient, None)?
        .score(&[ScoreInput::new("p", "q", "c")])
        .await;
    assert!(
        matches!(&out[0], Err(ScoreError::Unreachable { message, .. })
            if message.contains(&url) && message.contains("3 time(s)")),
        "{out:?}"
    );

    // A server that accepts the connection but never answers: per-request timeouts, then the
    // overall deadline.
    let (url, server) = serve(|_, _| Reply::Hang).await?;
    let hanging = JudgeConfig {
        timeout_s: 0.2,
        deadline_s: 1.0,
        retries: 100,
        ..config(&url, JudgeMode::Pointwise)
    };
    let start = Instant::now();
    let err = JudgeScorer::new(&hanging, None)?
        .rate(&ScoreInput::new("p", "q", "c"))
        .await
        .err();
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    assert!(
        matches!(&err, Some(ScoreError::Timeout { message, .. }) if message.contains(&url) && message.contains("no reply within")),
        "{err:?}"
    );
    assert!(server.calls.load(Ordering::SeqCst) >= 3);
    Ok(())
}

#[tokio::test]
async fn malformed_replies_are_invalid() -> anyhow::Result<()> {
    let cases: Vec<(JudgeMode, Canned, &str)> = vec![
        (
            JudgeMode::Pointwise,
            |_, _| Reply::Raw("this is not json"),
            "not JSON",
        ),
        (
            JudgeMode::Pointwise,
            |_, _| Reply::Raw(r#"{"choices": []}"#),
            "choices[0].message.content",
        ),
        (
            JudgeMode::Pointwise,
            |_, _| Reply::Raw(r#"{"choices": [{"message": {"content": null}}]}"#),
            "choices[0].message.content",
        ),
        (
            JudgeMode::Pointwise,
            |_, _| Reply::Content("I would rather not rate this.".into()),
            "no rating",
        ),
        (
            JudgeMode::Pointwise,
            |_, _| Reply::Content("Rating: [[42]]".into()),
            "outside",
        ),
        (
            JudgeMode::Pairwise,
            |_, _| Reply::Content("Both are fine.".into()),
            "no verdict",
        ),
    ];
    for (mode, behaviour, expected) in cases {
        let (url, server) = serve(behaviour).await?;
        let judge = JudgeScorer::new(&config(&url, mode), None)?;
        let inputs = [
            ScoreInput::new("p", "q", "a"),
            ScoreInput::new("p", "q", "b").with_sample_index(1),
        ];
        let out = judge.score(&inputs).await;
        for r in &out {
            assert!(
                matches!(r, Err(ScoreError::Invalid { message, .. }) if message.contains(expected)),
                "{mode:?} {expected}: {r:?}"
            );
        }
        // Two samples pointwise, or one pair in two orders: two calls, none retried.
        assert_eq!(
            server.calls.load(Ordering::SeqCst),
            2,
            "malformed replies are not retried"
        );
    }
    Ok(())
}
