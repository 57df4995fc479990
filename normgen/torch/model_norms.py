"""The norm classes of real model code (Hugging Face transformers' LlamaRMSNorm, GemmaRMSNorm,
T5LayerNorm, ConvNextLayerNorm, ...), recognized by qualified class name and run on normgen's
kernels by `ModelNorm`, which shares the original's parameters and keeps its attributes.

Each class maps to a spec and to where its epsilon lives. The specs differ from torch.nn's
in where a float16/bfloat16 result is rounded (`[affine] cast`): Llama-style code normalizes
in float32, casts to the input dtype, then multiplies the weight ("before_weight"); Gemma
multiplies `1 + weight` in float32, then casts ("after_weight", and `weight_offset = 1`).

    >>> entry = NORM_CLASSES["transformers.models.llama.modeling_llama.LlamaRMSNorm"]
    >>> norm = ModelNorm(llama_layer.input_layernorm, entry)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..spec import Spec, parse_spec
from .function import normalize
from .registry import spec_key

# Llama's RMSNorm: `weight * (x.float() * rsqrt(mean(x²) + eps)).to(x.dtype)`. As rms_norm,
# but half types are rounded before the weight (float32 and float64 results are the same).
LLAMA_RMS_NORM = parse_spec('''
name   = "llama_rms_norm"
doc    = "Llama RMSNorm: weight * cast(x / sqrt(mean(x^2) + eps)), over normalized_shape."
input  = "*batch *normalized"
kept   = "*batch"
center = "none"
scale  = "rms"
eps    = 1e-6
[sizes]
normalized = "normalized_shape"
[affine]
axes = "*normalized"
bias = false
cast = "before_weight"
''', "<normgen.torch.model_norms>")

# The residual add of a Llama decoder layer fused with its post-attention RMSNorm:
# h = x + residual (the next residual stream), y = llama_rms_norm(h).
ADD_LLAMA_RMS_NORM = parse_spec('''
name   = "add_llama_rms_norm"
doc    = "Residual add + Llama RMSNorm: h = x + residual (returned), y = llama_rms_norm(h)."
input  = "*batch *normalized"
kept   = "*batch"
center = "none"
scale  = "rms"
eps    = 1e-6
[sizes]
normalized = "normalized_shape"
[affine]
axes = "*normalized"
bias = false
cast = "before_weight"
[fuse]
prologue      = "x + residual"
keep_prologue = true
''', "<normgen.torch.model_norms>")


# Gemma's decoder layer: the residual add fused with GemmaRMSNorm ((1 + weight) in float32, then cast)
ADD_GEMMA_RMS_NORM = parse_spec('''
name   = "add_gemma_rms_norm"
doc    = "Residual add + Gemma RMSNorm: h = x + residual (returned), y = gemma_rms_norm(h)."
input  = "*batch *normalized"
kept   = "*batch"
center = "none"
scale  = "rms"
eps    = 1e-6
[sizes]
normalized = "normalized_shape"
[affine]
axes          = "*normalized"
bias          = false
weight_offset = 1.0
[fuse]
prologue      = "x + residual"
keep_prologue = true
''', "<normgen.torch.model_norms>")


#: no kernel rounds x_hat to a half type before the weight yet (llama_rms_norm's cast =
#: "before_weight" is refused there): for these inputs the kernel normalizes without the weight,
#: its one rounding being x_hat's, and torch multiplies the weight, as Llama's code does
HALF = (torch.float16, torch.bfloat16)
_LLAMA_KEY = spec_key(LLAMA_RMS_NORM)


@dataclass(frozen=True)
class NormClass:
    """How a model's norm class maps to normgen: the spec, where eps is stored, and whether
    the normalized axis is dim 1 (channels first) rather than the trailing dims."""

    spec: str | Spec  # a bundled spec name or a Spec
    eps_attr: str  # "variance_epsilon" (Llama, T5) or "eps" (Gemma, ConvNeXt)
    has_bias: bool = False
    channels_first: bool = False  # ConvNeXt's data_format="channels_first": (N, C, H, W), normalized over C

    def applies(self, module: nn.Module) -> str | None:
        """Why this mapping does not fit `module` (None when it does)."""
        if getattr(module, "weight", None) is None:
            return "it has no weight parameter"
        if not hasattr(module, self.eps_attr):
            return f"it has no '{self.eps_attr}' attribute"
        if self.has_bias and getattr(module, "bias", None) is None:
            return "it has no bias parameter"
        if not self.has_bias and getattr(module, "bias", None) is not None:
            return "it has a bias, which this family's norm does not use"
        return None


_LLAMA = NormClass(LLAMA_RMS_NORM, "variance_epsilon")
_WEIGHT_THEN_CAST = NormClass("rms_norm", "variance_epsilon")  # OLMo 2: `(weight * x_hat).to(x.dtype)`
_GEMMA = NormClass("gemma_rms_norm", "eps")
_LAYER = NormClass("layer_norm", "eps", has_bias=True)
_LAYER_CF = NormClass("layer_norm", "eps", has_bias=True, channels_first=True)


def _family(module: str, *classes: str, entry: NormClass) -> dict[str, NormClass]:
    return {f"transformers.models.{module}.modeling_{module}.{c}": entry for c in classes}


#: qualified class name -> NormClass. Every entry was read against its transformers source
#: (the forward's math and attribute names), and convert() checks each module before swapping.
NORM_CLASSES: dict[str, NormClass] = {
    **_family("llama", "LlamaRMSNorm", entry=_LLAMA),
    **_family("mistral", "MistralRMSNorm", entry=_LLAMA),
    **_family("mixtral", "MixtralRMSNorm", entry=_LLAMA),
    **_family("qwen2", "Qwen2RMSNorm", entry=_LLAMA),
    **_family("qwen2_moe", "Qwen2MoeRMSNorm", entry=_LLAMA),
    **_family("qwen3", "Qwen3RMSNorm", entry=_LLAMA),
    **_family("qwen3_moe", "Qwen3MoeRMSNorm", entry=_LLAMA),
    **_family("phi3", "Phi3RMSNorm", entry=_LLAMA),
    **_family("olmo2", "Olmo2RMSNorm", entry=_WEIGHT_THEN_CAST),
    **_family("granite", "GraniteRMSNorm", entry=_LLAMA),
    # T5: `weight * (x * rsqrt(var + eps)).to(weight.dtype)` when the weight is half: the same
    # order as Llama for a model in one dtype (a float32 weight with half input returns float32,
    # which normgen does not do: the check before swapping leaves such a module)
    **_family("t5", "T5LayerNorm", entry=_LLAMA),
    **_family("mt5", "MT5LayerNorm", entry=_LLAMA),
    **_family("gemma", "GemmaRMSNorm", entry=_GEMMA),
    **_family("gemma2", "Gemma2RMSNorm", entry=_GEMMA),
    **_family("gemma3", "Gemma3RMSNorm", entry=_GEMMA),
    **_family("convnext", "ConvNextLayerNorm", entry=_LAYER),
    **_family("convnextv2", "ConvNextV2LayerNorm", entry=_LAYER),
}


def norm_class_of(module: nn.Module) -> NormClass | None:
    """The registry entry for `module`'s exact class (a subclass may have its own forward)."""
    cls = type(module)
    entry = NORM_CLASSES.get(f"{cls.__module__}.{cls.__qualname__}")
    if entry is not None and entry.has_bias and getattr(module, "data_format", "channels_last") == "channels_first":
        return _LAYER_CF
    return entry


class ModelNorm(nn.Module):
    """A model's norm layer on normgen's kernels. It registers the original's parameters (the
    same tensors), copies its plain attributes (`variance_epsilon`, `hidden_size`,
    `data_format`, ...) so code reading them still works, and keeps its `state_dict` keys.

    >>> model.norm = ModelNorm(model.norm, NORM_CLASSES[qualified_name])
    """

    def __init__(self, original: nn.Module, entry: NormClass):
        super().__init__()
        for name, value in vars(original).items():
            if not name.startswith("_") and name != "training":
                setattr(self, name, value)
        for name, p in original._parameters.items():
            self.register_parameter(name, p)
        self.original_class = f"{type(original).__module__}.{type(original).__qualname__}"
        self.spec_id = spec_key(entry.spec)
        self.norm_eps = float(getattr(original, entry.eps_attr))
        self.channels_first = entry.channels_first
        self.has_bias = entry.has_bias
        self.train(original.training)

    def forward(self, input: Tensor) -> Tensor:
        if self.spec_id == _LLAMA_KEY and input.dtype in HALF:
            return self.weight * normalize("rms_norm", input, None, eps=self.norm_eps,
                                           normalized_shape=tuple(self.weight.shape))
        params = {"weight": self.weight}
        if self.has_bias:
            params["bias"] = self.bias
        shape = tuple(self.weight.shape)
        if self.channels_first:  # (N, C, *spatial) normalized over C: a strided view, read in place
            y = normalize(self.spec_id, input.movedim(1, -1), params, eps=self.norm_eps, normalized_shape=shape)
            return y.movedim(-1, 1)
        return normalize(self.spec_id, input, params, eps=self.norm_eps, normalized_shape=shape)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.norm_eps}, spec={self.spec_id}, from {self.original_class}"
