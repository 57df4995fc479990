"""What the CUDA planner knows about a GPU: the numbers its launch rules read.

A memory-bound kernel reaches DRAM bandwidth only with enough bytes in flight, so the
rules in launch.py are written against these numbers: SMs and resident threads (how many
threads fill the device), shared memory per block (tiles), registers (what a thread may
keep), FP64 rate (whether float64 may appear in per-element loops), DRAM bandwidth and L2
(the traffic model). A `Device` comes from CuPy when a GPU is present (`from_cupy`), or
from a named profile (`profile("h100")`) when planning for a GPU that is not here
(`normgen plan --target cuda --device h100`). The CPU emulator of CUDA has a profile of
its own with 4 SMs, so that small test shapes still take the split (multi-part) paths.

    >>> profile("h100").sms
    132
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import NormgenError


@dataclass(frozen=True)
class Device:
    """A GPU as the planner sees it."""

    name: str  # profile name ("h100") or the GPU's name
    sms: int  # streaming multiprocessors
    threads_per_sm: int  # resident threads per SM
    shared_per_block: int  # bytes of static shared memory a block may declare
    shared_per_sm: int  # bytes of shared memory per SM
    regs_per_sm: int  # 32-bit registers per SM
    fp64_rate: float  # FP64 throughput / FP32 throughput
    bandwidth_gbs: float  # DRAM bandwidth, GB/s
    l2_bytes: int
    arch: str  # the nvcc arch the sources are checked for, e.g. "sm_90"

    @property
    def full_waves(self) -> int:
        """Threads in two waves of 1024-thread SM slots (the rule of thumb: >= 2 x SMs x 1024)."""
        return 2 * self.sms * 1024

    def __str__(self) -> str:
        return (f"{self.name} ({self.sms} SMs x {self.threads_per_sm} threads, {self.bandwidth_gbs:.0f} GB/s, "
                f"L2 {self.l2_bytes >> 20} MiB, FP64 at 1/{round(1 / self.fp64_rate)} of FP32)")


_KIB, _MIB = 1024, 1024 * 1024

#: GPUs normgen plans for when none is present. Numbers from the vendors' data sheets
#: (SXM parts where there are several).
PROFILES: dict[str, Device] = {
    "h100": Device("h100", 132, 2048, 48 * _KIB, 228 * _KIB, 65536, 1 / 2, 3350, 50 * _MIB, "sm_90"),
    "h200": Device("h200", 132, 2048, 48 * _KIB, 228 * _KIB, 65536, 1 / 2, 4800, 50 * _MIB, "sm_90"),
    "a100": Device("a100", 108, 2048, 48 * _KIB, 164 * _KIB, 65536, 1 / 2, 2039, 40 * _MIB, "sm_80"),
    "l40s": Device("l40s", 142, 1536, 48 * _KIB, 100 * _KIB, 65536, 1 / 64, 864, 96 * _MIB, "sm_89"),
    "rtx4090": Device("rtx4090", 128, 1536, 48 * _KIB, 100 * _KIB, 65536, 1 / 64, 1008, 72 * _MIB, "sm_89"),
}
#: the CPU emulator (normgen.testing.cuda_emu): few SMs, so that small shapes split
EMULATOR = Device("emulator", 4, 2048, 48 * _KIB, 228 * _KIB, 65536, 1 / 2, 100, 4 * _MIB, "sm_80")
#: what `normgen plan --target cuda` plans for when no GPU is present and no --device is given
DEFAULT_PROFILE = "h100"


def profile(name: str) -> Device:
    """A named profile (see PROFILES), or the emulator's ("emulator")."""
    if name == EMULATOR.name:
        return EMULATOR
    try:
        return PROFILES[name]
    except KeyError:
        raise NormgenError(f"unknown device profile {name!r}", allowed=", ".join(PROFILES)) from None


def from_cupy(cupy) -> Device:
    """The GPU CuPy sees, measured where CUDA says; bandwidth and FP64 rate from the closest profile."""
    dev = cupy.cuda.Device()
    a = dev.attributes
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    major, minor = divmod(int(dev.compute_capability), 10)
    like = _closest(name, 10 * major + minor)
    bus_bits = a.get("GlobalMemoryBusWidth", 0)
    clock_khz = a.get("MemoryClockRate", 0)
    bandwidth = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if bus_bits and clock_khz else like.bandwidth_gbs
    return Device(name=name, sms=int(a["MultiProcessorCount"]),
                  threads_per_sm=int(a.get("MaxThreadsPerMultiProcessor", like.threads_per_sm)),
                  shared_per_block=int(a.get("MaxSharedMemoryPerBlock", like.shared_per_block)),
                  shared_per_sm=int(a.get("MaxSharedMemoryPerMultiprocessor", like.shared_per_sm)),
                  regs_per_sm=int(a.get("MaxRegistersPerMultiprocessor", like.regs_per_sm)),
                  fp64_rate=like.fp64_rate, bandwidth_gbs=bandwidth, l2_bytes=int(a.get("L2CacheSize", like.l2_bytes)),
                  arch=f"sm_{major}{minor}")


def _closest(name: str, cc: int) -> Device:
    """The profile a GPU resembles (FP64 rate is not a device attribute)."""
    low = name.lower()
    for key in ("h200", "h100", "a100", "l40s", "4090"):
        if key in low:
            return PROFILES["rtx4090" if key == "4090" else key]
    # the x.0 compute capabilities are data-centre parts with fast FP64; the others are not
    return PROFILES["h100" if cc >= 90 and cc % 10 == 0 else "a100" if cc == 80 else "l40s"]
