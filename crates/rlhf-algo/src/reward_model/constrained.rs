//! Constrained combination of several reward models with Lagrange multipliers (Moskovitz et
//! al. 2023, "Confronting Reward Model Overoptimization with Constrained RLHF").
//!
//! Each component reward `r_i` gets a constraint on its expected value `v_i = E[r_i]` relative
//! to a threshold `θ_i` (the paper's "proxy point", where more of `r_i` stops helping). The
//! policy maximises the Lagrangian reward `r_0 + Σ_i λ_i·(r_i − θ_i)`; the multipliers follow
//! projected gradient descent on the dual, `λ_i ← λ_i − η·(v̂_i − θ_i)`, clamped at 0 for
//! inequality constraints (`v_i ≥ θ_i`) and free for equality constraints (`v_i = θ_i`).
//! (The paper's sigmoid-bounded multiplier variant is not implemented.)

use serde::{Deserialize, Serialize};

use crate::error::{AlgoError, Result};
use crate::ops::{check_finite_host, check_non_negative, check_positive};

/// The kind of constraint on a component's expected reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintKind {
    /// `E[r_i] ≥ θ_i`; `λ_i ≥ 0`.
    AtLeast,
    /// `E[r_i] = θ_i`; `λ_i` of either sign (the paper's ξ-PPO equality form).
    Equal,
}

/// One constrained component.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    /// Threshold `θ_i`.
    pub threshold: f64,
    /// Constraint kind.
    pub kind: ConstraintKind,
    /// Initial multiplier `λ_i` (≥ 0 for `at_least`).
    #[serde(default)]
    pub initial_multiplier: f64,
}

/// The multipliers and their update rule; serialisable so it can live in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConstrainedRewards {
    /// The constraints, one per component reward.
    pub constraints: Vec<Constraint>,
    /// Current multipliers `λ_i`.
    pub multipliers: Vec<f64>,
    /// Dual step size η (> 0).
    pub learning_rate: f64,
}

impl ConstrainedRewards {
    /// Builds the state from constraints; fails on a bad threshold, multiplier or step size.
    pub fn new(constraints: Vec<Constraint>, learning_rate: f64) -> Result<Self> {
        check_positive("constrained.learning_rate", learning_rate)?;
        for (i, c) in constraints.iter().enumerate() {
            if !c.threshold.is_finite() {
                return Err(AlgoError::config(
                    format!("constrained.constraints[{i}].threshold"),
                    "must be finite",
                ));
            }
            match c.kind {
                ConstraintKind::AtLeast => check_non_negative(
                    &format!("constrained.constraints[{i}].initial_multiplier"),
                    c.initial_multiplier,
                )?,
                ConstraintKind::Equal if !c.initial_multiplier.is_finite() => {
                    return Err(AlgoError::config(
                        format!("constrained.constraints[{i}].initial_multiplier"),
                        "must be finite",
                    ));
                }
                ConstraintKind::Equal => {}
            }
        }
        let multipliers = constraints.iter().map(|c| c.initial_multiplier).collect();
        Ok(Self {
            constraints,
            multipliers,
            learning_rate,
        })
    }

    /// Lagrangian rewards per sample: `r_0 + Σ_i λ_i·(r_i − θ_i)`. `components[i]` holds the
    /// rewards of component `i` for every sample; non-finite rewards are rejected.
    pub fn combine(&self, task: &[f32], components: &[Vec<f32>]) -> Result<Vec<f32>> {
        self.check_components(task.len(), components)?;
        check_finite_host("task", task)?;
        Ok((0..task.len())
            .map(|s| {
                let extra: f64 = self
                    .constraints
                    .iter()
                    .zip(&self.multipliers)
                    .zip(components)
                    .map(|((c, l), r)| l * (f64::from(r[s]) - c.threshold))
                    .sum();
                (f64::from(task[s]) + extra) as f32
            })
            .collect())
    }

    /// One dual step from the batch means of each component: `λ_i ← λ_i − η·(v̂_i − θ_i)`,
    /// projected on `λ_i ≥ 0` for `at_least`. Returns the new multipliers.
    pub fn update(&mut self, observed_means: &[f64]) -> Result<&[f64]> {
        if observed_means.len() != self.constraints.len() {
            return Err(AlgoError::Shape {
                input: "observed_means",
                expected: vec![self.constraints.len()],
                got: vec![observed_means.len()],
            });
        }
        if let Some(i) = observed_means.iter().position(|v| !v.is_finite()) {
            return Err(AlgoError::NonFinite {
                input: "observed_means",
                index: i,
                value: observed_means[i] as f32,
            });
        }
        for ((l, c), v) in self
            .multipliers
            .iter_mut()
            .zip(&self.constraints)
            .zip(observed_means)
        {
            let next = *l - self.learning_rate * (v - c.threshold);
            *l = match c.kind {
                ConstraintKind::AtLeast => next.max(0.0),
                ConstraintKind::Equal => next,
            };
        }
        Ok(&self.multipliers)
    }

    fn check_components(&self, samples: usize, components: &[Vec<f32>]) -> Result<()> {
        if components.len() != self.constraints.len() {
            return Err(AlgoError::Shape {
                input: "components",
                expected: vec![self.constraints.len()],
                got: vec![components.len()],
            });
        }
        for r in components {
            if r.len() != samples {
                return Err(AlgoError::Shape {
                    input: "components",
                    expected: vec![samples],
                    got: vec![r.len()],
                });
            }
            check_finite_host("components", r)?;
        }
        Ok(())
    }
}
