//! Resumability: a run interrupted after its second generation batch leaves those samples in
//! the cache; the rerun generates only the rest, and a third run generates and scores nothing
//! yet reports the same numbers — which are also those of a run that was never interrupted.

mod common;

use rlhf_eval::{EvalConfig, EvalReport, run_eval};

fn run(config: &EvalConfig) -> anyhow::Result<EvalReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(run_eval(config, |_| {}))?)
}

/// The numbers, without the work counters.
fn numbers(r: &EvalReport) -> EvalReport {
    EvalReport {
        work: Default::default(),
        ..r.clone()
    }
}

#[test]
fn an_interrupted_run_resumes_without_regenerating() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fixture = common::fixture();
    let mut config = common::config(vec![common::policy("p", &fixture)], 12, 2);
    config.output.dir = Some(dir.path().join("eval"));

    // Interrupt (a panic, as a kill would) once the second batch of 4 prompts is cached.
    let interrupted = {
        let config = config.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(run_eval(&config, |line| {
                if line.contains("sampled 8/12") {
                    panic!("simulated interruption");
                }
            }))
            .map_err(|e| e.to_string())
        })
        .join()
    };
    assert!(
        interrupted.is_err(),
        "the first run must have been interrupted"
    );
    assert!(!dir.path().join("eval/report.json").exists());

    // The rerun generates only the last batch: 4 prompts × 2 samples.
    let resumed = run(&config)?;
    assert_eq!(resumed.work.cached_generations, 16);
    assert_eq!(resumed.work.generated, 8);
    assert_eq!(resumed.work.scored, 24);

    // A third run does no work at all and reports the same numbers.
    let cached = run(&config)?;
    assert_eq!(
        (cached.work.generated, cached.work.cached_generations),
        (0, 24)
    );
    assert_eq!((cached.work.scored, cached.work.cached_scores), (0, 24));
    assert_eq!(numbers(&cached), numbers(&resumed));

    // A run that was never interrupted (fresh cache) gets the same numbers too.
    let mut fresh_config = config.clone();
    fresh_config.output.dir = Some(dir.path().join("fresh"));
    let fresh = run(&fresh_config)?;
    assert_eq!(fresh.work.generated, 24);
    assert_eq!(numbers(&fresh), numbers(&resumed));

    // Changing a sampling setting misses the cache instead of returning stale samples.
    let mut changed = config.clone();
    changed.generation.temperature = 0.5;
    let changed = run(&changed)?;
    assert_eq!(
        (changed.work.generated, changed.work.cached_generations),
        (24, 0)
    );

    // Without an output folder nothing is cached or written.
    let mut no_cache = config;
    no_cache.output.dir = None;
    assert_eq!(run(&no_cache)?.work.generated, 24);
    Ok(())
}
