//! Win rates of policy A over policy B. Sample `k` of A for a prompt is matched with sample `k`
//! of B for the same prompt (same seed), for every prompt and `k`.
//!
//! - Under a scorer: A wins when its score is higher, ties on equal scores (outcome 1, ½, 0);
//!   a pair with a missing score on either side is counted as failed, not as a loss.
//! - Under an LLM judge: each pair is judged in both orders and the verdicts averaged
//!   ([`rlhf_reward::Comparison`]), which cancels a judge's position bias; the outcome is the
//!   calibrated probability that A is better, and the report adds how often the two orders
//!   agreed.
//!
//! The win rate is the mean outcome; its interval is a bootstrap over prompts.

use futures::future::join_all;
use rlhf_data::PromptRecord;
use rlhf_reward::judge::prompt::question;
use rlhf_reward::{Comparison, PairJudge, PairwiseSummary, Verdict};
use serde_json::json;

use crate::cache::{Cache, Kind, key_of};
use crate::error::EvalError;
use crate::prompts::score_input;
use crate::report::{WinRate, WorkCounts};
use crate::sample::PromptSamples;
use crate::stats::{Bootstrap, mean};
use crate::summary::ScoreGrid;

/// One comparison's outcome for A: 1 when `a > b`, ½ when equal, 0 when `a < b`.
pub fn outcome(a: f64, b: f64) -> f64 {
    if a > b {
        1.0
    } else if a < b {
        0.0
    } else {
        0.5
    }
}

fn empty(a: &str, b: &str, judge: &str) -> WinRate {
    WinRate {
        a: a.to_owned(),
        b: b.to_owned(),
        judge: judge.to_owned(),
        compared: 0,
        failed: 0,
        wins_a: 0,
        wins_b: 0,
        ties: 0,
        win_rate_a: None,
        ci: None,
        position_agreement: None,
        first_position_rate: None,
    }
}

/// The win rate of A over B under a scorer, from both policies' scores.
pub fn from_scores(
    (a, b, judge): (&str, &str, &str),
    sa: &ScoreGrid,
    sb: &ScoreGrid,
    boot: &Bootstrap,
) -> WinRate {
    let mut w = empty(a, b, judge);
    let mut clusters = Vec::with_capacity(sa.len());
    for (ra, rb) in sa.iter().zip(sb) {
        let mut outcomes = Vec::new();
        for (x, y) in ra.iter().zip(rb) {
            let (Ok(x), Ok(y)) = (x, y) else {
                w.failed += 1;
                continue;
            };
            let o = outcome(*x, *y);
            if x > y {
                w.wins_a += 1;
            } else if x < y {
                w.wins_b += 1;
            } else {
                w.ties += 1;
            }
            outcomes.push(o);
        }
        clusters.push(outcomes);
    }
    let all: Vec<f64> = clusters.iter().flatten().copied().collect();
    w.compared = all.len();
    w.win_rate_a = mean(&all);
    w.ci = boot.mean_ci(&clusters);
    w
}

/// Per prompt, per sample: the judge's calibrated comparison of A's sample with B's, or the
/// error kind.
pub type ComparisonGrid = Vec<Vec<Result<Comparison, String>>>;

/// The win rate of A over B under an LLM judge, from its comparisons.
pub fn from_comparisons(
    (a, b, judge): (&str, &str, &str),
    grid: &ComparisonGrid,
    boot: &Bootstrap,
) -> WinRate {
    let mut w = empty(a, b, judge);
    let mut clusters = Vec::with_capacity(grid.len());
    let mut all = Vec::new();
    for row in grid {
        let ok: Vec<Comparison> = row
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        w.failed += row.len() - ok.len();
        clusters.push(ok.iter().map(|c| c.prob_a).collect::<Vec<f64>>());
        all.extend(ok);
    }
    let s = PairwiseSummary::of(&all);
    w.compared = s.n;
    (w.wins_a, w.wins_b, w.ties) = (s.wins_a, s.wins_b, s.ties);
    if s.n > 0 {
        w.win_rate_a = Some(s.win_rate_a);
        w.position_agreement = Some(s.position_agreement);
        w.first_position_rate = Some(s.first_position_rate);
    }
    w.ci = boot.mean_ci(&clusters);
    debug_assert!(
        all.iter()
            .all(|c| c.verdict == Verdict::from_prob_a(c.prob_a))
    );
    w
}

/// Comparisons judged per cache write.
const JUDGE_BATCH: usize = 32;

/// Judges sample `k` of A against sample `k` of B for every prompt, through the cache.
#[allow(clippy::too_many_arguments)]
pub async fn judge(
    judge: &dyn PairJudge,
    judge_fingerprint: &str,
    records: &[PromptRecord],
    chat: bool,
    a: &[PromptSamples],
    b: &[PromptSamples],
    cache: &mut Cache,
    work: &mut WorkCounts,
) -> Result<ComparisonGrid, EvalError> {
    let key =
        |ka: &str, kb: &str| key_of(&json!({"v": 1, "judge": judge_fingerprint, "a": ka, "b": kb}));
    let mut grid: ComparisonGrid = a
        .iter()
        .map(|p| vec![Err("missing".to_owned()); p.samples.len()])
        .collect();
    let mut todo = Vec::new();
    for (i, (pa, pb)) in a.iter().zip(b).enumerate() {
        for (k, (ka, kb)) in pa.keys.iter().zip(&pb.keys).enumerate() {
            match cache.get::<Comparison>(Kind::Comparison, &key(ka, kb)) {
                Some(c) => {
                    work.cached_judgements += 1;
                    grid[i][k] = Ok(c);
                }
                None => todo.push((i, k)),
            }
        }
    }
    for part in todo.chunks(JUDGE_BATCH) {
        let judged = join_all(part.iter().map(|&(i, k)| {
            let q = question(&score_input(&records[i], chat, k as u32, ""));
            async move {
                judge
                    .compare(&q, &a[i].samples[k].text, &b[i].samples[k].text)
                    .await
            }
        }))
        .await;
        let mut fresh = Vec::new();
        for (&(i, k), r) in part.iter().zip(judged) {
            grid[i][k] = match r {
                Ok(c) => {
                    fresh.push((key(&a[i].keys[k], &b[i].keys[k]), c));
                    Ok(c)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "judge comparison failed");
                    Err(e.kind().as_str().to_owned())
                }
            };
        }
        work.judged += part.len() as u64;
        cache.put(Kind::Comparison, &fresh)?;
    }
    Ok(grid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: Bootstrap = Bootstrap {
        resamples: 500,
        seed: 3,
        level: 0.95,
    };

    #[test]
    fn win_rate_arithmetic_under_a_scorer() {
        // Prompt 0: (0.9 vs 0.1) A wins, (0.5 vs 0.5) tie.
        // Prompt 1: (0.2 vs 0.7) B wins, (A missing) failed.
        // Prompt 2: (1.0 vs 0.0) A wins, (0.3 vs B missing) failed.
        // Compared: 4 → outcomes 1, ½, 0, 1 → win rate 2.5 / 4 = 0.625.
        let a: ScoreGrid = vec![
            vec![Ok(0.9), Ok(0.5)],
            vec![Ok(0.2), Err("timeout".into())],
            vec![Ok(1.0), Ok(0.3)],
        ];
        let b: ScoreGrid = vec![
            vec![Ok(0.1), Ok(0.5)],
            vec![Ok(0.7), Ok(0.4)],
            vec![Ok(0.0), Err("invalid".into())],
        ];
        let w = from_scores(("A", "B", "r"), &a, &b, &BOOT);
        assert_eq!((w.compared, w.failed), (4, 2));
        assert_eq!((w.wins_a, w.wins_b, w.ties), (2, 1, 1));
        assert_eq!(w.win_rate_a, Some(0.625));
        let ci = w.ci.map(|c| (c.lo, c.hi)).unwrap_or((9.0, -9.0));
        assert!(
            ci.0 <= 0.625 && 0.625 <= ci.1 && ci.0 >= 0.0 && ci.1 <= 1.0,
            "{ci:?}"
        );
        // From B's side the outcomes flip: 1 − 0.625.
        let flipped = from_scores(("B", "A", "r"), &b, &a, &BOOT);
        assert_eq!(flipped.win_rate_a, Some(0.375));
        assert_eq!(outcome(1.0, 1.0), 0.5);
    }

    #[test]
    fn win_rate_arithmetic_under_a_judge() {
        let c = Comparison::calibrate;
        // Prompt 0: consistent A (p = 1, agree); a first-position-biased judge (A when A is
        //   first, B when B is first: p = ½, tie, disagree).
        // Prompt 1: A then tie (p = ¾, verdict A, disagree); a judge error.
        // Compared 3: win rate (1 + ½ + ¾) / 3 = 0.75; wins A 2, ties 1; agreement 1/3.
        // First position won: (1+0)/2, (1+1)/2, (1+½)/2 → mean (0.5 + 1 + 0.75) / 3 = 0.75.
        let grid: ComparisonGrid = vec![
            vec![Ok(c(Verdict::A, Verdict::A)), Ok(c(Verdict::A, Verdict::B))],
            vec![Ok(c(Verdict::A, Verdict::Tie)), Err("timeout".into())],
        ];
        let w = from_comparisons(("A", "B", "llm:j"), &grid, &BOOT);
        assert_eq!((w.compared, w.failed), (3, 1));
        assert_eq!((w.wins_a, w.wins_b, w.ties), (2, 0, 1));
        assert_eq!(w.win_rate_a, Some(0.75));
        let agreement = w.position_agreement.unwrap_or(f64::NAN);
        assert!((agreement - 1.0 / 3.0).abs() < 1e-12, "{agreement}");
        assert_eq!(w.first_position_rate, Some(0.75));
        let none = from_comparisons(("A", "B", "llm:j"), &vec![vec![Err("x".into())]], &BOOT);
        assert_eq!(
            (none.win_rate_a, none.position_agreement, none.failed),
            (None, None, 1)
        );
    }
}
