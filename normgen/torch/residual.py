"""Fused residual adds in decoder layers: `fuse_residual_norms(model)` rewires the pre-norm
decoder layers of the Llama family (and Gemma's, the same forward) so that
`residual + attention_output` and the post-attention RMSNorm run as one kernel
(add_llama_rms_norm or add_gemma_rms_norm: h = x + residual is normalized and returned as the
new residual stream), in the forward and the backward.

Only layers whose forward is Llama's, line for line, are rewired (LAYER_CLASSES): the
replacement forward below repeats it with the one fused call, so any other order of
operations (Gemma 2's post-norms, Phi-3's dropout, Granite's residual multiplier) would be
computed wrongly. The layer keeps its class's behaviour otherwise (it becomes a subclass with
only `forward` overridden), its children and its `state_dict`.

    >>> model = fuse_residual_norms(convert(model))
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import NormgenError
from .function import normalize
from .model_norms import ADD_GEMMA_RMS_NORM, ADD_LLAMA_RMS_NORM, HALF, LLAMA_RMS_NORM, ModelNorm
from .registry import spec_key

_LLAMA_LIKE = ("llama.modeling_llama.LlamaDecoderLayer", "mistral.modeling_mistral.MistralDecoderLayer",
               "qwen2.modeling_qwen2.Qwen2DecoderLayer", "qwen3.modeling_qwen3.Qwen3DecoderLayer",
               "gemma.modeling_gemma.GemmaDecoderLayer")
#: decoder layers whose forward is Llama's (checked against transformers' source for each)
LAYER_CLASSES = frozenset(f"transformers.models.{c}" for c in _LLAMA_LIKE)


@dataclass
class FuseReport:
    """(path, reason) of every decoder layer found; `fused` lists the paths rewired."""

    fused: list[str] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)


def fuse_residual_norms(model: nn.Module, *, report: bool = False) -> nn.Module | tuple[nn.Module, FuseReport]:
    """Rewire every Llama-family (or Gemma) decoder layer of `model` (after `convert`: its norms must be
    normgen's) so that the attention residual add runs fused with post_attention_layernorm.
    In place; returns `model` (and a FuseReport when `report=True`).

    >>> model = fuse_residual_norms(convert(LlamaForCausalLM(config)))
    """
    rep = FuseReport()
    fused_spec = {spec_key(LLAMA_RMS_NORM): spec_key(ADD_LLAMA_RMS_NORM),
                  spec_key("gemma_rms_norm"): spec_key(ADD_GEMMA_RMS_NORM)}  # post-attention norm -> fused
    for path, module in model.named_modules():
        cls = type(module)
        if f"{cls.__module__}.{cls.__qualname__}" not in LAYER_CLASSES:
            continue
        norm = getattr(module, "post_attention_layernorm", None)
        if not (isinstance(norm, ModelNorm) and norm.spec_id in fused_spec):
            why = "its post_attention_layernorm is not normgen's llama_rms_norm or gemma_rms_norm (run convert first)"
            rep.left.append((path, why))
            continue
        before = norm.spec_id == spec_key(LLAMA_RMS_NORM)
        why = _cannot_run(fused_spec[norm.spec_id], norm, before)
        if why is not None:
            rep.left.append((path, why))
            continue
        module.__class__ = _fused_class(cls)
        module.fused_spec_id = fused_spec[norm.spec_id]  # a plain string: cheap to trace under torch.compile
        module.round_before_weight = before
        rep.fused.append(path)
    return (model, rep) if report else model


def _cannot_run(spec_id: str, norm: ModelNorm, round_before_weight: bool) -> str | None:
    """Why the fused call cannot run in the norm's dtype and device (None when it can): the
    call the forward makes, tried on one row, so that a model is not rewired into layers that
    fail on their first call."""
    w = norm.weight
    x = torch.zeros(1, *w.shape, dtype=w.dtype, device=w.device)
    half_llama = round_before_weight and w.dtype in HALF
    try:
        with torch.no_grad():
            normalize("add_rms_norm" if half_llama else spec_id, x, None if half_llama else {"weight": w},
                      extras={"residual": x}, eps=norm.norm_eps, normalized_shape=tuple(w.shape))
    except NormgenError as e:
        return f"normgen cannot run the fused residual norm in {w.dtype} on {w.device.type}: {e}"
    return None


@functools.cache
def _fused_class(cls: type) -> type:
    params = [p for p in inspect.signature(inspect.unwrap(cls.forward)).parameters.values()
              if p.kind == p.POSITIONAL_OR_KEYWORD][2:]  # after self, hidden_states
    fused = type(f"ResidualFused{cls.__name__}", (cls,), {
        "forward": _fused_forward, "_positional": tuple(p.name for p in params),
        "__doc__": f"{cls.__name__} with the attention residual add fused into post_attention_layernorm."})
    fused.__module__ = __name__
    return fused


def _fused_forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    # LlamaDecoderLayer.forward, with `h = residual + attn; post_attention_layernorm(h)` as one call
    named = dict(zip(self._positional, args, strict=False))
    named.update(kwargs)
    residual = hidden_states
    hidden_states = self.input_layernorm(hidden_states)
    hidden_states, _ = self.self_attn(hidden_states=hidden_states, **named)
    norm = self.post_attention_layernorm
    shape = tuple(norm.weight.shape)
    if self.round_before_weight and hidden_states.dtype in HALF:  # x_hat rounded before the weight: model_norms.HALF
        hidden_states, residual = normalize("add_rms_norm", hidden_states, None, extras={"residual": residual},
                                            eps=norm.norm_eps, normalized_shape=shape)
        return residual + self.mlp(norm.weight * hidden_states)
    hidden_states, residual = normalize(self.fused_spec_id, hidden_states, {"weight": norm.weight},
                                        extras={"residual": residual}, eps=norm.norm_eps, normalized_shape=shape)
    return residual + self.mlp(hidden_states)
