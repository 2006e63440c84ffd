//! Pairwise judging with balanced position calibration (Wang et al. 2023, "Large Language Models
//! are not Fair Evaluators"): every pair is judged in both orders, both verdicts are mapped back
//! to the original labels and averaged, and whether the two orders agreed is reported.
//!
//! As a [`Scorer`](crate::Scorer), a pairwise judge scores each sample by its calibrated win rate
//! against the other samples of the same prompt in the batch (a round robin), or against the
//! dataset's `answer` when the sample is alone.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::prompt::Position;
use crate::error::ScoreError;
use crate::scorer::{Score, ScoreInput};

/// A judge of pairs: the LLM judge over HTTP ([`JudgeScorer`](crate::JudgeScorer)) or a local
/// LM ([`LmJudgeScorer`](crate::LmJudgeScorer) in pairwise mode). `rlhf eval` computes win rates
/// between policies with it.
#[async_trait]
pub trait PairJudge: Send + Sync {
    /// Judges `a` against `b` for `question` in both orders and calibrates.
    async fn compare(&self, question: &str, a: &str, b: &str) -> Result<Comparison, ScoreError>;
}

/// Which of two completions is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The first-named completion (A) is better.
    A,
    /// The second-named completion (B) is better.
    B,
    /// Neither is better.
    Tie,
}

impl Verdict {
    /// The probability that A is better that this verdict stands for (1, 0 or ½).
    pub fn prob_a(self) -> f64 {
        match self {
            Verdict::A => 1.0,
            Verdict::B => 0.0,
            Verdict::Tie => 0.5,
        }
    }

    /// The verdict for a calibrated probability that A is better.
    pub fn from_prob_a(p: f64) -> Self {
        if p > 0.5 {
            Verdict::A
        } else if p < 0.5 {
            Verdict::B
        } else {
            Verdict::Tie
        }
    }

    /// The verdict about (A, B) of a judge that saw A first (`a_first`) or B first.
    pub fn from_position(position: Position, a_first: bool) -> Self {
        match (position, a_first) {
            (Position::Tie, _) => Verdict::Tie,
            (Position::First, true) | (Position::Second, false) => Verdict::A,
            (Position::First, false) | (Position::Second, true) => Verdict::B,
        }
    }
}

/// The calibrated result of judging A against B in both orders.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The probability that A is better: the mean of the two orders' verdicts.
    pub prob_a: f64,
    /// The calibrated verdict (a tie when the two orders disagree in opposite directions).
    pub verdict: Verdict,
    /// The verdict when A was shown first, about the original labels.
    pub a_first: Verdict,
    /// The verdict when B was shown first, about the original labels.
    pub b_first: Verdict,
    /// Whether both orders gave the same verdict (a position-consistent judgement).
    pub position_agreement: bool,
}

impl Comparison {
    /// Combines the two orders' verdicts.
    pub fn calibrate(a_first: Verdict, b_first: Verdict) -> Self {
        let prob_a = (a_first.prob_a() + b_first.prob_a()) / 2.0;
        Self {
            prob_a,
            verdict: Verdict::from_prob_a(prob_a),
            a_first,
            b_first,
            position_agreement: a_first == b_first,
        }
    }

    /// The same comparison seen from B's side.
    pub fn flipped(&self) -> Self {
        let flip = |v: Verdict| match v {
            Verdict::A => Verdict::B,
            Verdict::B => Verdict::A,
            Verdict::Tie => Verdict::Tie,
        };
        Self {
            prob_a: 1.0 - self.prob_a,
            verdict: flip(self.verdict),
            a_first: flip(self.a_first),
            b_first: flip(self.b_first),
            position_agreement: self.position_agreement,
        }
    }
}

/// Totals over many comparisons of policy A against policy B.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PairwiseSummary {
    /// Comparisons counted.
    pub n: usize,
    /// The mean calibrated probability that A is better (½ for equally good policies).
    pub win_rate_a: f64,
    /// Calibrated verdicts for A.
    pub wins_a: usize,
    /// Calibrated verdicts for B.
    pub wins_b: usize,
    /// Calibrated ties (including the disagreements of a position-biased judge).
    pub ties: usize,
    /// The fraction of comparisons whose two orders agreed; low values mean a position-biased
    /// judge whose verdicts say little.
    pub position_agreement: f64,
    /// How often the first-shown answer won before calibration (½ for an unbiased judge).
    pub first_position_rate: f64,
}

impl PairwiseSummary {
    /// Summarises comparisons (all zero for none).
    pub fn of(comparisons: &[Comparison]) -> Self {
        let n = comparisons.len();
        if n == 0 {
            return Self::default();
        }
        let count = |v: Verdict| comparisons.iter().filter(|c| c.verdict == v).count();
        let mean =
            |f: &dyn Fn(&Comparison) -> f64| comparisons.iter().map(f).sum::<f64>() / n as f64;
        Self {
            n,
            win_rate_a: mean(&|c| c.prob_a),
            wins_a: count(Verdict::A),
            wins_b: count(Verdict::B),
            ties: count(Verdict::Tie),
            position_agreement: mean(&|c| f64::from(u8::from(c.position_agreement))),
            // A first: first wins when a_first says A. B first: first wins when b_first says B.
            first_position_rate: mean(&|c| (c.a_first.prob_a() + (1.0 - c.b_first.prob_a())) / 2.0),
        }
    }
}

/// One comparison a pairwise scorer needs: sample `i` against sample `j`, or against the
/// reference answer of sample `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matchup {
    /// Sample `.0` against sample `.1` (indices into the batch).
    Samples(usize, usize),
    /// The sample against its own reference answer.
    Reference(usize),
}

/// The comparisons that score `inputs`: a round robin within each prompt's samples, and the
/// reference answer for a prompt with one sample. Samples that cannot be compared are returned
/// separately, by index.
pub fn matchups(inputs: &[ScoreInput]) -> (Vec<Matchup>, Vec<usize>) {
    let mut groups: BTreeMap<(u64, &str), Vec<usize>> = BTreeMap::new();
    for (i, input) in inputs.iter().enumerate() {
        groups
            .entry((
                input.sample_id.iteration,
                input.sample_id.prompt_id.as_str(),
            ))
            .or_default()
            .push(i);
    }
    let mut out = Vec::new();
    let mut alone = Vec::new();
    for members in groups.values() {
        match members.as_slice() {
            [i] if inputs[*i].answer.is_some() => out.push(Matchup::Reference(*i)),
            [i] => alone.push(*i),
            many => {
                for (k, &i) in many.iter().enumerate() {
                    out.extend(many[k + 1..].iter().map(|&j| Matchup::Samples(i, j)));
                }
            }
        }
    }
    (out, alone)
}

/// Each sample's score from the comparisons of `matchups` (`judged`, in the same order): its
/// mean calibrated win probability (components `win_rate`, `position_agreement`,
/// `comparisons`). A sample of an `alone` prompt, or in a comparison that failed, gets the
/// error.
pub(crate) fn win_rate_scores(
    inputs: &[ScoreInput],
    matchups: &[Matchup],
    judged: &[Result<Comparison, ScoreError>],
    alone: &[usize],
    name: &str,
    provenance: &str,
) -> Vec<Result<Score, ScoreError>> {
    // Per sample: its comparisons (from its own side), or the first error.
    let mut seen: Vec<Result<Vec<Comparison>, ScoreError>> = vec![Ok(Vec::new()); inputs.len()];
    let mut record = |i: usize, c: &Result<Comparison, ScoreError>, flip: bool| {
        if let Ok(list) = &mut seen[i] {
            match c {
                Ok(c) => list.push(if flip { c.flipped() } else { *c }),
                Err(e) => seen[i] = Err(e.clone()),
            }
        }
    };
    for (m, c) in matchups.iter().zip(judged) {
        match *m {
            Matchup::Samples(i, j) => {
                record(i, c, false);
                record(j, c, true);
            }
            Matchup::Reference(i) => record(i, c, false),
        }
    }
    for &i in alone {
        seen[i] = Err(ScoreError::invalid(
            name,
            format!(
                "pairwise judging needs another sample of prompt `{}` in the batch, or an `answer` to compare with",
                inputs[i].sample_id.prompt_id
            ),
        ));
    }
    seen.into_iter()
        .map(|r| {
            let summary = PairwiseSummary::of(&r?);
            Ok(Score::new(summary.win_rate_a, provenance)
                .with_component("win_rate", summary.win_rate_a)
                .with_component("position_agreement", summary.position_agreement)
                .with_component("comparisons", summary.n as f64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_cancels_position_bias() {
        // A judge that always picks the first position: A when A is first, B when B is first.
        let biased = Comparison::calibrate(
            Verdict::from_position(Position::First, true),
            Verdict::from_position(Position::First, false),
        );
        assert_eq!(biased.prob_a, 0.5);
        assert_eq!(biased.verdict, Verdict::Tie);
        assert!(!biased.position_agreement);

        let consistent = Comparison::calibrate(Verdict::A, Verdict::A);
        assert_eq!((consistent.prob_a, consistent.verdict), (1.0, Verdict::A));
        assert!(consistent.position_agreement);
        let half = Comparison::calibrate(Verdict::A, Verdict::Tie);
        assert_eq!((half.prob_a, half.verdict), (0.75, Verdict::A));
        assert_eq!(half.flipped().prob_a, 0.25);

        let summary = PairwiseSummary::of(&[biased, consistent]);
        assert_eq!(summary.n, 2);
        assert_eq!(summary.win_rate_a, 0.75);
        assert_eq!(summary.position_agreement, 0.5);
        assert_eq!(summary.first_position_rate, 0.75);
        assert_eq!((summary.wins_a, summary.wins_b, summary.ties), (1, 0, 1));
    }

    #[test]
    fn round_robin_within_prompts() {
        let input = |prompt: &str, k: u32| ScoreInput::new(prompt, "q", "c").with_sample_index(k);
        let inputs = vec![
            input("p1", 0),
            input("p2", 0),
            input("p1", 1),
            input("p1", 2),
            input("p3", 0).with_answer("ref"),
        ];
        let (m, alone) = matchups(&inputs);
        assert_eq!(
            m,
            [
                Matchup::Samples(0, 2),
                Matchup::Samples(0, 3),
                Matchup::Samples(2, 3),
                Matchup::Reference(4)
            ]
        );
        assert_eq!(alone, [1]);
    }
}
