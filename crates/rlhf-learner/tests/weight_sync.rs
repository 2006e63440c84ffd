//! Learner and rollout worker over real gRPC on loopback: a worker samples from version 0,
//! the learner trains one DPO update, the worker fetches version 1 (checksummed chunks) and
//! its sampler log-probs then match the learner's saved checkpoint.

use std::path::PathBuf;

use futures::StreamExt;
use rlhf_core::CancellationToken;
use rlhf_learner::LearnerConfig;
use rlhf_proto::v1;
use rlhf_rollout::RolloutConfig;
use tokio::net::TcpListener;

mod common;
use common::fixture;

async fn generate(
    client: &mut v1::rollout_client::RolloutClient<tonic::transport::Channel>,
    version: u64,
    learner: &str,
) -> anyhow::Result<Vec<v1::Completion>> {
    let req = v1::GenerateRequest {
        iteration: version,
        lease_id: format!("lease-{version}"),
        policy_version: version,
        weights_from: learner.to_string(),
        prompts: vec![
            v1::Prompt {
                prompt_id: "a".into(),
                text: "Direct preference".into(),
                messages: vec![],
            },
            v1::Prompt {
                prompt_id: "b".into(),
                text: String::new(),
                messages: vec![v1::ChatMessage {
                    role: "user".into(),
                    content: "Rank these.".into(),
                }],
            },
        ],
        n: 3,
        sampling: Some(v1::SamplingParams {
            max_new_tokens: 6,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            stop_ids: vec![],
        }),
        seed: 11,
    };
    let mut stream = client.generate(req).await?.into_inner();
    let mut out = vec![];
    while let Some(r) = stream.next().await {
        out.extend(r?.completions);
    }
    Ok(out)
}

fn seq(c: &v1::Completion) -> v1::Sequence {
    v1::Sequence {
        id: c.id.clone(),
        policy_version: c.policy_version,
        prompt_ids: c.prompt_ids.clone(),
        completion_ids: c.completion_ids.clone(),
        behaviour_logprobs: c.logprobs.clone(),
        reward: 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_switches_to_trained_weights() -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let l_listener = TcpListener::bind("127.0.0.1:0").await?;
    let r_listener = TcpListener::bind("127.0.0.1:0").await?;
    let learner_addr = format!("http://{}", l_listener.local_addr()?);
    let rollout_addr = format!("http://{}", r_listener.local_addr()?);
    let mut lc = LearnerConfig::new(fixture());
    lc.lr = 1e-2;
    tokio::spawn(rlhf_learner::run(lc, l_listener, shutdown.clone()));
    tokio::spawn(rlhf_rollout::run(
        RolloutConfig::new(fixture()),
        r_listener,
        shutdown.clone(),
    ));

    let mut rollout = connect_rollout(&rollout_addr).await?;
    let v0 = generate(&mut rollout, 0, &learner_addr).await?;
    assert_eq!(v0.len(), 6);
    assert!(
        v0.iter()
            .all(|c| c.policy_version == 0 && c.logprobs.len() == c.completion_ids.len())
    );
    // Same seed, same request: identical samples.
    assert_eq!(generate(&mut rollout, 0, &learner_addr).await?, v0);

    let mut learner = v1::learner_client::LearnerClient::connect(learner_addr.clone()).await?;
    let units: Vec<v1::TrainingUnit> = v0
        .chunks(3)
        .map(|g| v1::TrainingUnit {
            unit: Some(v1::training_unit::Unit::Pair(v1::Pair {
                chosen: Some(seq(&g[0])),
                rejected: Some(seq(&g[1])),
                strength: 1.0,
            })),
        })
        .collect();
    let req = v1::TrainRequest {
        iteration: 0,
        units,
    };
    let mut events = learner
        .train(futures::stream::iter(vec![req]))
        .await?
        .into_inner();
    let mut done = None;
    while let Some(e) = events.next().await {
        if let Some(v1::train_event::Event::Done(d)) = e?.event {
            done = Some(d);
        }
    }
    let done = done.ok_or_else(|| anyhow::anyhow!("no Done event"))?;
    assert_eq!(done.policy_version, 1);
    let m = done.metrics.ok_or_else(|| anyhow::anyhow!("no metrics"))?;
    assert!(m.loss.is_finite() && m.tokens > 0, "{m:?}");

    let v1s = generate(&mut rollout, 1, &learner_addr).await?;
    assert!(v1s.iter().all(|c| c.policy_version == 1));
    // The worker's version-1 log-probs equal teacher-forced log-probs of the learner's checkpoint.
    let dir = tempfile_dir()?;
    learner
        .save_checkpoint(v1::SaveCheckpointRequest {
            training_state: false,
            path: dir.display().to_string(),
        })
        .await?;
    let model = rlhf_model::Transformer::<rlhf_model::Cpu>::load(&dir, &Default::default())?;
    for c in &v1s {
        let full: Vec<u32> = c
            .prompt_ids
            .iter()
            .chain(&c.completion_ids)
            .copied()
            .collect();
        let batch = rlhf_model::TokenBatch::unpadded(full.clone(), 1, full.len())?;
        let lp = rlhf_model::load::host_vec(model.token_logprobs(&batch)?.into_data())?;
        let tf = &lp[c.prompt_ids.len() - 1..];
        for (a, b) in tf.iter().zip(&c.logprobs) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
    // The update changed the policy.
    assert_ne!(
        v1s.iter().map(|c| c.logprobs.clone()).collect::<Vec<_>>(),
        v0.iter().map(|c| c.logprobs.clone()).collect::<Vec<_>>()
    );
    // An unknown version is a clear error.
    let err = generate(&mut rollout, 7, &learner_addr)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("version 7"), "{err}");
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn connect_rollout(
    addr: &str,
) -> anyhow::Result<v1::rollout_client::RolloutClient<tonic::transport::Channel>> {
    // The server task may still be loading the model: retry briefly.
    for _ in 0..100 {
        if let Ok(c) = v1::rollout_client::RolloutClient::connect(addr.to_string()).await {
            return Ok(c);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("rollout worker at {addr} did not come up")
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("rlhf-weight-sync-{}", std::process::id()));
    Ok(dir)
}
