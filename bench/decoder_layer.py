"""One Llama decoder layer's training step (forward + backward) on the CPU, four ways, timed
interleaved in one run (medians; ratios against the original layer in eager mode):

    original eager          transformers' LlamaDecoderLayer as is
    original compiled       torch.compile of it (Inductor: its own fused norm kernels)
    converted               normgen.torch.convert: both RMSNorms on normgen's kernels
    converted + fused       and fuse_residual_norms: the attention residual add fused into
                            post_attention_layernorm (add_llama_rms_norm)
    fused, compiled         torch.compile(fullgraph=True) of that (normgen's custom ops are opaque
                            to Inductor, which fuses the rest)

A second table times the layer's norm work alone (input norm, residual add, post-attention
norm; forward + backward), the part the four differ in.

    PYTHONPATH=. python bench/decoder_layer.py --batch 4 --tokens 256 --hidden 512 --heads 8 --repeat 21

Needs transformers (pip install -e '.[hf]'). Layers are built from a random config: nothing
is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

import normgen.torch as nt
from normgen.torch import normalize


def build(hidden: int, heads: int) -> tuple[LlamaConfig, LlamaDecoderLayer]:
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64, num_attention_heads=heads,
                      num_key_value_heads=heads, num_hidden_layers=1, max_position_embeddings=8192)
    cfg._attn_implementation = "sdpa"  # what from_pretrained picks on the CPU (a standalone layer gets None)
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(cfg, layer_idx=0)
    with torch.no_grad():  # norms with weights other than one
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight.add_(0.1 * torch.randn_like(norm.weight))
    return cfg, layer


def step_fn(layer, x: torch.Tensor, dy: torch.Tensor, pe):
    params = list(layer.parameters())

    def step() -> None:
        xi = x.detach().requires_grad_(True)
        y = layer(xi, position_embeddings=pe)
        y = y[0] if isinstance(y, tuple) else y
        y.backward(dy)
        for p in params:
            p.grad = None
    return step


def norm_part(layer, fused: bool):
    """The layer's norm work alone: input_layernorm(x), h = x + attn_out, post_attention_layernorm(h)
    (one add_llama_rms_norm call when `fused`); returns the three tensors the rest of the layer reads."""
    if not fused:
        def part(x, attn_out):
            h = x + attn_out
            return layer.input_layernorm(x), layer.post_attention_layernorm(h), h
        return part
    norm = layer.post_attention_layernorm

    def fused_part(x, attn_out):
        y, h = normalize(layer.fused_spec_id, attn_out, {"weight": norm.weight}, extras={"residual": x},
                         eps=norm.norm_eps, normalized_shape=tuple(norm.weight.shape))
        return layer.input_layernorm(x), y, h
    return fused_part


def part_step(part, params, x: torch.Tensor, a: torch.Tensor, grads):
    def step() -> None:
        xi, ai = x.detach().requires_grad_(True), a.detach().requires_grad_(True)
        torch.autograd.backward(part(xi, ai), grads)
        for p in params:
            p.grad = None
    return step


def timed(steps: dict, repeat: int, warmup: int) -> tuple[dict, dict]:
    for _ in range(warmup):  # compiled functions compile here
        for run in steps.values():
            run()
    times: dict[str, list[float]] = {n: [] for n in steps}
    for _ in range(repeat):
        for name, run in steps.items():  # interleaved: load on the machine hits every provider alike
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in times.items()}, times


def table(title: str, med: dict) -> None:
    base = med["original eager"]
    print(f"\n{title}")
    print(f"{'':18s} {'ms':>9s} {'vs eager':>9s}")
    for name, sec in med.items():
        print(f"{name:18s} {sec * 1e3:9.2f} {base / sec:8.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=512, help="sequence length")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    cfg, original = build(args.hidden, args.heads)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.tokens, args.hidden, generator=gen)
    dy = torch.randn(x.shape, generator=gen)
    pos = torch.arange(args.tokens).unsqueeze(0).expand(args.batch, -1)
    pe = LlamaRotaryEmbedding(cfg)(x, pos)

    converted = nt.convert(copy.deepcopy(original))
    fused = nt.fuse_residual_norms(nt.convert(copy.deepcopy(original)))
    compiled = torch.compile(copy.deepcopy(original))
    layers = {"original eager": original, "original compiled": compiled, "converted": converted,
              "converted + fused": fused, "fused, compiled": torch.compile(fused, fullgraph=True)}
    with torch.no_grad():  # the four compute the same layer
        want = original(x, position_embeddings=pe)
        for name, layer in layers.items():
            err = (layer(x, position_embeddings=pe) - want).abs().max().item()
            print(f"{name:18s} max |y - original| = {err:.2e}")
    steps = {name: step_fn(layer, x, dy, pe) for name, layer in layers.items()}
    med, times = timed(steps, args.repeat, args.warmup)
    shape = f"batch {args.batch} x {args.tokens} tokens, hidden {args.hidden}, {torch.get_num_threads()} threads"
    table(f"Llama decoder layer, forward + backward, float32, {shape}; median of {args.repeat}", med)

    a = torch.randn(x.shape, generator=gen)
    grads = [torch.randn(x.shape, generator=gen) for _ in range(3)]
    twin = copy.deepcopy(original)  # the compiled part's own parameters
    parts = {"original eager": norm_part(original, False), "original compiled": torch.compile(norm_part(twin, False)),
             "converted": norm_part(converted, False), "converted + fused": norm_part(fused, True),
             "fused, compiled": torch.compile(norm_part(fused, True), fullgraph=True)}
    owners = {"original eager": original, "original compiled": twin, "converted": converted,
              "converted + fused": fused, "fused, compiled": fused}
    part_steps = {n: part_step(p, list(owners[n].parameters()), x, a, grads) for n, p in parts.items()}
    part_med, part_times = timed(part_steps, args.repeat * 3, args.warmup)
    table(f"its norms alone (input norm, residual add, post-attention norm), forward + backward, {shape}; "
          f"median of {args.repeat * 3}", part_med)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "layer": {"median_s": med, "all_s": times},
                       "norms": {"median_s": part_med, "all_s": part_times}}, f, indent=1)


if __name__ == "__main__":
    main()
