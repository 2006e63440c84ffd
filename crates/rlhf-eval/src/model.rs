//! What evaluation computes with a policy's model beyond sampling, written once for every
//! backend (the model itself is an [`AnyModel`]: the CPU backend always, the CUDA backend in
//! builds with the `cuda` feature).

use rlhf_learner::trainer::{Seq, seq_logps};
use rlhf_model::{AnyModel, OnModel, Transformer};

/// Summed completion log-probs of `seqs` (prompt tokens masked), on the host.
pub fn completion_logps(model: &AnyModel, seqs: &[&Seq], pad: u32) -> Result<Vec<f32>, String> {
    struct SeqLogps<'a>(&'a [&'a Seq], u32);
    impl OnModel for SeqLogps<'_> {
        type Output = Result<Vec<f32>, String>;
        fn run<B: burn::tensor::backend::Backend>(self, m: &Transformer<B>) -> Self::Output {
            let (sums, _) = seq_logps(m, self.0, self.1).map_err(|e| e.to_string())?;
            rlhf_model::load::host_vec(sums.into_data()).map_err(|e| e.to_string())
        }
    }
    model.run(SeqLogps(seqs, pad))
}
