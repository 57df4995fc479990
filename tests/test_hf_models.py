"""convert() and fuse_residual_norms() on Hugging Face transformers models built from tiny
random configs (no downloads): every norm module converted, outputs and parameter gradients
equal to the original's in float32 (train and eval), each converted norm within one bfloat16
ulp of the original on the inputs it sees in a bfloat16 model, and the fused-residual layers
equal to the unfused ones. transformers is the `hf` extra (installed by .ci/run)."""

from __future__ import annotations

import copy
import importlib
import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[hf]')")
nt = pytest.importorskip("normgen.torch")

from torch import nn

from normgen.errors import CallError
from normgen.torch.convert_check import ulp_distance

H = 32  # one hidden size for every text model: their norms share compiled kernels
_TEXT = {"vocab_size": 64, "hidden_size": H, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32}


def _decoder(name: str, **extra):
    def build():
        cfg = getattr(transformers, f"{name}Config")(**_TEXT, **extra)
        return getattr(transformers, f"{name}Model")(cfg)
    return build


def _t5():
    cfg = transformers.T5Config(vocab_size=64, d_model=H, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                dropout_rate=0.0)
    return transformers.T5EncoderModel(cfg)


def _bert():
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    return transformers.BertModel(cfg)


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=H, n_layer=2, n_head=4, n_positions=32, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2Model(cfg)


def _convnext():
    cfg = transformers.ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32)
    return transformers.ConvNextModel(cfg)


def _resnet():
    cfg = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    return transformers.ResNetModel(cfg)


#: family -> (builder, input kind)
FAMILIES = {
    "llama": (_decoder("Llama"), "text"),
    "mistral": (_decoder("Mistral"), "text"),
    "qwen2": (_decoder("Qwen2"), "text"),
    "qwen3": (_decoder("Qwen3", head_dim=8), "text"),
    "phi3": (_decoder("Phi3", pad_token_id=0), "text"),
    "gemma": (_decoder("Gemma", head_dim=8), "text"),
    "gemma2": (_decoder("Gemma2", head_dim=8), "text"),
    "t5_encoder": (_t5, "text"),
    "bert": (_bert, "text"),
    "gpt2": (_gpt2, "text"),
    "convnext": (_convnext, "image"),
    "resnet": (_resnet, "image"),
}
FUSABLE = ["llama", "mistral", "qwen2", "qwen3", "gemma"]


def _inputs(kind: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    if kind == "text":
        return {"input_ids": torch.randint(0, 64, (2, 8), generator=gen)}
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=gen)}


def _norm_modules(model: nn.Module) -> list[str]:
    """The model's norm layers, found without normgen: torch.nn norms and classes named *Norm."""
    bases = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
    return [name for name, m in model.named_modules()
            if isinstance(m, bases) or (type(m).__name__.endswith("Norm") and not list(m.children()))]


def _model(family: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = FAMILIES[family][0]()
    with torch.no_grad():  # Gemma's weights start at zero, Llama's at one: random weights test the offset
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name.lower() or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def scaled_error(got, want) -> float:
    """max |got - want| over max(1, max |want|): float32 rounding in a tensor's largest terms
    reaches its small entries too (gradients summed over a batch), so compare at its scale."""
    return float((got - want).abs().max() / max(1.0, float(want.abs().max())))


def _run(model: nn.Module, kind: str, grad_seed: int = 1):
    out = model(**_inputs(kind))[0]
    gen = torch.Generator().manual_seed(grad_seed)
    (out * torch.randn(out.shape, generator=gen)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out.detach(), grads


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_norm_converted_and_equal_in_float32(family: str) -> None:
    original = _model(family)
    norms = _norm_modules(original)
    assert norms, f"{family}: the test found no norm modules"
    converted, rep = nt.convert(copy.deepcopy(original), report=True)
    assert rep.left == []
    assert sorted(path for path, _ in rep.swapped) == sorted(norms)
    for name in norms:
        assert type(converted.get_submodule(name)).__module__.startswith("normgen.torch"), name
    kind = FAMILIES[family][1]
    for training in (True, False):
        original.train(training)
        converted.train(training)
        want, want_grads = _run(original, kind)
        got, got_grads = _run(converted, kind)
        assert scaled_error(got, want) < 1e-5
        assert got_grads.keys() == want_grads.keys()
        for name, g in want_grads.items():
            assert scaled_error(got_grads[name], g) < 1e-5, f"{family}: grad of {name}"


def _bf16_skip_reason(spec) -> str | None:
    """Why normgen cannot run `spec` on bfloat16 CPU tensors yet (None when it can)."""
    x = torch.ones(2, 8, dtype=torch.bfloat16)
    try:
        nt.normalize(spec, x, {"weight": torch.ones(8, dtype=torch.bfloat16)}, normalized_shape=(8,))
    except CallError as e:
        return f"normgen cannot run this family's norm on bfloat16 CPU tensors yet: {e}"
    return None


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma", "gemma2", "t5_encoder"])
def test_bf16_norms_within_one_ulp(family: str) -> None:
    # Llama's order runs as rms_norm without the weight, then torch's multiply (model_norms.HALF)
    why = _bf16_skip_reason("gemma_rms_norm" if family.startswith("gemma") else "rms_norm")
    if why is not None:
        pytest.skip(why)
    original = _model(family).to(torch.bfloat16).eval()
    seen: dict[str, tuple] = {}
    # copies: a model may add to a norm's output in place afterwards (ResNet's residual)
    hooks = [original.get_submodule(n).register_forward_hook(
        lambda m, args, out, n=n: seen.__setitem__(n, (args[0].clone(), out.clone()))) for n in _norm_modules(original)]
    with torch.no_grad():
        original(**_inputs("text"))
    for h in hooks:
        h.remove()
    converted, rep = nt.convert(copy.deepcopy(original), report=True)
    assert rep.left == []
    for name, (x, want) in seen.items():
        with torch.no_grad():
            got = converted.get_submodule(name)(x)
        assert got.dtype == want.dtype == torch.bfloat16
        assert ulp_distance(want, got) <= 1, name


@pytest.mark.parametrize("family", FUSABLE)
def test_fused_residual_equals_unfused(family: str) -> None:
    converted = nt.convert(_model(family))
    fused, rep = nt.fuse_residual_norms(copy.deepcopy(converted), report=True)
    assert rep.left == [] and len(rep.fused) == _TEXT["num_hidden_layers"]
    assert all(type(fused.get_submodule(p)).__name__.startswith("ResidualFused") for p in rep.fused)
    for training in (True, False):
        converted.train(training)
        fused.train(training)
        want, want_grads = _run(converted, "text")
        got, got_grads = _run(fused, "text")
        assert scaled_error(got, want) < 1e-6
        for name, g in want_grads.items():
            assert scaled_error(got_grads[name], g) < 1e-6, f"grad of {name}"
    assert fused.state_dict().keys() == converted.state_dict().keys()


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_fused_residual_equals_unfused_in_bfloat16_on_the_cpu(family: str) -> None:
    # the fused half kernels round h = residual + x to bfloat16 as torch's add does, so the
    # fused layers give the unfused model's bfloat16 output bit for bit
    converted = nt.convert(_model(family)).to(torch.bfloat16).eval()
    fused, rep = nt.fuse_residual_norms(copy.deepcopy(converted), report=True)
    assert rep.left == [] and len(rep.fused) == _TEXT["num_hidden_layers"]
    with torch.no_grad():
        want, got = converted(**_inputs("text"))[0], fused(**_inputs("text"))[0]
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)


def test_fuse_needs_converted_norms() -> None:
    _, rep = nt.fuse_residual_norms(_model("llama"), report=True)
    assert rep.fused == []
    assert [p for p, _ in rep.left] == ["layers.0", "layers.1"]
    assert "run convert first" in rep.left[0][1]


def test_mismatch_leaves_the_original_with_a_warning(monkeypatch) -> None:
    # a registry entry that does not fit the class (Gemma's offset for a Llama norm): the check
    # before swapping must catch the different numerics, keep the original and say why
    convert_module = importlib.import_module("normgen.torch.convert")  # the package's `convert` is the function
    model_norms = importlib.import_module("normgen.torch.model_norms")
    wrong = model_norms.NormClass("gemma_rms_norm", "variance_epsilon")
    monkeypatch.setattr(convert_module, "norm_class_of", lambda m: wrong if type(m).__name__ == "LlamaRMSNorm"
                        else None)
    model = _model("llama")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted, rep = nt.convert(model, report=True)
    assert rep.swapped == []
    assert len(rep.left) == 5
    _, cls, why = rep.left[0]
    assert cls == "transformers.models.llama.modeling_llama.LlamaRMSNorm"
    assert why.startswith("the check before swapping failed: in torch.float32 the outputs differ by up to")
    assert type(converted.norm).__name__ == "LlamaRMSNorm"
    assert any("LlamaRMSNorm" in str(w.message) for w in caught)


def test_report_names_unknown_norm_classes() -> None:
    class MyNorm(nn.LayerNorm):  # a subclass with its own forward: not converted
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(nn.Linear(4, 4), MyNorm(4), nn.LayerNorm(4))
    _, rep = nt.convert(model, report=True)
    assert rep.swapped == [("2", "torch.nn.modules.normalization.LayerNorm")]
    assert len(rep.left) == 1 and rep.left[0][0] == "1"
    assert "a subclass of torch.nn.modules.normalization.LayerNorm with its own forward" in rep.left[0][2]


def test_fuse_leaves_layers_whose_fused_call_cannot_run() -> None:
    # an integer weight: no kernel takes it, so the fused call fails; the layer must stay as it was
    model = nt.convert(_model("llama"))
    norm = model.layers[0].post_attention_layernorm
    norm.weight = nn.Parameter(norm.weight.data.to(torch.int32), requires_grad=False)
    _, rep = nt.fuse_residual_norms(model, report=True)
    assert rep.fused == ["layers.1"]
    assert rep.left[0][0] == "layers.0"
    assert rep.left[0][1].startswith("normgen cannot run the fused residual norm in torch.int32 on cpu: ")
    assert type(model.layers[0]).__name__ == "LlamaDecoderLayer"


def test_a_model_on_the_meta_device_converts_without_values() -> None:
    # built for loading weights later: the check runs on a CPU copy with random values
    with torch.device("meta"):
        model = transformers.LlamaModel(transformers.LlamaConfig(**_TEXT))
    converted, rep = nt.convert(model, report=True)
    assert len(rep.swapped) == 5 and rep.left == []
    assert converted.norm.weight.is_meta
