//! Agreement with Hugging Face transformers on the checkpoints under `tests/fixtures/hf-*`
//! (made by `make_hf_tiny.py` and `scripts/make_hf_extra.py`; outputs computed by transformers):
//! logits and token log-probs within 1e-4, greedy tokens identical, chat ids identical,
//! reward scores within 1e-4.

use burn::tensor::Tensor;
use rlhf_model::load::host_vec;
use rlhf_model::weights::WeightStore;
use rlhf_model::{
    ChatMessage, Cpu, PaddingSide, SamplingParams, TokenBatch, Tokenizer, Transformer,
};

mod common;
use common::{
    Reference, causal_dirs, fixtures, forward_checked, greedy_16, greedy_params, ids_u32,
    max_abs_diff, read_json, reward_dirs, sampled_and_checked, sampler_vs_teacher_forced,
};

type B = Cpu;

#[test]
fn found_the_fixtures() {
    assert!(
        causal_dirs().len() >= 2,
        "fixtures missing under {}",
        fixtures().display()
    );
}

#[test]
fn logits_and_logprobs_match_transformers() -> anyhow::Result<()> {
    let device = Default::default();
    for dir in causal_dirs() {
        let model = Transformer::<B>::load(&dir, &device)?;
        forward_checked(&model, &dir)?;
    }
    Ok(())
}

#[test]
fn tokenizer_and_greedy_generation_match_transformers() -> anyhow::Result<()> {
    let device = Default::default();
    for dir in causal_dirs() {
        let model = Transformer::<B>::load(&dir, &device)?;
        let tok = Tokenizer::from_dir(&dir)?;
        let reference = read_json(&dir.join("reference.json"))?;
        let prompts = reference["prompts"].as_array().cloned().unwrap_or_default();
        let mut ids = vec![];
        for p in &prompts {
            let got = tok.encode(p["text"].as_str().unwrap_or_default(), true)?;
            assert_eq!(got, ids_u32(&p["ids"]), "{}: prompt ids", dir.display());
            ids.push(got);
        }
        let params = greedy_params();
        // Batched (left-padded, prompts of different lengths) and one at a time must both agree.
        let batched = model.generate(&ids, &params)?;
        for (i, want) in greedy_16(&reference).iter().enumerate() {
            assert_eq!(
                &batched[i].completion_ids,
                want,
                "{}: greedy row {i}",
                dir.display()
            );
            let single = model.generate(&ids[i..=i], &params)?;
            assert_eq!(
                &single[0].completion_ids,
                want,
                "{}: greedy alone {i}",
                dir.display()
            );
        }
        let chat = &reference["chat_example"];
        let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone())?;
        let add = chat["add_generation_prompt"].as_bool().unwrap_or(false);
        assert_eq!(
            tok.encode_chat(&messages, add)?,
            ids_u32(&chat["ids"]),
            "{}: chat ids",
            dir.display()
        );
    }
    Ok(())
}

/// Decoding across several KV-cache blocks (left-padded rows of different lengths) gives the
/// log-probs of a teacher-forced pass over each whole sequence.
#[test]
fn decoding_across_cache_blocks_matches_teacher_forcing() -> anyhow::Result<()> {
    let config = rlhf_model::ModelConfig::synthetic(
        rlhf_model::Architecture::Qwen2ForCausalLM,
        97,
        32,
        2,
        4,
        2,
        64,
    );
    let model = Transformer::<B>::random(config, 5, &Default::default());
    let prompts = vec![
        vec![5, 9, 33],
        (0..70).map(|i| (i * 13 % 97) as u32).collect(),
    ];
    let params = SamplingParams {
        max_new_tokens: 2 * rlhf_model::model::KV_BLOCK + 10,
        temperature: 1.0,
        seed: 11,
        ..Default::default()
    };
    let out = model.generate(&prompts, &params)?;
    for c in &out {
        assert_eq!(
            c.completion_ids.len(),
            params.max_new_tokens,
            "no stop token"
        );
    }
    let worst = sampler_vs_teacher_forced(&model, &out)?;
    assert!(worst < 1e-4, "sampler vs teacher-forced differ by {worst}");
    Ok(())
}

#[test]
fn sampler_logprobs_equal_teacher_forced_logprobs() -> anyhow::Result<()> {
    let device = Default::default();
    for dir in causal_dirs() {
        let model = Transformer::<B>::load(&dir, &device)?;
        let (out, seqs) = sampled_and_checked(&model, &dir)?;
        // The same prompts right-padded in one batch give the same log-probs as unpadded.
        for side in [PaddingSide::Left, PaddingSide::Right] {
            let batch = TokenBatch::pad(&seqs, 0, side)?;
            let lp = host_vec(model.token_logprobs(&batch)?.into_data())?;
            for (r, c) in out.iter().enumerate() {
                let offset = match side {
                    PaddingSide::Left => batch.len - seqs[r].len(),
                    PaddingSide::Right => 0,
                };
                let start = r * (batch.len - 1) + offset + c.prompt_ids.len() - 1;
                let d = max_abs_diff(&lp[start..start + c.logprobs.len()], &c.logprobs);
                assert!(
                    d < 1e-4,
                    "{}: {side:?}-padded row {r} differs by {d}",
                    dir.display()
                );
            }
        }
    }
    Ok(())
}

#[test]
fn reward_model_scores_match_transformers() -> anyhow::Result<()> {
    let device = Default::default();
    for dir in reward_dirs() {
        let model = Transformer::<B>::load(&dir, &device)?;
        let tok = Tokenizer::from_dir(&dir)?;
        let r = Reference::load(&dir)?;
        let (shape, ids) = r.i64("input_ids")?;
        let (_, mask) = r.i64("attention_mask")?;
        let batch = TokenBatch {
            batch: shape[0],
            len: shape[1],
            ids: ids.iter().map(|&x| x as u32).collect(),
            mask: mask.iter().map(|&x| x as u8).collect(),
        };
        let (_, want) = r.f32("scores")?;
        let got = host_vec(model.scores(&batch)?.into_data())?;
        assert!(
            max_abs_diff(&got, &want) < 1e-4,
            "{}: {got:?} vs {want:?}",
            dir.display()
        );
        // The same texts tokenized here, padded on either side.
        let reference = read_json(&dir.join("reference.json"))?;
        let texts: Vec<Vec<u32>> = reference["texts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| tok.encode(t.as_str().unwrap_or_default(), true))
            .collect::<Result<_, _>>()?;
        for side in [PaddingSide::Left, PaddingSide::Right] {
            let padded = TokenBatch::pad(&texts, 0, side)?;
            let got = host_vec(model.scores(&padded)?.into_data())?;
            let d = max_abs_diff(&got, &want);
            assert!(
                d < 1e-4,
                "{}: {side:?} padded: {got:?} vs {want:?}",
                dir.display()
            );
        }
    }
    Ok(())
}

#[test]
fn save_then_reload_gives_identical_outputs() -> anyhow::Result<()> {
    let device = Default::default();
    let tmp = tempfile::tempdir()?;
    for dir in causal_dirs()
        .into_iter()
        .chain([fixtures().join("hf-tiny/tiny-llama-rm")])
    {
        let model = Transformer::<B>::load(&dir, &device)?;
        let out = tmp.path().join(dir.file_name().unwrap_or_default());
        model.save_pretrained(&out, Some(&dir))?;
        // Every tensor back under its Hugging Face name, with the values it was loaded with
        // (the merged projections split where they were joined).
        let (mut original, mut saved) =
            (WeightStore::from_dir(&dir)?, WeightStore::from_dir(&out)?);
        let mut names = original.remaining();
        names.sort();
        let mut saved_names = saved.remaining();
        saved_names.sort();
        assert_eq!(names, saved_names, "{}", dir.display());
        for name in &names {
            let shape = original
                .shape(name)
                .map(<[usize]>::to_vec)
                .unwrap_or_default();
            assert_eq!(
                original.take(name, &shape)?.data,
                saved.take(name, &shape)?.data,
                "{} {name}",
                dir.display()
            );
        }
        let again = Transformer::<B>::load(&out, &device)?;
        let batch = TokenBatch::pad(&[vec![1, 2, 3, 4], vec![5, 6]], 0, PaddingSide::Right)?;
        let (a, b): (Tensor<B, 3>, Tensor<B, 3>) = if model.score.is_some() {
            (model.score_all(&batch)?, again.score_all(&batch)?)
        } else {
            (model.forward_logits(&batch)?, again.forward_logits(&batch)?)
        };
        assert_eq!(
            host_vec(a.into_data())?,
            host_vec(b.into_data())?,
            "{}",
            dir.display()
        );
        assert!(Tokenizer::from_dir(&out)?.has_chat_template());
        let cfg: serde_json::Value = read_json(&out.join("config.json"))?;
        assert_eq!(
            cfg["architectures"],
            read_json(&dir.join("config.json"))?["architectures"]
        );
    }
    Ok(())
}
