//! Win rates under an LLM judge, against an imitation OpenAI server on loopback (the only
//! stand-in in these tests: it plays the LLM). The judge always prefers the answer shown first;
//! judging both orders cancels that bias, so two identical policies come out at exactly 50 %
//! with no position agreement. The same server used as a pointwise scorer never gives a rating:
//! every sample is a counted failure, and the mean is missing rather than 0.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use rlhf_eval::{JudgeSection, NamedScorer, run_eval};
use rlhf_reward::{JudgeConfig, JudgeMode, LmJudgeConfig, ScorerConfig};
use serde_json::{Value, json};

/// Answers every chat completion with a verdict for the first-shown answer.
async fn always_first(State(calls): State<Arc<AtomicUsize>>, body: String) -> axum::Json<Value> {
    calls.fetch_add(1, Ordering::SeqCst);
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    axum::Json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": request["model"],
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Assistant A's answer is better. [[A]]"}}],
    }))
}

async fn serve() -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/v1/chat/completions", post(always_first))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, calls))
}

fn judge(url: &str, mode: JudgeMode) -> JudgeConfig {
    JudgeConfig {
        timeout_s: 10.0,
        deadline_s: 20.0,
        retries: 0,
        ..JudgeConfig::new(url, "position-biased", mode)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn position_swap_cancels_a_first_position_judge() -> anyhow::Result<()> {
    let (url, calls) = serve().await?;
    let dir = tempfile::tempdir()?;
    let fixture = common::fixture();
    let mut config = common::config(
        vec![
            common::policy("left", &fixture),
            common::policy("right", &fixture),
        ],
        4,
        2,
    );
    config.scorers.push(NamedScorer {
        name: Some("pointwise".into()),
        scorer: ScorerConfig::Judge(judge(&url, JudgeMode::Pointwise)),
    });
    config.judge = Some(JudgeSection {
        pairs: Some(vec![["left".into(), "right".into()]]),
        scorers: Some(vec!["letters".into()]),
        llm: Some(judge(&url, JudgeMode::Pointwise)),
        local: None,
    });
    config.output.dir = Some(dir.path().join("eval"));
    let report = run_eval(&config, |_| {}).await?;
    println!("{}", report.to_table());

    let w = report
        .win_rate("left", "right", "llm:position-biased")
        .ok_or_else(|| anyhow::anyhow!("no judge win rate"))?;
    // 4 prompts × 2 samples, each judged in both orders: A first → A, B first → B.
    assert_eq!((w.compared, w.failed), (8, 0));
    assert_eq!((w.wins_a, w.wins_b, w.ties), (0, 0, 8));
    assert_eq!(w.win_rate_a, Some(0.5));
    assert_eq!(w.position_agreement, Some(0.0));
    assert_eq!(w.first_position_rate, Some(1.0));
    assert!(w.ci.is_some_and(|ci| ci.lo == 0.5 && ci.hi == 0.5));
    // The same policies under the rule scorer: identical samples, all ties.
    let rule = report
        .win_rate("left", "right", "letters")
        .ok_or_else(|| anyhow::anyhow!("no rule win rate"))?;
    assert_eq!((rule.win_rate_a, rule.ties), (Some(0.5), 8));

    // The pointwise judge never gives a rating: counted failures, no mean.
    for p in &report.policies {
        let r = &p.rewards[1];
        assert_eq!((r.scorer.as_str(), r.scored, r.failed), ("pointwise", 0, 8));
        assert_eq!(r.failures.get("invalid"), Some(&8));
        assert_eq!((r.mean, r.median, r.ci), (None, None, None));
    }
    // Requests: 8 comparisons × 2 orders + 2 policies × 8 pointwise ratings.
    let before = calls.load(Ordering::SeqCst);
    assert_eq!(before, 16 + 16);

    // A rerun takes the comparisons from the cache (failed ratings are asked again).
    let again = run_eval(&config, |_| {}).await?;
    assert_eq!((again.work.judged, again.work.cached_judgements), (0, 8));
    assert_eq!(calls.load(Ordering::SeqCst), before + 16);
    assert_eq!(
        again.win_rate("left", "right", "llm:position-biased"),
        Some(w)
    );
    Ok(())
}

/// A local LM as pair judge (the tiny fixture, through its next-token probabilities): two
/// identical policies give identical answers, and judging both orders puts every comparison at
/// exactly ½ whatever the model's lean towards "A" or "B"; a rerun takes them from the cache. A
/// local judge that would follow the policy is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_lm_judge_compares_policies_in_both_orders() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fixture = common::fixture();
    let mut config = common::config(
        vec![
            common::policy("left", &fixture),
            common::policy("right", &fixture),
        ],
        4,
        2,
    );
    config.judge = Some(JudgeSection {
        pairs: Some(vec![["left".into(), "right".into()]]),
        scorers: Some(vec![]),
        llm: None,
        local: Some(LmJudgeConfig::new(&fixture, JudgeMode::Pointwise)),
    });
    config.output.dir = Some(dir.path().join("eval"));
    let report = run_eval(&config, |_| {}).await?;
    let label = format!("local:{}", fixture.display());
    let w = report
        .win_rate("left", "right", &label)
        .ok_or_else(|| anyhow::anyhow!("no local judge win rate: {:?}", report.win_rates))?;
    assert_eq!((w.compared, w.failed), (8, 0));
    assert_eq!(w.win_rate_a, Some(0.5));
    let again = run_eval(&config, |_| {}).await?;
    assert_eq!((again.work.judged, again.work.cached_judgements), (0, 8));

    let mut policy_judge = LmJudgeConfig::new(&fixture, JudgeMode::Pairwise);
    policy_judge.policy = true;
    if let Some(j) = config.judge.as_mut() {
        j.local = Some(policy_judge);
    }
    let err = run_eval(&config, |_| {})
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("judge.local.policy"), "{err}");
    Ok(())
}
