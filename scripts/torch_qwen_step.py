"""PyTorch's side of `rlhf bench model --size qwen0.5b` (issue 5): the same training step on the
same GPU. A random Qwen2.5-0.5B-shaped `Qwen2ForCausalLM` (hidden 896, 24 layers, 14 / 2 heads,
MLP 4864, vocab 151936, tied), batch 8 x 256, next-token NLL, backward, AdamW; f32, then bf16
autocast with f32 master weights (what `--precision bf16` does). Prints RESULT lines with
ms/step, tokens/s, model TFLOP/s (6 x parameters x tokens/s, as `rlhf bench model`), the first
step's time and the peak memory.

    python3 scripts/torch_qwen_step.py                 # on the GPU machine
    python3 scripts/torch_qwen_step.py --device cpu --tiny --steps 2   # a smoke test anywhere
"""
import argparse
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--device", default="cuda")
p.add_argument("--batch", type=int, default=8)
p.add_argument("--len", type=int, default=256)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--tiny", action="store_true", help="a 2-layer, vocab-512 model of the same layout")
a = p.parse_args()

if a.tiny:
    cfg = Qwen2Config(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True)
else:
    cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                      max_position_embeddings=4096)
cuda = a.device.startswith("cuda")


def sync():
    if cuda:
        torch.cuda.synchronize()


for amp in (False, True):
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(a.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params = sum(t.numel() for t in model.parameters())
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step():
        x = torch.randint(0, cfg.vocab_size, (a.batch, a.len), device=a.device)
        with torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, cfg.vocab_size), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync()
    t = time.time()
    step()
    sync()
    first = time.time() - t
    step()
    sync()
    t = time.time()
    for _ in range(a.steps):
        step()
    sync()
    s = (time.time() - t) / a.steps
    tps = a.batch * a.len / s
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    label = "bf16-autocast" if amp else "f32"
    shape = "tiny" if a.tiny else "qwen0.5b-shape"
    print(f"RESULT torch train {shape} {label} params={params} b={a.batch} s={a.len}: {s * 1e3:.1f} ms/step, "
          f"{tps:.0f} tok/s, {6 * params * tps / 1e12:.2f} model TFLOP/s, first step {first:.2f}s, "
          f"peak {peak:.2f} GiB", flush=True)
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
