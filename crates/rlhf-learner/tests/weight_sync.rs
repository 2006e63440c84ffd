//! Learner and rollout worker over real gRPC on loopback: a worker samples from version 0,
//! the learner trains one DPO update, the worker fetches version 1 (checksummed chunks) and
//! its sampler log-probs then match the learner's saved checkpoint. After the learner resumes
//! from a checkpoint, its new incarnation makes the worker fetch reused version numbers again.

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
    generate_of(client, version, 0, learner).await
}

/// [`generate`] of `version` of a learner incarnation (0: any).
async fn generate_of(
    client: &mut v1::rollout_client::RolloutClient<tonic::transport::Channel>,
    version: u64,
    incarnation: u64,
    learner: &str,
) -> anyhow::Result<Vec<v1::Completion>> {
    let req = v1::GenerateRequest {
        weights_incarnation: incarnation,
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

/// One DPO update on pairs of `samples` (first of each three preferred, or the second when
/// `swap`), meant for learner `incarnation` (0: any).
async fn train(
    learner: &mut v1::learner_client::LearnerClient<tonic::transport::Channel>,
    samples: &[v1::Completion],
    swap: bool,
    incarnation: u64,
) -> anyhow::Result<v1::TrainDone> {
    let (a, b) = if swap { (1, 0) } else { (0, 1) };
    let units: Vec<v1::TrainingUnit> = samples
        .chunks(3)
        .map(|g| v1::TrainingUnit {
            unit: Some(v1::training_unit::Unit::Pair(v1::Pair {
                chosen: Some(seq(&g[a])),
                rejected: Some(seq(&g[b])),
                strength: 1.0,
            })),
        })
        .collect();
    let req = v1::TrainRequest {
        iteration: 0,
        units,
        incarnation,
        lr: None,
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
    done.ok_or_else(|| anyhow::anyhow!("no Done event"))
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
    tokio::spawn(rlhf_learner::run(lc, l_listener, shutdown.clone(), None));
    tokio::spawn(rlhf_rollout::run(
        RolloutConfig::new(fixture()),
        r_listener,
        shutdown.clone(),
        None,
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
    let done = train(&mut learner, &v0, false, 0).await?;
    assert_eq!(done.policy_version, 1);
    let m = done.metrics.ok_or_else(|| anyhow::anyhow!("no metrics"))?;
    assert!(m.loss.is_finite() && m.tokens > 0, "{m:?}");
    // Units meant for another incarnation (the learner this one replaced) are refused before
    // training: the version does not move.
    let status = learner
        .status(v1::LearnerStatusRequest {})
        .await?
        .into_inner();
    let other = status.incarnation.wrapping_add(1).max(1);
    let refused = train(&mut learner, &v0, false, other).await;
    let e = refused
        .err()
        .ok_or_else(|| anyhow::anyhow!("units for another incarnation trained"))?;
    assert!(e.to_string().contains("not trained"), "{e}");
    let after = learner
        .status(v1::LearnerStatusRequest {})
        .await?
        .into_inner();
    assert_eq!(after.policy_version, 1);
    // Nor does it write its state into another incarnation's checkpoint.
    let elsewhere = tempfile_dir()?.join("other-line");
    let refused = learner
        .save_checkpoint(v1::SaveCheckpointRequest {
            path: elsewhere.display().to_string(),
            training_state: true,
            incarnation: other,
        })
        .await;
    let e = refused
        .err()
        .ok_or_else(|| anyhow::anyhow!("a checkpoint for another incarnation was written"))?;
    assert!(e.message().contains("not written"), "{e}");
    assert!(!elsewhere.exists());

    let v1s = generate(&mut rollout, 1, &learner_addr).await?;
    assert!(v1s.iter().all(|c| c.policy_version == 1));
    // The worker's version-1 log-probs equal teacher-forced log-probs of the learner's checkpoint.
    let dir = tempfile_dir()?;
    learner
        .save_checkpoint(v1::SaveCheckpointRequest {
            training_state: false,
            path: dir.display().to_string(),
            incarnation: 0,
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

    // Resuming the learner from a checkpoint at version 1 starts a new line of versions: a
    // version number reached again names other weights, and the worker must not reuse its own.
    let resumable = dir.join("resumable");
    learner
        .save_checkpoint(v1::SaveCheckpointRequest {
            path: resumable.display().to_string(),
            training_state: true,
            incarnation: 0,
        })
        .await?;
    let old = learner
        .status(v1::LearnerStatusRequest {})
        .await?
        .into_inner();
    assert_ne!(old.incarnation, 0);
    // Units meant for this incarnation train.
    assert_eq!(
        train(&mut learner, &v0, false, old.incarnation)
            .await?
            .policy_version,
        2
    );
    let old_v2 = generate_of(&mut rollout, 2, old.incarnation, &learner_addr).await?;
    let resumed = learner
        .resume(v1::ResumeRequest {
            path: resumable.display().to_string(),
        })
        .await?
        .into_inner();
    assert_eq!((resumed.policy_version, resumed.updates), (1, 1));
    assert_ne!(resumed.incarnation, old.incarnation);
    // A different update from there is a different version 2: the worker, which holds the old
    // line's version 2, fetches it.
    assert_eq!(train(&mut learner, &v0, true, 0).await?.policy_version, 2);
    let new_v2 = generate_of(&mut rollout, 2, resumed.incarnation, &learner_addr).await?;
    let logprobs =
        |cs: &[v1::Completion]| cs.iter().map(|c| c.logprobs.clone()).collect::<Vec<_>>();
    assert_ne!(logprobs(&new_v2), logprobs(&old_v2));
    // The restored version 1 samples as version 1 did.
    let again = generate_of(&mut rollout, 1, resumed.incarnation, &learner_addr).await?;
    assert_eq!(again, v1s);
    // Versions of the old line are refused by name.
    let err = generate_of(&mut rollout, 1, old.incarnation, &learner_addr)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("incarnation"), "{err}");
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
