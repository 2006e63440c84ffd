//! The `Reward` gRPC service: streams batches of samples through a [`Scorer`] and answers with
//! one result per sample — a value, or an explicit error (never a default value).

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use rlhf_core::CancellationToken;
use rlhf_proto::security::{Clients, Tls};
use rlhf_proto::v1::{self, reward_server::Reward};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::scorer::PolicyRef;
use crate::{RewardError, RuleRegistry, ScoreInput, Scorer, ScorerConfig};

/// Settings of a scorer service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorerServiceConfig {
    /// A name unique among scorers.
    #[serde(default = "default_name")]
    pub name: String,
    /// What to score with.
    pub scorer: ScorerConfig,
    /// Limit on gRPC messages, bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_name() -> String {
    "scorer-0".into()
}
fn default_max_message_bytes() -> usize {
    rlhf_proto::DEFAULT_MAX_MESSAGE_BYTES
}

/// The gRPC face of a scorer.
pub struct RewardService {
    name: String,
    scorer: Arc<dyn Scorer>,
}

impl RewardService {
    /// Wraps a built scorer.
    pub fn new(name: impl Into<String>, scorer: Box<dyn Scorer>) -> Self {
        Self {
            name: name.into(),
            scorer: Arc::from(scorer),
        }
    }
}

fn input(item: v1::ScoreItem, policy: Option<&PolicyRef>) -> Result<ScoreInput, Status> {
    let id = rlhf_proto::required(item.id.as_ref(), "items.id")?;
    let metadata = if item.metadata_json.is_empty() {
        serde_json::Map::new()
    } else {
        match serde_json::from_str(&item.metadata_json) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "sample {}: `metadata_json` is not a JSON object",
                    rlhf_core::SampleId::from(id)
                )));
            }
        }
    };
    Ok(ScoreInput {
        sample_id: id.into(),
        prompt: item.prompt,
        messages: if item.messages.is_empty() {
            None
        } else {
            Some(item.messages.iter().map(Into::into).collect())
        },
        completion: item.completion,
        answer: item.answer,
        metadata,
        evaluation: item.evaluation,
        policy: policy.cloned(),
    })
}

type ScoreStream = ReceiverStream<Result<v1::ScoreResponse, Status>>;

/// Batches of one Score call scored at once.
const CONCURRENT_BATCHES: usize = 8;

/// Scores one request: a result per item, in order (a value, or an error with its kind).
async fn respond(
    msg: v1::ScoreRequest,
    scorer: &dyn Scorer,
    provenance: &str,
) -> Result<v1::ScoreResponse, Status> {
    let ids: Vec<Option<v1::SampleId>> = msg.items.iter().map(|i| i.id.clone()).collect();
    let policy = msg.policy.map(|p| PolicyRef {
        version: p.version,
        incarnation: p.incarnation,
        weights_from: p.weights_from,
    });
    let inputs = msg
        .items
        .into_iter()
        .map(|i| input(i, policy.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let outcomes = scorer.score(&inputs).await;
    let results = ids
        .into_iter()
        .zip(outcomes)
        .map(|(id, outcome)| match outcome {
            Ok(s) => v1::ScoreResult {
                id,
                value: Some(s.value),
                components: s.components.into_iter().collect(),
                error: String::new(),
                provenance: if s.provenance.is_empty() {
                    provenance.to_owned()
                } else {
                    s.provenance
                },
                error_kind: String::new(),
            },
            Err(e) => v1::ScoreResult {
                id,
                value: None,
                components: Default::default(),
                error: e.to_string(),
                provenance: provenance.to_owned(),
                error_kind: e.kind().as_str().to_string(),
            },
        })
        .collect();
    Ok(v1::ScoreResponse { results })
}

#[tonic::async_trait]
impl Reward for RewardService {
    type ScoreStream = ScoreStream;

    #[tracing::instrument(skip_all, fields(scorer = %self.name))]
    async fn score(
        &self,
        request: Request<Streaming<v1::ScoreRequest>>,
    ) -> Result<Response<Self::ScoreStream>, Status> {
        let incoming = request.into_inner();
        let scorer = self.scorer.clone();
        let provenance = self.name.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            // Batches are scored concurrently (a judge or a person may take long over one), and
            // answered in order.
            let mut responses = incoming
                .map(move |msg| {
                    let (scorer, provenance) = (scorer.clone(), provenance.clone());
                    async move { respond(msg?, scorer.as_ref(), &provenance).await }
                })
                .buffered(CONCURRENT_BATCHES);
            while let Some(response) = responses.next().await {
                let failed = response.is_err();
                if tx.send(response).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn info(
        &self,
        _request: Request<v1::RewardInfoRequest>,
    ) -> Result<Response<v1::RewardInfo>, Status> {
        Ok(Response::new(v1::RewardInfo {
            name: self.name.clone(),
        }))
    }
}

/// Serves a scorer on `listener` until `shutdown` is cancelled, over mutual TLS when `tls` is
/// given (clients need a certificate of its CA). `registry` holds the rule functions
/// `type = "rule"` scorers may name.
pub async fn run(
    config: ScorerServiceConfig,
    registry: &RuleRegistry,
    listener: TcpListener,
    shutdown: CancellationToken,
    tls: Option<Tls>,
) -> Result<(), RewardError> {
    let mut builder =
        rlhf_proto::security::server(tls.as_ref(), Clients::Members).map_err(|e| {
            RewardError::Config {
                field: "cluster.tls".into(),
                message: e.to_string(),
            }
        })?;
    config.scorer.validate()?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| RewardError::Config {
        field: "listen".into(),
        message: e.to_string(),
    })?;
    let scorer = config.scorer.build_with(registry, tls.as_ref())?;
    let svc = v1::reward_server::RewardServer::new(RewardService::new(config.name.clone(), scorer))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    tracing::info!(scorer = %config.name, %addr, "scorer serving");
    builder
        .add_service(svc)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await
        .map_err(|e| RewardError::Config {
            field: "listen".into(),
            message: format!("serving on {addr}: {e}"),
        })
}

/// A registry with the built-in tasks' rules (`letters`, `letters-1` ... from rlhf-data)
/// registered under their task names. A sample without an `answer` scores NaN, which the
/// checked scorer rejects as non-finite: a missing answer is never a silent 0.
pub fn builtin_rules() -> RuleRegistry {
    let mut registry = RuleRegistry::new();
    for name in rlhf_data::task::BUILTIN_TASK_NAMES {
        let Ok(task) = name.parse::<rlhf_data::BuiltinTask>() else {
            continue;
        };
        // Names are distinct constants, so registration cannot collide.
        let _ = registry.register(
            name,
            move |completion: &str, answer: Option<&str>| match answer {
                Some(a) => rlhf_data::builtin_reward(task, completion, a),
                None => f64::NAN,
            },
        );
    }
    registry
}
