//! What every objective returns: a differentiable scalar loss and host statistics to log.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// A loss (shape `[1]`, differentiable under `Autodiff`) and its statistics.
#[derive(Debug, Clone)]
pub struct LossOutput<B: Backend, S> {
    /// The scalar loss to call `.backward()` on.
    pub loss: Tensor<B, 1>,
    /// Host statistics (already read back; cheap to log).
    pub stats: S,
}

/// Statistics of the pairwise (DPO-family) objectives.
///
/// Rewards are the implicit rewards of the objective: `β·(log π − log π_ref)` for reference-based
/// losses, `β·log π/|y|` for SimPO; all are batch means.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PairStats {
    /// The loss value.
    pub loss: f32,
    /// Mean implicit reward of the chosen responses.
    pub reward_chosen: f32,
    /// Mean implicit reward of the rejected responses.
    pub reward_rejected: f32,
    /// Mean of `reward_chosen − reward_rejected` per pair.
    pub margin: f32,
    /// Fraction of pairs whose chosen reward is strictly higher.
    pub accuracy: f32,
    /// RPO: the NLL term on the chosen responses (per token), before its weight.
    pub nll: Option<f32>,
    /// VPO / SELM: the value regulariser added to the DPO loss (with its sign and weight).
    pub regulariser: Option<f32>,
}

/// Statistics of the listwise objectives (PRO, LiPO-λ).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ListStats {
    /// The loss value.
    pub loss: f32,
    /// The ranking part of the loss (PRO's Plackett–Luce term, LiPO's weighted pairwise term).
    pub ranking: f32,
    /// PRO's SFT term (with its weight); 0 for LiPO.
    pub sft: f32,
    /// Fraction of lists whose best-labelled response also has the highest model score.
    pub top1_accuracy: f32,
}

/// Statistics of the binary-feedback objectives (KTO, BCO).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BinaryStats {
    /// The loss value.
    pub loss: f32,
    /// Mean `β·(log π − log π_ref)` over desirable samples (0 if none).
    pub reward_desirable: f32,
    /// Mean `β·(log π − log π_ref)` over undesirable samples (0 if none).
    pub reward_undesirable: f32,
    /// KTO: the reference point `z0` (KL estimate); BCO: the reward shift `δ`.
    pub reference_point: f32,
    /// Number of desirable samples in the batch.
    pub desirable: usize,
    /// Number of undesirable samples in the batch.
    pub undesirable: usize,
}

/// Statistics of the policy-gradient objectives (PPO, GRPO, Dr. GRPO, RLOO, REINFORCE++).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PolicyStats {
    /// The total loss value.
    pub loss: f32,
    /// The clipped-surrogate part (with importance weights, before KL/entropy/value terms).
    pub policy_loss: f32,
    /// Fraction of valid tokens whose ratio lies outside the clip range.
    pub clip_fraction: f32,
    /// k3 estimate of KL(π_old ‖ π) over valid tokens (how far this update moved).
    pub approx_kl: f32,
    /// Mean ratio π/π_old over valid tokens.
    pub ratio_mean: f32,
    /// Mean per-token KL to the reference with the configured estimator, if a reference was given.
    pub kl_reference: Option<f32>,
    /// Clipped value loss (before its coefficient), if values were given.
    pub value_loss: Option<f32>,
    /// Fraction of valid tokens where the clipped value branch was taken.
    pub value_clip_fraction: Option<f32>,
    /// Mean per-token entropy, if entropies were given.
    pub entropy: Option<f32>,
    /// Mean truncated importance weight, if behaviour log-probs were given.
    pub importance_weight: Option<f32>,
    /// Mean advantage over valid tokens.
    pub advantage_mean: f32,
}

/// Statistics of the reward-model objectives.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RewardStats {
    /// The loss value.
    pub loss: f32,
    /// Fraction of pairs ranked correctly (`r_c > r_r`); 0 for regression.
    pub accuracy: f32,
    /// Mean `r_c − r_r` (0 for regression).
    pub margin: f32,
}

/// The statistics of any objective, as returned by [`crate::objective::compute_loss`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stats {
    /// Pairwise objectives.
    Pair(PairStats),
    /// Listwise objectives.
    List(ListStats),
    /// Binary-feedback objectives.
    Binary(BinaryStats),
    /// Policy-gradient objectives.
    Policy(PolicyStats),
    /// Reward-model objectives.
    Reward(RewardStats),
}

impl Stats {
    /// The loss value.
    pub fn loss(&self) -> f32 {
        match self {
            Stats::Pair(s) => s.loss,
            Stats::List(s) => s.loss,
            Stats::Binary(s) => s.loss,
            Stats::Policy(s) => s.loss,
            Stats::Reward(s) => s.loss,
        }
    }

    /// Flat `(name, value)` pairs for logging; optional values appear only when present.
    pub fn metrics(&self) -> Vec<(&'static str, f32)> {
        let mut out = vec![("loss", self.loss())];
        let mut opt = |name, v: Option<f32>| {
            if let Some(v) = v {
                out.push((name, v));
            }
        };
        match self {
            Stats::Pair(s) => {
                opt("rewards/chosen", Some(s.reward_chosen));
                opt("rewards/rejected", Some(s.reward_rejected));
                opt("rewards/margin", Some(s.margin));
                opt("rewards/accuracy", Some(s.accuracy));
                opt("nll", s.nll);
                opt("regulariser", s.regulariser);
            }
            Stats::List(s) => {
                opt("ranking", Some(s.ranking));
                opt("sft", Some(s.sft));
                opt("top1_accuracy", Some(s.top1_accuracy));
            }
            Stats::Binary(s) => {
                opt("rewards/desirable", Some(s.reward_desirable));
                opt("rewards/undesirable", Some(s.reward_undesirable));
                opt("reference_point", Some(s.reference_point));
                opt("count/desirable", Some(s.desirable as f32));
                opt("count/undesirable", Some(s.undesirable as f32));
            }
            Stats::Policy(s) => {
                opt("policy_loss", Some(s.policy_loss));
                opt("clip_fraction", Some(s.clip_fraction));
                opt("approx_kl", Some(s.approx_kl));
                opt("ratio_mean", Some(s.ratio_mean));
                opt("advantage_mean", Some(s.advantage_mean));
                opt("kl_reference", s.kl_reference);
                opt("value_loss", s.value_loss);
                opt("value_clip_fraction", s.value_clip_fraction);
                opt("entropy", s.entropy);
                opt("importance_weight", s.importance_weight);
            }
            Stats::Reward(s) => {
                opt("accuracy", Some(s.accuracy));
                opt("margin", Some(s.margin));
            }
        }
        out
    }
}
