//! End to end with real models: the quickstart's initial policy (tiny-qwen2) against a policy
//! fine-tuned here on the `letters` task, scored by the `letters` rule, with the initial policy
//! as reference and a small preference dataset. The trained policy must score higher, win more
//! than half its comparisons, rank the preferred answers first, and have moved away from the
//! reference (KL > 0) while the reference's KL to itself is ~0.

mod common;

use std::io::Write;

use rlhf_eval::{EvalReport, RankingConfig, ReferenceConfig, run_eval};

fn preference_file(path: &std::path::Path) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)?;
    for (letter, other) in [("a", "e"), ("e", "o"), ("o", "t"), ("t", "a")] {
        for phrasing in ["Write the letter", "Type the letter"] {
            let chosen = [letter; 8].join(" ");
            let rejected = [other; 8].join(" ");
            writeln!(
                f,
                r#"{{"prompt": "{phrasing} {letter}", "chosen": "{chosen}", "rejected": "{rejected}"}}"#
            )?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trained_policy_beats_the_initial_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let trained = dir.path().join("trained");
    common::train_letters_policy(&trained)?;
    let prefs = dir.path().join("prefs.jsonl");
    preference_file(&prefs)?;

    let initial = common::fixture();
    let mut config = common::config(
        vec![
            common::policy("initial", &initial),
            common::policy("trained", &trained),
        ],
        16,
        2,
    );
    config.reference = Some(ReferenceConfig {
        path: initial.clone(),
        batch_size: 8,
    });
    config.ranking = Some(RankingConfig {
        path: prefs,
        limit: None,
        batch_size: 8,
        chat: None,
        max_len: 256,
    });
    config.output.dir = Some(dir.path().join("eval"));
    let mut lines = Vec::new();
    let report = run_eval(&config, |l| lines.push(l.to_owned())).await?;
    let table = report.to_table();
    println!("{table}");

    let reward = |name: &str| {
        report
            .policy(name)
            .and_then(|p| p.rewards[0].mean)
            .unwrap_or(f64::NAN)
    };
    let (r0, r1) = (reward("initial"), reward("trained"));
    assert!(r1 > r0 + 0.3, "trained {r1} vs initial {r0}");
    for p in &report.policies {
        let r = &p.rewards[0];
        assert_eq!((r.scored, r.failed, p.samples), (32, 0, 32), "{}", p.name);
        assert!(r.ci.is_some_and(|ci| ci.lo <= r.mean.unwrap_or(f64::NAN) && ci.hi >= ci.lo));
        // Four letters → four groups of four prompts.
        assert_eq!(p.groups.len(), 4, "{}", p.name);
        assert!(
            p.groups
                .iter()
                .all(|g| g.prompts == 4 && g.rewards[0].scored == 8)
        );
    }

    let w = report
        .win_rate("trained", "initial", "letters")
        .ok_or_else(|| anyhow::anyhow!("no win rate"))?;
    assert!(w.win_rate_a.unwrap_or(0.0) > 0.5, "{w:?}");
    assert_eq!(w.compared + w.failed, 32);
    assert!(w.ci.is_some_and(|ci| ci.lo > 0.5), "{w:?}");
    // Default pairs: each policy against the ones listed before it; only this one here.
    assert_eq!(report.win_rates.len(), 1);

    let trained_report = report
        .policy("trained")
        .ok_or_else(|| anyhow::anyhow!("missing"))?;
    let initial_report = report
        .policy("initial")
        .ok_or_else(|| anyhow::anyhow!("missing"))?;
    // KL: the reference against itself is ~0 (sampler and teacher-forced log-probs agree), the
    // trained policy has moved.
    let kl0 = initial_report.kl.as_ref().map_or(f64::NAN, |k| k.mean);
    let kl1 = trained_report.kl.as_ref().map_or(f64::NAN, |k| k.mean);
    assert!(kl0.abs() < 1e-2, "KL(initial ‖ initial) = {kl0}");
    assert!(kl1 > 1.0, "KL(trained ‖ initial) = {kl1}");
    // Lengths: the trained policy writes 8 letters and stops.
    let l1 = trained_report
        .length
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no lengths"))?;
    assert!(l1.finished_by_eos.unwrap_or(0.0) > 0.5, "{l1:?}");

    // Ranking: the trained policy prefers the right letter; the reference-adjusted accuracy of
    // the reference itself is exactly ½ (every pair ties).
    let rk1 = trained_report
        .ranking
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no ranking"))?;
    let rk0 = initial_report
        .ranking
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no ranking"))?;
    assert_eq!((rk1.pairs, rk1.skipped), (8, 0));
    assert!(rk1.accuracy.unwrap_or(0.0) >= 0.875, "{rk1:?}");
    assert!(rk1.reference_adjusted.unwrap_or(0.0) >= 0.875, "{rk1:?}");
    assert_eq!(rk0.reference_adjusted, Some(0.5));

    // The report on disk: JSON that reads back to the same report, the table, the samples.
    let out = dir.path().join("eval");
    let back: EvalReport =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json"))?)?;
    assert_eq!(back, report);
    assert_eq!(std::fs::read_to_string(out.join("report.txt"))?, table);
    let samples = std::fs::read_to_string(out.join("samples.jsonl"))?;
    assert_eq!(samples.lines().count(), 64);
    for section in [
        "Rewards",
        "Win rates",
        "Ranking accuracy",
        "By group",
        "KL (k1)",
    ] {
        assert!(table.contains(section), "{section} missing from\n{table}");
    }
    assert!(
        lines.iter().any(|l| l.contains("sampled 16/16")),
        "{lines:?}"
    );

    // Ranking alone needs no prompts and samples nothing.
    let mut ranking_only = config.clone();
    (ranking_only.prompts, ranking_only.scorers) = (None, vec![]);
    ranking_only.output.dir = None;
    let alone = run_eval(&ranking_only, |_| {}).await?;
    assert_eq!(alone.work.generated, 0);
    let trained_alone = alone
        .policy("trained")
        .ok_or_else(|| anyhow::anyhow!("missing"))?;
    assert_eq!(trained_alone.ranking.as_ref(), Some(rk1));
    assert!(trained_alone.rewards.is_empty() && trained_alone.length.is_none());
    assert!(alone.win_rates.is_empty());
    Ok(())
}
