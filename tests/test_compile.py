"""normgen.torch under torch.compile: a model with every layer kind compiles with
fullgraph=True and dynamic=True, without graph breaks and without recompiling for a new
batch size, and its outputs, gradients and running statistics equal eager torch.nn's (eager
normgen's for the layers torch.nn does not have).

Compiling is slow on two cores, so there are two tests: Dynamo alone (explain), and one
compiled model (Inductor) trained on three batch sizes and then evaluated. Float64, at the
shapes of test_torch.py, so the Numba kernels are shared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
nt = pytest.importorskip("normgen.torch")
nn = torch.nn

POS_NORM = Path(__file__).resolve().parent.parent / "examples" / "pos_norm.toml"
C = 6


class Zoo(nn.Module):
    """Every normgen.torch layer kind on [N, 6, 5, 5] inputs. `ns` gives the layers that
    torch.nn has (torch.nn itself for the reference model); the others are normgen's in both."""

    def __init__(self, ns) -> None:
        super().__init__()
        self.conv = nt.weight_norm(nn.Conv2d(C, C, 3, padding=1))
        self.ws = nt.weight_standardization(nn.Conv2d(C, C, 1))
        self.bn2 = ns.BatchNorm2d(C)
        self.in2 = ns.InstanceNorm2d(C, affine=True, track_running_stats=True)
        self.gn = ns.GroupNorm(3, C)
        self.sn = nt.SwitchableNorm2d(C)
        self.pos = nt.from_spec(POS_NORM, num_features=C, running_shape=(5, 5))  # a user's spec file
        self.ln, self.rms = ns.LayerNorm(5), ns.RMSNorm(5)
        self.bn3, self.in3, self.sync = ns.BatchNorm3d(C), ns.InstanceNorm3d(C), ns.SyncBatchNorm(C)
        self.bn1, self.in1 = ns.BatchNorm1d(C, momentum=None), ns.InstanceNorm1d(C)  # a cumulative average
        self.std = nt.from_spec("standardize")

    def forward(self, x):
        x = self.gn(self.in2(self.bn2(self.conv(x))))
        x = self.rms(self.ln(self.pos(self.sn(self.ws(x)))))
        x = self.sync(self.in3(self.bn3(x.unsqueeze(2)))).squeeze(2)
        x = self.in1(self.bn1(x.flatten(2)))
        return self.std(x.mean(2))


def models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ref = Zoo(nn).double()
    new = Zoo(nt).double()
    new.load_state_dict(ref.state_dict())
    return ref, new


def batch(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, 5, 5, generator=g, dtype=torch.float64) * 3 + 1


def test_every_layer_kind_is_one_graph():
    _, new = models()
    explained = torch._dynamo.explain(new)(batch(4, 0))
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    assert explained.graph_count == 1
    names = {type(m).__name__ for m in new.modules()}
    assert {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d", "InstanceNorm2d",
            "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm", "SwitchableNorm2d", "SpecNorm",
            "_WeightNorm", "_WeightStandardization"} <= names
    ops = [n.target for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.normgen.forward.default) == 15  # 13 layers and 2 weight parametrizations


def assert_close_models(ref: nn.Module, new: nn.Module, tol: float = 1e-8) -> None:
    for (name, p), q in zip(ref.named_parameters(), new.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=tol, atol=tol, msg=name)
    for (name, b), c in zip(ref.named_buffers(), new.buffers()):
        torch.testing.assert_close(c, b, rtol=tol, atol=tol, msg=name)


def test_compiled_fullgraph_dynamic_matches_eager_torch_nn():
    ref, new = models()
    compiled = torch.compile(new, fullgraph=True, dynamic=True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):  # a new batch size must reuse the graph
        for step, n in enumerate((4, 3, 5)):
            x = batch(n, step)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = ref(xa), compiled(xb)
            dy = torch.randn(ya.shape, generator=torch.Generator().manual_seed(10 + step), dtype=ya.dtype)
            ref.zero_grad()
            new.zero_grad()
            ya.backward(dy)
            yb.backward(dy)
            torch.testing.assert_close(yb, ya, rtol=1e-8, atol=1e-8)
            torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-8, atol=1e-8)
            assert_close_models(ref, new)  # parameter gradients; running statistics, batch counts
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1
    assert int(new.bn1.num_batches_tracked) == 3
    ref.eval()
    new.eval()  # a new graph for evaluation (training is a guard), normalized with the running statistics
    x = batch(3, 7)
    torch.testing.assert_close(compiled(x), ref(x), rtol=1e-8, atol=1e-8)
    assert_close_models(ref, new)  # evaluation leaves the running statistics as they were
