//! The human-readable report ([`EvalReport::to_table`]): one aligned plain-text table per
//! section (rewards, lengths and KL, win rates, ranking accuracy, groups). Missing values print
//! as `–`, never as 0.

use crate::report::{Distribution, EvalReport, RewardSummary};
use crate::stats::Interval;

/// Left-aligned text columns separated by two spaces.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for r in &self.rows {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(c, s)| format!("{s:<w$}", w = width[c]))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
    }
}

/// Three decimals, without a `-0.000` for tiny negative values.
fn fixed(v: f64) -> String {
    let s = format!("{v:.3}");
    if s == "-0.000" { "0.000".into() } else { s }
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), fixed)
}

fn ci(i: Option<Interval>) -> String {
    i.map_or_else(
        || "–".to_owned(),
        |i| format!("[{}, {}]", fixed(i.lo), fixed(i.hi)),
    )
}

fn dist(d: Option<Distribution>) -> [String; 3] {
    match d {
        Some(d) => [
            format!("{:.1}", d.mean),
            format!("{:.1}", d.median),
            format!("{:.1}", d.p90),
        ],
        None => ["–".into(), "–".into(), "–".into()],
    }
}

fn failed(r: &RewardSummary) -> String {
    if r.failed == 0 {
        return "0".into();
    }
    let kinds: Vec<String> = r.failures.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("{} ({})", r.failed, kinds.join(", "))
}

impl EvalReport {
    /// The report as aligned plain-text tables.
    pub fn to_table(&self) -> String {
        let s = &self.settings;
        let g = &s.generation;
        let level = format!("{:.0}% CI", s.ci_level * 100.0);
        let mut out = String::new();
        out.push_str(&format!(
            "rlhf eval: {} prompts × {} samples (seed {}, temperature {}, top_k {}, top_p {}, max_new_tokens {}, chat {})\n",
            s.prompts,
            g.samples_per_prompt,
            g.seed,
            g.temperature,
            g.top_k,
            g.top_p,
            g.max_new_tokens,
            if g.chat { "on" } else { "off" }
        ));
        out.push_str(&format!("confidence intervals: {}\n", s.ci_method));
        for note in &s.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        if self.policies.iter().any(|p| !p.rewards.is_empty()) {
            out.push_str("\nRewards\n");
            let mut t = Table::new(&[
                "policy", "scorer", "mean", &level, "median", "scored", "failed",
            ]);
            for p in &self.policies {
                for r in &p.rewards {
                    t.row(vec![
                        p.name.clone(),
                        r.scorer.clone(),
                        num(r.mean),
                        ci(r.ci),
                        num(r.median),
                        r.scored.to_string(),
                        failed(r),
                    ]);
                }
            }
            t.render(&mut out);
        }
        if self.policies.iter().any(|p| p.length.is_some()) {
            let kl_header = format!("KL (k1) {level}");
            out.push_str("\nLengths (tokens exclude the stop token) and KL to the reference\n");
            let mut t = Table::new(&[
                "policy",
                "tokens mean",
                "median",
                "p90",
                "chars mean",
                "median",
                "p90",
                "EOS",
                "KL (k1)",
                &kl_header,
            ]);
            for p in &self.policies {
                let Some(l) = &p.length else { continue };
                let mut row = vec![p.name.clone()];
                row.extend(dist(l.tokens));
                row.extend(dist(l.chars));
                row.push(num(l.finished_by_eos));
                row.push(num(p.kl.as_ref().map(|k| k.mean)));
                row.push(ci(p.kl.as_ref().and_then(|k| k.ci)));
                t.row(row);
            }
            t.render(&mut out);
        }
        if !self.win_rates.is_empty() {
            out.push_str("\nWin rates of A over B (sample k against sample k; ties count ½)\n");
            let mut t = Table::new(&[
                "A",
                "B",
                "judge",
                "win rate",
                &level,
                "A/tie/B",
                "compared",
                "failed",
                "position agreement",
            ]);
            for w in &self.win_rates {
                t.row(vec![
                    w.a.clone(),
                    w.b.clone(),
                    w.judge.clone(),
                    num(w.win_rate_a),
                    ci(w.ci),
                    format!("{}/{}/{}", w.wins_a, w.ties, w.wins_b),
                    w.compared.to_string(),
                    w.failed.to_string(),
                    num(w.position_agreement),
                ]);
            }
            t.render(&mut out);
        }
        if self.policies.iter().any(|p| p.ranking.is_some()) {
            let data = s.ranking_data.as_deref().unwrap_or("preference pairs");
            out.push_str(&format!("\nRanking accuracy on {data}\n"));
            let mut t = Table::new(&[
                "policy",
                "accuracy",
                &level,
                "ref-adjusted",
                &level,
                "mean margin",
                "pairs",
                "skipped",
            ]);
            for p in &self.policies {
                let Some(r) = &p.ranking else { continue };
                t.row(vec![
                    p.name.clone(),
                    num(r.accuracy),
                    ci(r.accuracy_ci),
                    num(r.reference_adjusted),
                    ci(r.reference_adjusted_ci),
                    num(r.mean_margin),
                    r.pairs.to_string(),
                    r.skipped.to_string(),
                ]);
            }
            t.render(&mut out);
        }
        if self.policies.iter().any(|p| !p.groups.is_empty()) {
            out.push_str("\nBy group (mean reward per scorer; mean tokens; EOS rate)\n");
            let mut header = vec!["group".to_owned(), "policy".into(), "prompts".into()];
            header.extend(s.scorers.iter().cloned());
            header.extend(["tokens".to_owned(), "EOS".into()]);
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            let mut t = Table::new(&header);
            let mut groups: Vec<&str> = self
                .policies
                .iter()
                .flat_map(|p| p.groups.iter().map(|g| g.group.as_str()))
                .collect();
            groups.sort_unstable();
            groups.dedup();
            for group in groups {
                for p in &self.policies {
                    let Some(g) = p.groups.iter().find(|g| g.group == group) else {
                        continue;
                    };
                    let mut row = vec![group.to_owned(), p.name.clone(), g.prompts.to_string()];
                    row.extend(g.rewards.iter().map(|r| num(r.mean)));
                    row.push(dist(g.length.tokens)[0].clone());
                    row.push(num(g.length.finished_by_eos));
                    t.row(row);
                }
            }
            t.render(&mut out);
        }
        let w = &self.work;
        out.push_str(&format!(
            "\nwork: {} samples generated ({} cached), {} scored ({} cached), {} log-probs ({} cached), {} judged ({} cached)\n",
            w.generated,
            w.cached_generations,
            w.scored,
            w.cached_scores,
            w.computed_logps,
            w.cached_logps,
            w.judged,
            w.cached_judgements
        ));
        out
    }
}
