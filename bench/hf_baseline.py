"""Baseline a user would otherwise run: Hugging Face transformers (PyTorch, bf16) greedy generate at
batch 1 on synthetic models of the same shapes as `pdvm bench` (random weights, no download).

    python3 bench/hf_baseline.py --shape phi-4 --shape llama-3.2-1b [--prompt 128] [--new 128] [--json OUT]

Decode ms/token = (time to generate P+N tokens - time to generate P+1) / (N - 1), median of runs;
prefill tok/s = prompt / time to generate one token. Prints one JSON line per shape.
"""
import argparse, json, statistics, time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

SHAPES = {
    # name: (architecture, layers, hidden, mlp, heads, kv_heads, head_dim, vocab)
    "phi-4": ("Phi3ForCausalLM", 40, 5120, 17920, 40, 10, 128, 100352),
    "llama-3.1-8b": ("LlamaForCausalLM", 32, 4096, 14336, 32, 8, 128, 128256),
    "llama-3.2-1b": ("LlamaForCausalLM", 16, 2048, 8192, 32, 8, 64, 128256),
    "brown-llama": ("LlamaForCausalLM", 6, 384, 1024, 6, 2, 64, 4096),
}


def build(shape):
    arch, layers, hidden, mlp, heads, kv, hd, vocab = SHAPES[shape]
    model_type = "phi3" if arch == "Phi3ForCausalLM" else "llama"
    cfg = AutoConfig.for_model(
        model_type, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd, vocab_size=vocab,
        max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.eval()
    return model


def timed_generate(model, ids, new):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", action="append", default=[])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    out = []
    for shape in a.shape or ["llama-3.2-1b"]:
        model = build(shape)
        params = sum(p.numel() for p in model.parameters())
        ids = torch.randint(3, model.config.vocab_size, (1, a.prompt), device="cuda")
        timed_generate(model, ids, 4)  # warm-up
        one = [timed_generate(model, ids, 1) for _ in range(a.runs)]
        full = [timed_generate(model, ids, a.new) for _ in range(a.runs)]
        decode_s = (statistics.median(full) - statistics.median(one)) / (a.new - 1)
        r = {
            "engine": f"transformers {__import__('transformers').__version__} / torch {torch.__version__} bf16 generate",
            "device": torch.cuda.get_device_name(),
            "shape": shape, "parameters": params, "weight_bytes": params * 2,
            "prompt_tokens": a.prompt, "new_tokens": a.new,
            "decode_ms_per_token": decode_s * 1e3, "decode_tokens_per_second": 1 / decode_s,
            "prefill_tokens_per_second": a.prompt / statistics.median(one),
            "achieved_gbps": params * 2 / decode_s / 1e9,
        }
        print(json.dumps(r), flush=True)
        out.append(r)
        del model
        torch.cuda.empty_cache()
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
