"""Reference shapes of the bundled specs: for `generated/`, `normgen check` and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reference:
    spec: str
    shape: tuple[int, ...]
    layout: str = "contiguous"  # contiguous | channels_last | transposed | sliced
    sizes: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        return f"{self.spec}.{self.layout}"


#: one or two reference plans per bundled spec (the layouts that matter for it)
REFERENCES = (
    Reference("batch_norm", (32, 128, 56, 56)),
    Reference("batch_norm", (32, 128, 56, 56), "channels_last"),
    Reference("layer_norm", (8192, 1024), sizes=(("normalized_shape", (1024,)),)),
    Reference("group_norm", (8, 256, 64, 64), sizes=(("num_groups", 32),)),
    Reference("group_norm", (8, 256, 64, 64), "channels_last", sizes=(("num_groups", 32),)),
    Reference("instance_norm", (8, 256, 64, 64)),
    Reference("rms_norm", (8192, 1024), sizes=(("normalized_shape", (1024,)),)),
    Reference("switchable_norm", (8, 64, 32, 32)),
    Reference("weight_norm", (512, 256, 3, 3)),
    Reference("weight_standardization", (512, 256, 3, 3)),
    Reference("standardize", (100000, 64)),
    # fused specs (their CPU and CUDA kernels)
    Reference("add_rms_norm", (8192, 4096), sizes=(("normalized_shape", (4096,)),)),
    Reference("gated_rms_norm", (8192, 1024), sizes=(("normalized_shape", (1024,)),)),
    Reference("group_norm_silu", (8, 256, 64, 64), sizes=(("num_groups", 32),)),
    Reference("group_norm_silu", (8, 256, 64, 64), "channels_last", sizes=(("num_groups", 32),)),
)
