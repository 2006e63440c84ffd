//! Validation of the eval config: every check, in one place, with errors that name the field
//! (`policies[1].name`, `judge.pairs[0][1]`, `scorers[2].scorer.pattern`).

use std::collections::HashSet;

use crate::config::{EvalConfig, JudgeSection, PromptsConfig, SplitChoice};
use crate::error::EvalError;

impl EvalConfig {
    /// Checks every field, naming the first bad one. Does not touch the file system beyond
    /// what the scorer configs check, so it is cheap to call at start-up.
    pub fn validate(&self) -> Result<(), EvalError> {
        let bad = |f: &str, m: &str| Err(EvalError::config(f, m));
        self.device()?;
        self.precision()?;
        if self.policies.is_empty() {
            return bad(
                "policies",
                "list at least one policy ([[policies]] name, path)",
            );
        }
        let mut names = HashSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            if p.name.trim().is_empty() {
                return bad(&format!("policies[{i}].name"), "empty");
            }
            if !names.insert(p.name.as_str()) {
                return bad(
                    &format!("policies[{i}].name"),
                    &format!("`{}` is used twice", p.name),
                );
            }
            if p.path.as_os_str().is_empty() {
                return bad(&format!("policies[{i}].path"), "empty");
            }
        }
        if let Some(p) = &self.prompts {
            validate_prompts(p)?;
        }
        self.validate_generation()?;
        let mut scorer_names = HashSet::new();
        for (i, s) in self.scorers.iter().enumerate() {
            let name = s.effective_name();
            if !scorer_names.insert(name.clone()) {
                return bad(
                    &format!("scorers[{i}].name"),
                    &format!("`{name}` is used twice (set distinct names)"),
                );
            }
            s.scorer
                .validate_at(&format!("scorers[{i}].scorer."))
                .map_err(EvalError::from)?;
        }
        if (!self.scorers.is_empty() || self.judge.is_some()) && self.prompts.is_none() {
            return bad(
                "prompts",
                "scorers and win rates need prompts to sample ([prompts] path or builtin)",
            );
        }
        if let Some(j) = &self.judge {
            self.validate_judge(j, &names, &scorer_names)?;
        }
        if let Some(r) = &self.ranking {
            if r.path.as_os_str().is_empty() {
                return bad("ranking.path", "empty");
            }
            if r.batch_size == 0 {
                return bad("ranking.batch_size", "must be at least 1");
            }
            if r.max_len < 2 {
                return bad("ranking.max_len", "must be at least 2");
            }
        }
        if let Some(r) = &self.reference {
            if r.path.as_os_str().is_empty() {
                return bad("reference.path", "empty");
            }
            if r.batch_size == 0 {
                return bad("reference.batch_size", "must be at least 1");
            }
        }
        let s = &self.stats;
        if s.bootstrap_resamples < 10 {
            return bad("stats.bootstrap_resamples", "must be at least 10");
        }
        if !(s.level > 0.0 && s.level < 1.0) {
            return bad("stats.level", "must be in (0, 1), e.g. 0.95");
        }
        Ok(())
    }

    fn validate_generation(&self) -> Result<(), EvalError> {
        let g = &self.generation;
        let bad = |f: &str, m: String| Err(EvalError::config(format!("generation.{f}"), m));
        if g.samples_per_prompt == 0 {
            return bad("samples_per_prompt", "must be at least 1".into());
        }
        if g.max_new_tokens == 0 {
            return bad("max_new_tokens", "must be at least 1".into());
        }
        if !(g.temperature >= 0.0 && g.temperature.is_finite()) {
            return bad(
                "temperature",
                format!("must be a finite number >= 0, got {}", g.temperature),
            );
        }
        if !(g.top_p > 0.0 && g.top_p <= 1.0) {
            return bad("top_p", format!("must be in (0, 1], got {}", g.top_p));
        }
        if g.batch_prompts == 0 {
            return bad("batch_prompts", "must be at least 1".into());
        }
        Ok(())
    }

    fn validate_judge(
        &self,
        j: &JudgeSection,
        policies: &HashSet<&str>,
        scorers: &HashSet<String>,
    ) -> Result<(), EvalError> {
        for (i, [a, b]) in j.pairs.iter().flatten().enumerate() {
            for (k, name) in [a, b].into_iter().enumerate() {
                if !policies.contains(name.as_str()) {
                    return Err(EvalError::config(
                        format!("judge.pairs[{i}][{k}]"),
                        format!("no policy is named `{name}`"),
                    ));
                }
            }
            if a == b {
                return Err(EvalError::config(
                    format!("judge.pairs[{i}]"),
                    "a policy against itself (list two names; two entries may share a path)",
                ));
            }
        }
        for (i, name) in j.scorers.iter().flatten().enumerate() {
            if !scorers.contains(name) {
                return Err(EvalError::config(
                    format!("judge.scorers[{i}]"),
                    format!("no scorer is named `{name}` (names: {scorers:?})"),
                ));
            }
        }
        if let Some(c) = self.llm_judge() {
            c.validate("judge.llm.")?;
        }
        if let Some(c) = self.local_judge() {
            if c.policy {
                return Err(EvalError::config(
                    "judge.local.policy",
                    "rlhf eval judges with a fixed checkpoint: give its `path`",
                ));
            }
            c.validate("judge.local.")?;
        }
        Ok(())
    }
}

fn validate_prompts(p: &PromptsConfig) -> Result<(), EvalError> {
    let bad = |f: &str, m: &str| Err(EvalError::config(format!("prompts.{f}"), m));
    match (&p.path, &p.builtin) {
        (None, None) => return bad("path", "set `path` (a JSONL or Parquet file) or `builtin`"),
        (Some(_), Some(_)) => return bad("builtin", "set only one of `path` and `builtin`"),
        (None, Some(task)) => {
            if let Err(e) = task.parse::<rlhf_data::BuiltinTask>() {
                return bad("builtin", &e.to_string());
            }
            if p.builtin_prompts == 0 {
                return bad("builtin_prompts", "must be at least 1");
            }
        }
        (Some(path), None) if path.as_os_str().is_empty() => return bad("path", "empty"),
        (Some(_), None) => {}
    }
    if !(0.0..=1.0).contains(&p.heldout_fraction) {
        return bad("heldout_fraction", "must be in [0, 1]");
    }
    if p.split != SplitChoice::All && p.heldout_fraction == 0.0 {
        return bad(
            "heldout_fraction",
            "a train or heldout split needs the run's heldout_fraction (> 0)",
        );
    }
    if p.limit == Some(0) {
        return bad("limit", "must be at least 1 (leave it out for all prompts)");
    }
    Ok(())
}
