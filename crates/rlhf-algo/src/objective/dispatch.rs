//! [`compute_loss`]: one entry point from an [`Objective`] and a batch to a loss.

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{Objective, UnitKind};
use crate::binary::{BinaryBatch, RunningMean, bco_loss, kto_loss};
use crate::error::{AlgoError, Result};
use crate::exploration::{selm_loss, vpo_loss};
use crate::listwise::{ListBatch, lipo_lambda_loss, pro_loss};
use crate::output::{LossOutput, Stats};
use crate::pairwise::{
    PairBatch, cdpo_loss, dpo_loss, ipo_loss, ln_dpo_loss, rdpo_loss, rpo_loss, simpo_loss,
    soft_dpo_loss,
};
use crate::policy::{
    GroupBatch, RolloutBatch, dr_grpo_loss, grpo_loss, ppo_loss, reinforce_pp_loss, rloo_loss,
    sppo_loss,
};
use crate::reward_model::{
    RatingBatch, RewardPairBatch, bradley_terry_loss, multi_objective_regression_loss,
};

/// A batch of any kind; the variant must match the objective ([`Objective::kind`]).
#[derive(Debug, Clone)]
pub enum ObjectiveInput<B: Backend> {
    /// Policy/reference log-probs of preference pairs (DPO family, VPO, SELM).
    Pairs(PairBatch<B>),
    /// Ranked lists (PRO, LiPO-λ).
    Lists(ListBatch<B>),
    /// Labelled single responses (KTO, BCO).
    Binary(BinaryBatch<B>),
    /// Groups of scored samples (GRPO, Dr. GRPO, RLOO, REINFORCE++).
    Groups(GroupBatch<B>),
    /// Tokens with advantages and values (PPO).
    Rollouts(RolloutBatch<B>),
    /// Reward-model scores of preference pairs (Bradley–Terry).
    RewardPairs(RewardPairBatch<B>),
    /// Per-objective ratings (ArmoRM regression).
    Ratings(RatingBatch<B>),
}

impl<B: Backend> ObjectiveInput<B> {
    /// The variant's name, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            ObjectiveInput::Pairs(_) => "pairs",
            ObjectiveInput::Lists(_) => "lists",
            ObjectiveInput::Binary(_) => "binary",
            ObjectiveInput::Groups(_) => "groups",
            ObjectiveInput::Rollouts(_) => "rollouts",
            ObjectiveInput::RewardPairs(_) => "reward_pairs",
            ObjectiveInput::Ratings(_) => "ratings",
        }
    }
}

/// State some objectives carry across steps; keep it in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ObjectiveState {
    /// BCO's running reward mean `δ`.
    pub bco_running_mean: RunningMean,
}

fn expected_input(objective: &Objective) -> &'static str {
    match (objective.kind(), objective) {
        (_, Objective::BradleyTerry(_)) => "reward_pairs",
        (UnitKind::Pairs, _) => "pairs",
        (UnitKind::Lists, _) => "lists",
        (UnitKind::Binary, _) => "binary",
        (UnitKind::Groups, _) => "groups",
        (UnitKind::Rollouts, _) => "rollouts",
        (UnitKind::Ratings, _) => "ratings",
    }
}

fn wrap<B: Backend, S>(out: LossOutput<B, S>, f: impl FnOnce(S) -> Stats) -> LossOutput<B, Stats> {
    LossOutput {
        loss: out.loss,
        stats: f(out.stats),
    }
}

/// Computes `objective`'s loss on `input`, updating `state` where the objective keeps one.
///
/// Fails with [`AlgoError::WrongBatch`] when the input variant does not fit the objective, and
/// with the objective's own errors (invalid config, missing or non-finite inputs) otherwise.
pub fn compute_loss<B: Backend>(
    objective: &Objective,
    input: &ObjectiveInput<B>,
    state: &mut ObjectiveState,
) -> Result<LossOutput<B, Stats>> {
    use Objective as O;
    use ObjectiveInput as I;
    Ok(match (objective, input) {
        (O::Dpo(c), I::Pairs(b)) => wrap(dpo_loss(b, c)?, Stats::Pair),
        (O::Ipo(c), I::Pairs(b)) => wrap(ipo_loss(b, c)?, Stats::Pair),
        (O::Cdpo(c), I::Pairs(b)) => wrap(cdpo_loss(b, c)?, Stats::Pair),
        (O::Rdpo(c), I::Pairs(b)) => wrap(rdpo_loss(b, c)?, Stats::Pair),
        (O::LnDpo(c), I::Pairs(b)) => wrap(ln_dpo_loss(b, c)?, Stats::Pair),
        (O::Simpo(c), I::Pairs(b)) => wrap(simpo_loss(b, c)?, Stats::Pair),
        (O::SoftDpo(c), I::Pairs(b)) => wrap(soft_dpo_loss(b, c)?, Stats::Pair),
        (O::Rpo(c), I::Pairs(b)) => wrap(rpo_loss(b, c)?, Stats::Pair),
        (O::Vpo(c), I::Pairs(b)) => wrap(vpo_loss(b, c)?, Stats::Pair),
        (O::Selm(c), I::Pairs(b)) => wrap(selm_loss(b, c)?, Stats::Pair),
        (O::Pro(c), I::Lists(b)) => wrap(pro_loss(b, c)?, Stats::List),
        (O::LipoLambda(c), I::Lists(b)) => wrap(lipo_lambda_loss(b, c)?, Stats::List),
        (O::Kto(c), I::Binary(b)) => wrap(kto_loss(b, c)?, Stats::Binary),
        (O::Bco(c), I::Binary(b)) => {
            wrap(bco_loss(b, c, &mut state.bco_running_mean)?, Stats::Binary)
        }
        (O::Ppo(c), I::Rollouts(b)) => wrap(ppo_loss(b, c)?, Stats::Policy),
        (O::Grpo(c), I::Groups(b)) => wrap(grpo_loss(b, c)?, Stats::Policy),
        (O::DrGrpo(c), I::Groups(b)) => wrap(dr_grpo_loss(b, c)?, Stats::Policy),
        (O::Rloo(c), I::Groups(b)) => wrap(rloo_loss(b, c)?, Stats::Policy),
        (O::ReinforcePp(c), I::Groups(b)) => wrap(reinforce_pp_loss(b, c)?, Stats::Policy),
        (O::Sppo(c), I::Groups(b)) => wrap(sppo_loss(b, c)?, Stats::Policy),
        (O::BradleyTerry(c), I::RewardPairs(b)) => wrap(bradley_terry_loss(b, c)?, Stats::Reward),
        (O::ArmoRegression(_), I::Ratings(b)) => {
            wrap(multi_objective_regression_loss(b)?, Stats::Reward)
        }
        (o, i) => {
            return Err(AlgoError::WrongBatch {
                objective: o.name(),
                expected: expected_input(o),
                got: i.kind_name(),
            });
        }
    })
}
