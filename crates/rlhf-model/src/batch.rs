//! Padded token batches and everything derived from the padding on the host: position ids
//! (cumulative over the attention mask, as Hugging Face `generate` computes them), the additive
//! attention mask (causal, padding, sliding window) and the last real token of each row.

use crate::error::{ModelError, Result};

/// Which side padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingSide {
    /// Pad on the left: every row ends at the last column (what generation needs).
    #[default]
    Left,
    /// Pad on the right: every row starts at column 0 (what reward models usually expect).
    Right,
}

/// The value a masked attention score is replaced with: finite, so that a row with every key
/// masked (a padding query) stays finite instead of turning into NaN.
pub const MASKED: f32 = -1.0e30;

/// A rectangular batch of token ids with an attention mask (1 = real token, 0 = padding).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub batch: usize,
    pub len: usize,
    /// Row-major `[batch, len]`.
    pub ids: Vec<u32>,
    /// Row-major `[batch, len]`, 1 for real tokens.
    pub mask: Vec<u8>,
}

impl TokenBatch {
    /// Pads sequences of different lengths into one batch.
    pub fn pad(seqs: &[Vec<u32>], pad_id: u32, side: PaddingSide) -> Result<Self> {
        if seqs.is_empty() {
            return Err(ModelError::Input("empty batch".into()));
        }
        if let Some(i) = seqs.iter().position(Vec::is_empty) {
            return Err(ModelError::Input(format!(
                "sequence {i} of the batch is empty"
            )));
        }
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let batch = seqs.len();
        let mut ids = vec![pad_id; batch * len];
        let mut mask = vec![0u8; batch * len];
        for (row, seq) in seqs.iter().enumerate() {
            let start = match side {
                PaddingSide::Left => len - seq.len(),
                PaddingSide::Right => 0,
            };
            let base = row * len + start;
            ids[base..base + seq.len()].copy_from_slice(seq);
            mask[base..base + seq.len()].fill(1);
        }
        Ok(Self {
            batch,
            len,
            ids,
            mask,
        })
    }

    /// A batch without padding.
    pub fn unpadded(ids: Vec<u32>, batch: usize, len: usize) -> Result<Self> {
        if ids.len() != batch * len || batch == 0 || len == 0 {
            return Err(ModelError::Input(format!(
                "{} ids do not form a non-empty [{batch}, {len}] batch",
                ids.len()
            )));
        }
        Ok(Self {
            batch,
            len,
            mask: vec![1; ids.len()],
            ids,
        })
    }

    /// Row `r` without its padding.
    pub fn row(&self, r: usize) -> Vec<u32> {
        let s = r * self.len;
        self.ids[s..s + self.len]
            .iter()
            .zip(&self.mask[s..s + self.len])
            .filter(|(_, m)| **m == 1)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Column of the last real token of each row (0 for a row with none).
    pub fn last_index(&self) -> Vec<usize> {
        (0..self.batch)
            .map(|r| {
                let m = &self.mask[r * self.len..(r + 1) * self.len];
                m.iter().rposition(|&x| x == 1).unwrap_or(0)
            })
            .collect()
    }

    /// Ids as i64, for burn int tensors.
    pub fn ids_i64(&self) -> Vec<i64> {
        self.ids.iter().map(|&x| i64::from(x)).collect()
    }

    /// Checks every id against the vocabulary size.
    pub fn check_vocab(&self, vocab_size: usize) -> Result<()> {
        match self.ids.iter().find(|&&id| id as usize >= vocab_size) {
            Some(id) => Err(ModelError::Input(format!(
                "token id {id} is outside the vocabulary (size {vocab_size})"
            ))),
            None => Ok(()),
        }
    }
}

/// Host-side bookkeeping of which cache slots hold real tokens and at which position.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub batch: usize,
    /// Row-major `[batch, capacity]`: 1 where the slot holds a real token.
    pub key_mask: Vec<u8>,
    pub capacity: usize,
    /// Slots filled so far (same for every row).
    pub len: usize,
    /// Number of real tokens seen so far in each row (= the next position id).
    pub seen: Vec<i64>,
}

impl SlotState {
    pub fn new(batch: usize, capacity: usize) -> Self {
        Self {
            batch,
            key_mask: vec![0; batch * capacity],
            capacity,
            len: 0,
            seen: vec![0; batch],
        }
    }

    /// Appends `new` (`[batch, s]`) and returns the position ids of the new tokens
    /// (padding gets position 1, as in Hugging Face, but its value never matters).
    pub fn append(&mut self, new: &TokenBatch) -> Result<Vec<i64>> {
        if new.batch != self.batch {
            return Err(ModelError::Input(format!(
                "batch of {} rows appended to a cache of {}",
                new.batch, self.batch
            )));
        }
        if self.len + new.len > self.capacity {
            return Err(ModelError::Input(format!(
                "cache overflow: {} + {} tokens exceed the capacity of {}",
                self.len, new.len, self.capacity
            )));
        }
        let mut pos = vec![1i64; new.batch * new.len];
        for r in 0..new.batch {
            for t in 0..new.len {
                let m = new.mask[r * new.len + t];
                self.key_mask[r * self.capacity + self.len + t] = m;
                if m == 1 {
                    pos[r * new.len + t] = self.seen[r];
                    self.seen[r] += 1;
                }
            }
        }
        self.len += new.len;
        Ok(pos)
    }

    /// The additive attention mask `[batch, 1, q_len, width]` (row-major) for the `q_len`
    /// newest slots attending to the `self.len` slots so far: 0 where allowed, [`MASKED`]
    /// otherwise (always for the slots from `self.len` to `width`, not written yet). `window`
    /// limits how far back (in slots) a query may look.
    pub fn additive_mask(&self, q_len: usize, window: Option<usize>, width: usize) -> Vec<f32> {
        let kv = self.len;
        let first_q = kv - q_len;
        let width = width.max(kv);
        let mut out = vec![MASKED; self.batch * q_len * width];
        for r in 0..self.batch {
            let keys = &self.key_mask[r * self.capacity..r * self.capacity + kv];
            for qi in 0..q_len {
                let qs = first_q + qi;
                let lo = match window {
                    Some(w) => (qs + 1).saturating_sub(w),
                    None => 0,
                };
                let row = &mut out[(r * q_len + qi) * width..(r * q_len + qi) * width + kv];
                for j in lo..=qs {
                    if keys[j] == 1 {
                        row[j] = 0.0;
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_padding_positions_and_mask() {
        let b = TokenBatch::pad(&[vec![5, 6, 7], vec![8]], 0, PaddingSide::Left).ok();
        let b = b.as_ref();
        assert_eq!(b.map(|b| b.ids.clone()), Some(vec![5, 6, 7, 0, 0, 8]));
        assert_eq!(b.map(|b| b.last_index()), Some(vec![2, 2]));
        let mut slots = SlotState::new(2, 4);
        let pos = b.map(|b| slots.append(b));
        assert_eq!(pos.and_then(|p| p.ok()), Some(vec![0, 1, 2, 1, 1, 0]));
        let m = slots.additive_mask(3, None, 0);
        let allowed: Vec<u8> = m.iter().map(|&x| u8::from(x == 0.0)).collect();
        // row 0: causal; row 1: only slot 2 is real.
        assert_eq!(
            allowed,
            vec![
                1, 0, 0, 1, 1, 0, 1, 1, 1, /**/ 0, 0, 0, 0, 0, 0, 0, 0, 1
            ]
        );
    }

    #[test]
    fn slots_past_the_written_ones_are_masked() {
        let b = TokenBatch::unpadded(vec![1, 2], 1, 2).ok();
        let mut slots = SlotState::new(1, 8);
        assert!(b.map(|b| slots.append(&b).is_ok()).unwrap_or(false));
        let allowed: Vec<u8> = slots
            .additive_mask(2, None, 5)
            .iter()
            .map(|&x| u8::from(x == 0.0))
            .collect();
        assert_eq!(allowed, vec![1, 0, 0, 0, 0, /**/ 1, 1, 0, 0, 0]);
    }

    #[test]
    fn window_limits_lookback() {
        let b = TokenBatch::unpadded(vec![1, 2, 3, 4], 1, 4).ok();
        let mut slots = SlotState::new(1, 4);
        assert!(b.map(|b| slots.append(&b).is_ok()).unwrap_or(false));
        let allowed: Vec<u8> = slots
            .additive_mask(4, Some(2), 0)
            .iter()
            .map(|&x| u8::from(x == 0.0))
            .collect();
        assert_eq!(
            allowed,
            vec![1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
        );
    }

    #[test]
    fn bad_batches_are_errors() {
        assert!(TokenBatch::pad(&[], 0, PaddingSide::Left).is_err());
        assert!(TokenBatch::pad(&[vec![1], vec![]], 0, PaddingSide::Left).is_err());
        let b = TokenBatch::unpadded(vec![1, 9], 1, 2).ok();
        assert!(b.map(|b| b.check_vocab(5).is_err()).unwrap_or(false));
    }
}
