//! Conversions between wire messages and `rlhf-core` types, and weight chunking.

use crate::v1;

impl From<&rlhf_core::SampleId> for v1::SampleId {
    fn from(id: &rlhf_core::SampleId) -> Self {
        v1::SampleId {
            iteration: id.iteration,
            prompt_id: id.prompt_id.clone(),
            sample_index: id.sample_index,
        }
    }
}

impl From<&v1::SampleId> for rlhf_core::SampleId {
    fn from(id: &v1::SampleId) -> Self {
        rlhf_core::SampleId {
            iteration: id.iteration,
            prompt_id: id.prompt_id.clone(),
            sample_index: id.sample_index,
        }
    }
}

impl From<&rlhf_core::ChatMessage> for v1::ChatMessage {
    fn from(m: &rlhf_core::ChatMessage) -> Self {
        v1::ChatMessage {
            role: m.role.clone(),
            content: m.content.clone(),
        }
    }
}

impl From<&v1::ChatMessage> for rlhf_core::ChatMessage {
    fn from(m: &v1::ChatMessage) -> Self {
        rlhf_core::ChatMessage::new(m.role.clone(), m.content.clone())
    }
}

/// A missing required sub-message, as a gRPC `INVALID_ARGUMENT` naming the field.
pub fn required<T>(field: Option<T>, name: &str) -> Result<T, tonic::Status> {
    field.ok_or_else(|| tonic::Status::invalid_argument(format!("missing field `{name}`")))
}

/// Splits a serialized policy into chunks of `chunk_bytes` (the last may be shorter).
pub fn chunk_weights(
    version: u64,
    payload: &bytes::Bytes,
    sha256: &str,
    chunk_bytes: usize,
) -> Vec<v1::WeightChunk> {
    let chunk_bytes = chunk_bytes.max(1);
    let total = payload.len().div_ceil(chunk_bytes).max(1);
    (0..total)
        .map(|i| {
            let start = i * chunk_bytes;
            let end = (start + chunk_bytes).min(payload.len());
            v1::WeightChunk {
                version,
                index: i as u32,
                total: total as u32,
                total_bytes: payload.len() as u64,
                sha256: sha256.to_string(),
                data: payload.slice(start..end),
            }
        })
        .collect()
}

/// Reassembles chunks received in order; checks indices, counts and sizes (the caller checks
/// the SHA-256).
#[derive(Debug, Default)]
pub struct ChunkAssembler {
    buf: Vec<u8>,
    expected: Option<(u64, u32, u64, String)>,
    next: u32,
}

impl ChunkAssembler {
    /// Adds the next chunk; returns `Some((version, payload, sha256))` after the last one.
    pub fn push(&mut self, c: v1::WeightChunk) -> Result<Option<(u64, Vec<u8>, String)>, String> {
        let header = (c.version, c.total, c.total_bytes, c.sha256.clone());
        match &self.expected {
            None => {
                if c.total == 0 || c.total_bytes > (1 << 40) {
                    return Err(format!(
                        "invalid weight stream header: {} chunks, {} bytes",
                        c.total, c.total_bytes
                    ));
                }
                self.buf.reserve(c.total_bytes as usize);
                self.expected = Some(header);
            }
            Some(h) if *h != header => {
                return Err(format!(
                    "chunk {} disagrees with the stream header (version {} vs {})",
                    c.index, c.version, h.0
                ));
            }
            Some(_) => {}
        }
        if c.index != self.next {
            return Err(format!(
                "chunk {} arrived, expected chunk {}",
                c.index, self.next
            ));
        }
        self.buf.extend_from_slice(&c.data);
        self.next += 1;
        if self.buf.len() as u64 > c.total_bytes {
            return Err(format!(
                "received more than the announced {} bytes",
                c.total_bytes
            ));
        }
        if self.next == c.total {
            if self.buf.len() as u64 != c.total_bytes {
                return Err(format!(
                    "received {} bytes, announced {}",
                    self.buf.len(),
                    c.total_bytes
                ));
            }
            return Ok(Some((c.version, std::mem::take(&mut self.buf), c.sha256)));
        }
        Ok(None)
    }

    /// Whether the stream ended early.
    pub fn incomplete(&self) -> bool {
        self.expected.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_reject_gaps() {
        let payload = bytes::Bytes::from((0..1000u32).map(|x| x as u8).collect::<Vec<_>>());
        let chunks = chunk_weights(3, &payload, "abc", 300);
        assert_eq!(chunks.len(), 4);
        let mut a = ChunkAssembler::default();
        let mut done = None;
        for c in chunks.clone() {
            done = a.push(c).ok().flatten().or(done);
        }
        assert_eq!(done, Some((3, payload.to_vec(), "abc".to_string())));

        let mut a = ChunkAssembler::default();
        assert!(a.push(chunks[0].clone()).is_ok());
        assert!(a.push(chunks[2].clone()).is_err(), "a gap is an error");
        let mut a = ChunkAssembler::default();
        let mut bad = chunks[1].clone();
        bad.version = 4;
        assert!(a.push(chunks[0].clone()).is_ok());
        assert!(
            a.push(bad).is_err(),
            "a version change mid-stream is an error"
        );
    }
}
