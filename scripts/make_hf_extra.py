#!/usr/bin/env python3
"""Builds tests/fixtures/hf-extra: more tiny Hugging Face checkpoints with reference outputs
computed by transformers (float32, CPU), covering what hf-tiny does not: Mistral with a sliding
window shorter than the prompts, the old `rope_theta` + `rope_scaling` config layout with linear
scaling, attention/MLP biases, bf16 weights in a sharded checkpoint, f16 weights, other shapes,
and a Qwen2 reward model scored left-padded.

Usage: python3 scripts/make_hf_extra.py [OUT_DIR]   (needs torch and transformers)
The tokenizer is the one of tests/fixtures/hf-tiny (512-token byte-level BPE, ChatML tokens).
"""
import json, os, shutil, sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen2ForSequenceClassification)

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests/fixtures/hf-extra")
tok_dir = os.path.join(root, "tests/fixtures/hf-tiny/tiny-llama3")
tok = AutoTokenizer.from_pretrained(tok_dir)
V = len(tok)
prompts = ["Direct preference optimization aligns language models",
           "Reward models trained on human preference"]
common = dict(vocab_size=V, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=None,
              eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=0)


def copy_tokenizer(d):
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        shutil.copy(os.path.join(tok_dir, f), os.path.join(d, f))


def references(model, d):
    model.eval()
    enc = [tok(p)["input_ids"] for p in prompts]
    L = min(len(e) for e in enc)
    ids = torch.tensor([enc[0][:L], enc[1][:L]])
    with torch.no_grad():
        logits = model(ids).logits.float()
        lp = torch.log_softmax(logits, -1)
        tok_lp = lp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
        gens = []
        for e in enc:
            g = model.generate(torch.tensor([e]), max_new_tokens=16, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
            gens.append(g[0, len(e):].tolist())
    save_file({"input_ids": ids.to(torch.int64).contiguous(), "logits": logits.contiguous(),
               "token_logprobs": tok_lp.contiguous()}, os.path.join(d, "reference.safetensors"))
    msgs = [{"role": "user", "content": "Rank these two answers."}]
    chat_ids = tok.apply_chat_template(msgs, add_generation_prompt=True)
    if hasattr(chat_ids, "keys"):
        chat_ids = chat_ids["input_ids"]
    json.dump({"prompts": [{"text": p, "ids": e} for p, e in zip(prompts, enc)], "greedy_16": gens,
               "chat_example": {"messages": msgs, "add_generation_prompt": True, "ids": list(chat_ids)},
               "made_with": {"transformers": transformers.__version__, "torch": torch.__version__,
                             "dtype": "float32", "device": "cpu"}},
              open(os.path.join(d, "reference.json"), "w"), indent=1)


def round_to(model, dtype):
    """Rounds every weight to `dtype` and back, so a `dtype` checkpoint reproduces f32 outputs."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def build(name, make, save_dtype=None, shard=None, edit_config=None):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    model = make()
    if save_dtype is not None:
        round_to(model, save_dtype)
    references(model, d)
    to_save = model.to(save_dtype) if save_dtype is not None else model
    kw = {"max_shard_size": shard} if shard else {}
    to_save.save_pretrained(d, safe_serialization=True, **kw)
    copy_tokenizer(d)
    if edit_config:
        path = os.path.join(d, "config.json")
        cfg = json.load(open(path))
        edit_config(cfg)
        json.dump(cfg, open(path, "w"), indent=2)
    print("built", name, sum(p.numel() for p in model.parameters()), sorted(os.listdir(d)))


def old_rope_format(cfg):
    """Rewrites transformers-5 `rope_parameters` as the older top-level layout."""
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    kind = params.pop("rope_type")
    cfg["rope_scaling"] = None if kind == "default" else {"type": kind, **params}


torch.manual_seed(3)
build("heldout-llama", lambda: LlamaForCausalLM(LlamaConfig(
    hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=6,
    num_key_value_heads=3, rope_theta=10000.0, tie_word_embeddings=True, **common)))
torch.manual_seed(4)
build("heldout-qwen2", lambda: Qwen2ForCausalLM(Qwen2Config(
    hidden_size=128, intermediate_size=320, num_hidden_layers=2, num_attention_heads=8,
    num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=False, **common)))
torch.manual_seed(6)
build("mistral-window", lambda: MistralForCausalLM(MistralConfig(
    hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=1, head_dim=24, rope_theta=10000.0, sliding_window=6,
    tie_word_embeddings=False, **common)))
torch.manual_seed(7)
build("llama-linear-bias-oldcfg-f16", lambda: LlamaForCausalLM(LlamaConfig(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=2, attention_bias=True, mlp_bias=True, rope_theta=20000.0,
    rope_scaling={"rope_type": "linear", "factor": 2.0}, tie_word_embeddings=False, **common)),
    save_dtype=torch.float16, edit_config=old_rope_format)
torch.manual_seed(8)
build("qwen2-bf16-sharded", lambda: Qwen2ForCausalLM(Qwen2Config(
    hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=True, **common)),
    save_dtype=torch.bfloat16, shard="100KB")

# A Qwen2 reward model, scored on a left-padded batch.
torch.manual_seed(9)
rm = Qwen2ForSequenceClassification(Qwen2Config(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, num_labels=1, **common)).eval()
d = os.path.join(out, "qwen2-rm")
os.makedirs(d, exist_ok=True)
rm.save_pretrained(d, safe_serialization=True)
copy_tokenizer(d)
conv = [tok.apply_chat_template([{"role": "user", "content": "Which is better?"},
                                 {"role": "assistant", "content": a}], tokenize=False)
        for a in ["The first answer.", "A longer second answer with detail."]]
tok.padding_side = "left"
batch = tok(conv, padding=True, return_tensors="pt")
with torch.no_grad():
    scores = rm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
save_file({"input_ids": batch["input_ids"].to(torch.int64).contiguous(),
           "attention_mask": batch["attention_mask"].to(torch.int64).contiguous(),
           "scores": scores.contiguous()}, os.path.join(d, "reference.safetensors"))
json.dump({"texts": conv, "padding_side": "left", "scores": scores.squeeze(-1).tolist()},
          open(os.path.join(d, "reference.json"), "w"), indent=1)
print("built qwen2-rm", scores.squeeze(-1).tolist())
