//! Bad input at the gRPC boundaries of the learner and the rollout worker (design:
//! "oversized or malformed messages get a gRPC error, and the process lives"). Learner: units
//! naming tokens outside the vocabulary, empty or ragged sequences, non-finite numbers, a
//! sequence longer than the model's context (it once made the learner allocate 51 GB and
//! abort), a message over the size limit. Worker: a completion budget beyond the context or an
//! enormous `n` (each once an unbounded allocation). Each is refused with a status naming the
//! problem, nothing is trained, and the same process then serves a good request.

use rlhf_core::CancellationToken;
use rlhf_learner::LearnerConfig;
use rlhf_proto::v1;
use tokio::net::TcpListener;

mod common;
use common::fixture;

fn seq(prompt: Vec<u32>, completion: Vec<u32>) -> v1::Sequence {
    let n = completion.len();
    v1::Sequence {
        id: Some(v1::SampleId {
            iteration: 0,
            prompt_id: "p".into(),
            sample_index: 0,
        }),
        policy_version: 0,
        prompt_ids: prompt,
        completion_ids: completion,
        behaviour_logprobs: vec![-1.0; n],
        reward: 0.0,
    }
}

fn pair(chosen: v1::Sequence, rejected: v1::Sequence) -> v1::TrainingUnit {
    v1::TrainingUnit {
        unit: Some(v1::training_unit::Unit::Pair(v1::Pair {
            chosen: Some(chosen),
            rejected: Some(rejected),
            strength: 1.0,
        })),
    }
}

async fn train(
    learner: &mut v1::learner_client::LearnerClient<tonic::transport::Channel>,
    units: Vec<v1::TrainingUnit>,
) -> Result<v1::TrainDone, tonic::Status> {
    train_at(learner, units, None).await
}

/// [`train`] with a learning rate sent along (`TrainRequest.lr`).
async fn train_at(
    learner: &mut v1::learner_client::LearnerClient<tonic::transport::Channel>,
    units: Vec<v1::TrainingUnit>,
    lr: Option<f64>,
) -> Result<v1::TrainDone, tonic::Status> {
    use futures::StreamExt;
    let req = v1::TrainRequest {
        iteration: 0,
        units,
        incarnation: 0,
        lr,
    };
    let mut events = learner
        .train(futures::stream::iter(vec![req]))
        .await?
        .into_inner();
    while let Some(e) = events.next().await {
        if let Some(v1::train_event::Event::Done(d)) = e?.event {
            return Ok(d);
        }
    }
    Err(tonic::Status::internal("no result"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_units_and_oversized_messages_are_refused_and_the_learner_lives() -> anyhow::Result<()>
{
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let mut config = LearnerConfig::new(fixture());
    config.max_message_bytes = 64 * 1024;
    tokio::spawn(rlhf_learner::run(config, listener, shutdown.clone(), None));
    let mut learner = loop {
        match v1::learner_client::LearnerClient::connect(addr.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    let good = || {
        pair(
            seq(vec![1, 2, 3], vec![4, 5]),
            seq(vec![1, 2, 3], vec![6, 7]),
        )
    };
    let mut nan = seq(vec![1, 2, 3], vec![4, 5]);
    nan.behaviour_logprobs = vec![f32::NAN, -1.0];
    let mut ragged = seq(vec![1, 2, 3], vec![4, 5]);
    ragged.behaviour_logprobs = vec![-1.0];
    let cases: Vec<(&str, Vec<v1::TrainingUnit>, &str)> = vec![
        (
            "a token outside the vocabulary",
            vec![pair(
                seq(vec![1, 2, 3], vec![4, 4_000_000]),
                seq(vec![1], vec![6]),
            )],
            "4000000",
        ),
        (
            "an empty completion",
            vec![pair(seq(vec![1, 2, 3], vec![]), seq(vec![1], vec![6]))],
            "completion",
        ),
        (
            "a NaN behaviour log-prob",
            vec![v1::TrainingUnit {
                unit: Some(v1::training_unit::Unit::Rollout(nan)),
            }],
            "non-finite behaviour_logprob",
        ),
        (
            "log-probs not one per completion token",
            vec![v1::TrainingUnit {
                unit: Some(v1::training_unit::Unit::Rollout(ragged)),
            }],
            "1 behaviour_logprobs for 2 completion_ids",
        ),
        (
            "a non-finite reward",
            vec![pair(
                v1::Sequence {
                    reward: f64::INFINITY,
                    ..seq(vec![1], vec![2])
                },
                seq(vec![1], vec![6]),
            )],
            "non-finite reward",
        ),
        (
            "a pair without its rejected sequence",
            vec![v1::TrainingUnit {
                unit: Some(v1::training_unit::Unit::Pair(v1::Pair {
                    chosen: Some(seq(vec![1], vec![2])),
                    rejected: None,
                    strength: 1.0,
                })),
            }],
            "rejected",
        ),
        (
            "a sequence longer than the policy's context",
            vec![pair(seq(vec![1; 300], vec![2; 10]), seq(vec![1], vec![6]))],
            "max_position_embeddings = 256",
        ),
        (
            "a message over the size limit",
            (0..200)
                .map(|_| {
                    pair(
                        seq(vec![300; 200], vec![301; 50]),
                        seq(vec![300; 200], vec![302; 50]),
                    )
                })
                .collect(),
            "limit",
        ),
    ];
    for (what, units, named) in cases {
        let e = match train(&mut learner, units).await {
            Ok(d) => anyhow::bail!("{what}: trained (version {})", d.policy_version),
            Err(e) => e,
        };
        assert!(
            matches!(
                e.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::OutOfRange
                    | tonic::Code::ResourceExhausted
            ),
            "{what}: {e:?}"
        );
        assert!(e.message().contains(named), "{what}: {}", e.message());
        let status = learner
            .status(v1::LearnerStatusRequest {})
            .await?
            .into_inner();
        assert_eq!(status.policy_version, 0, "{what}: trained");
    }
    for lr in [-1.0, 0.0, f64::NAN] {
        let e = match train_at(&mut learner, vec![good()], Some(lr)).await {
            Ok(d) => anyhow::bail!("lr {lr}: trained (version {})", d.policy_version),
            Err(e) => e,
        };
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "lr {lr}: {e:?}");
        assert!(e.message().contains("lr:"), "{}", e.message());
    }
    // The same learner trains a good unit.
    assert_eq!(train(&mut learner, vec![good()]).await?.policy_version, 1);
    shutdown.cancel();
    Ok(())
}

/// A learning rate sent with an update (an operator's `rlhf set lr=...`) applies from that
/// update on: at 1e-30 no published weight moves by more than 1e-20, also for the next update
/// sent without one; back at 0.01 they move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learning_rate_sent_with_an_update_applies_from_then_on() -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let mut config = LearnerConfig::new(fixture());
    config.weight_decay = 0.0;
    tokio::spawn(rlhf_learner::run(config, listener, shutdown.clone(), None));
    let mut learner = loop {
        match v1::learner_client::LearnerClient::connect(addr.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    let unit = || {
        pair(
            seq(vec![1, 2, 3], vec![4, 5]),
            seq(vec![1, 2, 3], vec![6, 7]),
        )
    };
    let weights = |version: u64| {
        let addr = addr.clone();
        async move {
            rlhf_proto::weights::fetch(&addr, version, 0, None, 64 << 20)
                .await
                .map_err(|s| anyhow::anyhow!("{s:?}"))
        }
    };
    // The largest change of any weight between two published versions.
    let moved = |a: &[u8], b: &[u8]| -> anyhow::Result<f32> {
        let origin = std::path::Path::new("<test>");
        let mut a = rlhf_model::weights::WeightStore::from_bytes(a, origin)?;
        let mut b = rlhf_model::weights::WeightStore::from_bytes(b, origin)?;
        let mut most = 0.0f32;
        for name in a.remaining() {
            let shape = a.shape(&name).map(<[usize]>::to_vec).unwrap_or_default();
            let (x, y) = (a.take(&name, &shape)?, b.take(&name, &shape)?);
            for (p, q) in x.data.iter().zip(&y.data) {
                most = most.max((p - q).abs());
            }
        }
        Ok(most)
    };
    let v0 = weights(0).await?;
    let version = train_at(&mut learner, vec![unit()], Some(1e-30)).await?;
    assert_eq!(version.policy_version, 1);
    let tiny = moved(&v0, &weights(1).await?)?;
    assert!(tiny < 1e-20, "a 1e-30 step moved a weight by {tiny}");
    assert_eq!(train(&mut learner, vec![unit()]).await?.policy_version, 2);
    let still = moved(&v0, &weights(2).await?)?;
    assert!(
        still < 1e-20,
        "the rate did not stay at 1e-30: moved {still}"
    );
    let version = train_at(&mut learner, vec![unit()], Some(0.01)).await?;
    assert_eq!(version.policy_version, 3);
    let big = moved(&v0, &weights(3).await?)?;
    assert!(big > 1e-3, "a 0.01 step moved the weights by only {big}");
    shutdown.cancel();
    Ok(())
}

/// The rollout worker's boundary: a request that would allocate without bound (a completion
/// budget beyond the model's context, an enormous `n`) is refused naming the limit, and the
/// worker then serves a good request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_generate_requests_are_refused_and_the_worker_lives() -> anyhow::Result<()> {
    use futures::StreamExt;
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    tokio::spawn(rlhf_rollout::run(
        rlhf_rollout::RolloutConfig::new(fixture()),
        listener,
        shutdown.clone(),
        None,
    ));
    let mut worker = loop {
        match v1::rollout_client::RolloutClient::connect(addr.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    let request = |n: u32, max_new_tokens: u32| v1::GenerateRequest {
        iteration: 0,
        lease_id: "l".into(),
        policy_version: 0,
        weights_from: String::new(),
        weights_incarnation: 0,
        prompts: vec![v1::Prompt {
            prompt_id: "a".into(),
            text: "Hello".into(),
            messages: vec![],
        }],
        n,
        sampling: Some(v1::SamplingParams {
            max_new_tokens,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            stop_ids: vec![],
        }),
        seed: 1,
    };
    for (what, req, named) in [
        (
            "a completion budget beyond the context",
            request(2, 1_000_000_000),
            "max_position_embeddings = 256",
        ),
        ("an enormous n", request(u32::MAX, 4), "at most 1048576"),
    ] {
        let e = match worker.generate(req).await {
            Ok(_) => anyhow::bail!("{what}: accepted"),
            Err(e) => e,
        };
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().contains(named), "{what}: {}", e.message());
    }
    let mut stream = worker.generate(request(2, 4)).await?.into_inner();
    let mut completions = 0;
    while let Some(r) = stream.next().await {
        completions += r?.completions.len();
    }
    assert_eq!(completions, 2);

    // A prompt too long for the context with the budget added is skipped and reported, the
    // others sampled; a request of only such prompts fetches no weights (here: none to fetch
    // from) and answers with the skips alone.
    let long = v1::Prompt {
        prompt_id: "long".into(),
        text: "Hello ".repeat(300),
        messages: vec![],
    };
    let collect = |req: v1::GenerateRequest| {
        let mut worker = worker.clone();
        async move {
            let mut stream = worker.generate(req).await?.into_inner();
            let (mut completions, mut skipped) = (vec![], vec![]);
            while let Some(r) = stream.next().await {
                let r = r?;
                completions.extend(r.completions);
                skipped.extend(r.skipped);
            }
            anyhow::Ok((completions, skipped))
        }
    };
    let mut mixed = request(2, 4);
    mixed.prompts.push(long.clone());
    let (completions, skipped) = collect(mixed).await?;
    assert_eq!(completions.len(), 2);
    assert!(
        completions
            .iter()
            .all(|c| c.id.as_ref().is_some_and(|i| i.prompt_id == "a"))
    );
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].prompt_id, "long");
    assert!(skipped[0].prompt_tokens + 4 > 256, "{:?}", skipped[0]);
    assert!(
        skipped[0].reason.contains("max_position_embeddings = 256"),
        "{}",
        skipped[0].reason
    );
    let mut only_long = request(2, 4);
    only_long.prompts = vec![long];
    only_long.policy_version = 7;
    let (completions, skipped) = collect(only_long).await?;
    assert!(completions.is_empty());
    assert_eq!(skipped.len(), 1);
    shutdown.cancel();
    Ok(())
}
