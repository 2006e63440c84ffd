//! Fetching a policy version's weights from the learner (`Learner.FetchWeights`): the chunks
//! reassembled in order, the version and SHA-256 checked. Rollout workers and scorers that judge
//! with the current policy use it.

use rlhf_core::{ErrorKind, status};
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::ChunkAssembler;
use crate::security::{self, Tls};
use crate::v1::{self, learner_client::LearnerClient};

/// The safetensors bytes of policy `version` of learner incarnation `incarnation`, fetched from
/// the learner at `from` (over TLS when `tls` is given). Errors are statuses: `Unavailable` when
/// the learner cannot be reached, `Aborted` for a stream that breaks, names another version or
/// fails its checksum.
pub async fn fetch(
    from: &str,
    version: u64,
    incarnation: u64,
    tls: Option<&Tls>,
    max_message_bytes: usize,
) -> Result<Vec<u8>, Status> {
    let channel = security::endpoint(from, tls)
        .map_err(|e| {
            status(
                ErrorKind::InvalidArgument,
                format!("learner at {from}: {e}"),
            )
        })?
        .connect()
        .await
        .map_err(|e| status(ErrorKind::Unavailable, format!("learner at {from}: {e}")))?;
    let mut client = LearnerClient::new(crate::trace::traced(channel))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let mut stream = client
        .fetch_weights(v1::FetchWeightsRequest {
            version,
            incarnation,
        })
        .await?
        .into_inner();
    let mut assembler = ChunkAssembler::default();
    let mut payload = None;
    while let Some(chunk) = stream.message().await? {
        match assembler.push(chunk) {
            Ok(Some(done)) => {
                payload = Some(done);
                break;
            }
            Ok(None) => {}
            Err(e) => {
                return Err(status(
                    ErrorKind::Aborted,
                    format!("weights v{version}: {e}"),
                ));
            }
        }
    }
    let Some((got, bytes, sha)) = payload else {
        return Err(status(
            ErrorKind::Aborted,
            format!("weights v{version}: stream ended early"),
        ));
    };
    if got != version {
        return Err(status(
            ErrorKind::Aborted,
            format!("asked for weights v{version}, received v{got}"),
        ));
    }
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if digest != sha {
        return Err(status(
            ErrorKind::Aborted,
            format!("weights v{version}: SHA-256 mismatch ({digest} vs {sha})"),
        ));
    }
    Ok(bytes)
}
