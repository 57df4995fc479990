"""An instrumented CUDA emulator device that proves a call never reads device memory on the host.

On a GPU, a copy from the device to the host (`cupy.asnumpy`, `.get()`, `float(a)`, `.item()`)
makes the host wait for every kernel queued before it: a synchronization, which also rules
out capturing the step in a CUDA graph. On the CPU emulator (runtime/emulated.py) device
arrays are NumPy arrays, so such reads would pass unseen. `RecordingDevice` gives its arrays
a type of their own (`DeviceArray`) and records, in one ordered log shared with
`RecordingGroup`:

    ("launch", kernel)        every kernel launch
    ("allreduce", nbytes)     every collective, with its payload (a device array, reduced in place)
    ("to_device", nbytes)     host -> device copies (constants, launch geometry: no waiting)
    ("to_host", nbytes)       device -> host copies: the reads a device path must not make

and raises `HostRead` at once when host code computes with a device array (a NumPy ufunc or
function, `float()`, `bool()`, `.item()`, `.tolist()`, printing): on a GPU each is a copy to
the host or an error.

    >>> dev = RecordingDevice()
    >>> x = dev.put(np.random.default_rng(0).standard_normal((8, 4, 3)))
    >>> fwd = load("batch_norm").forward(x, process_group=RecordingGroup(dev))
    >>> dev.kernels()   # ['forward_partial', 'forward_merge', 'ranks_mean_sums', 'allreduce', ...]
    >>> dev.count("to_host")   # 0
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..op.distributed import Group
from ..runtime.emulated import EmuDevice

#: NumPy functions that read no values (allocation, memory overlap, shapes): allowed on device arrays
_NO_READ = {np.empty_like, np.may_share_memory, np.shares_memory, np.shape, np.ndim, np.size, np.result_type}


class HostRead(AssertionError):
    """Host code read the values of a device array."""


class DeviceArray(np.ndarray):
    """A NumPy array standing for device memory: views keep the type and the device; values
    reach the host only through the device's `to_host` (recorded)."""

    normgen_device: Any = None

    def __array_finalize__(self, obj: Any) -> None:
        self.normgen_device = getattr(obj, "normgen_device", None)

    def raw(self) -> np.ndarray:
        """The memory as a plain NumPy array (for the emulator's launches and the fake network)."""
        return self.view(np.ndarray)

    def _read(self, what: str) -> HostRead:
        return HostRead(f"host code read a device array ({what}, shape {self.shape}); on a GPU this is a "
                       "copy to the host that waits for the device")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise self._read(f"numpy.{ufunc.__name__}.{method}")

    def __array_function__(self, func, types, args, kwargs):
        if func in _NO_READ:
            plain = [a.raw() if isinstance(a, DeviceArray) else a for a in args]
            out = func(*plain, **kwargs)
            return out.view(DeviceArray) if func is np.empty_like else out
        raise self._read(f"numpy.{func.__name__}")

    def __getitem__(self, key):
        out = super().__getitem__(key)
        if not isinstance(out, np.ndarray):  # one element: a value on the host
            raise self._read("an element")
        return out

    def __float__(self):
        raise self._read("float()")

    def __int__(self):
        raise self._read("int()")

    def __bool__(self):
        raise self._read("bool()")

    def __index__(self):
        raise self._read("index")

    def item(self, *args):
        raise self._read(".item()")

    def tolist(self):
        raise self._read(".tolist()")

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    __str__ = __repr__


class RecordingDevice(EmuDevice):
    """The CPU emulator with DeviceArray arrays and an ordered log (see the module docstring).
    Thread-safe; one per rank when ranks are threads."""

    name = "emulator (recording)"

    def __init__(self, log: list | None = None):
        super().__init__()
        self.log = [] if log is None else log
        self._lock = threading.Lock()

    def record(self, kind: str, what: Any) -> None:
        with self._lock:
            self.log.append((kind, what))

    def _device(self, a: np.ndarray) -> DeviceArray:
        d = a.view(DeviceArray)
        d.normgen_device = self
        return d

    # ---- what tests call ----
    def put(self, a: np.ndarray) -> DeviceArray:
        """A device copy of host data (recorded as to_device)."""
        return self.asarray(np.asarray(a))

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.log if k == kind)

    def kernels(self) -> list[str]:
        """The launches and collectives, in order."""
        return [w if k == "launch" else k for k, w in self.log if k in ("launch", "allreduce")]

    def clear(self) -> None:
        with self._lock:
            self.log.clear()

    # ---- the Device interface (runtime/cuda.py) ----
    def owns(self, a) -> bool:
        return isinstance(getattr(a, "bits", a), DeviceArray)

    def launch(self, module, name: str, grid: int, block: tuple[int, int], args: tuple) -> None:
        self.record("launch", name)
        plain = tuple(a.raw() if isinstance(a, DeviceArray) else a for a in args)
        super().launch(module, name, grid, block, plain)

    def empty(self, shape, dtype) -> DeviceArray:
        return self._device(np.empty(shape, dtype))

    def empty_like(self, a) -> DeviceArray:
        return self._device(np.empty_like(a.raw() if isinstance(a, DeviceArray) else a))

    def asarray(self, a) -> DeviceArray:
        if isinstance(a, DeviceArray):  # already on the device: a device copy when not contiguous
            return a if a.flags.c_contiguous else self._device(np.ascontiguousarray(a.raw()))
        host = np.ascontiguousarray(a)
        self.record("to_device", host.nbytes)
        return self._device(host.copy())

    def to_host(self, a) -> np.ndarray:
        raw = a.raw() if isinstance(a, DeviceArray) else np.asarray(a)
        self.record("to_host", raw.nbytes)
        return raw.copy()

    def overlaps(self, a, b) -> bool:
        plain = [x.raw() if isinstance(x, DeviceArray) else x for x in (a, b)]
        return np.may_share_memory(*plain)


class RecordingGroup(Group):
    """Ranks whose collectives are recorded in their device's log. Alone (world 1), the sum
    over the ranks is the array itself; `threads(world)` makes ranks of one process (one
    RecordingDevice each) that add their device arrays through shared memory: a stand-in for
    NCCL, which reads device memory without the host."""

    def __init__(self, device: RecordingDevice, world: int = 1, rank: int = 0, shared: dict | None = None):
        super().__init__()
        self.device, self.world, self.rank = device, world, rank
        self.shared = shared or {"slots": [None] * world, "barrier": threading.Barrier(world, timeout=120)}

    @staticmethod
    def threads(world: int) -> list[RecordingGroup]:
        shared = {"slots": [None] * world, "barrier": threading.Barrier(world, timeout=120)}
        return [RecordingGroup(RecordingDevice(), world, r, shared) for r in range(world)]

    def gather(self, a: np.ndarray) -> np.ndarray:
        """Host arrays in rank order (the host path's collectives, and the tests' checks)."""
        slots, barrier = self.shared["slots"], self.shared["barrier"]
        slots[self.rank] = np.array(a)
        barrier.wait()
        out = np.stack(slots)
        barrier.wait()  # nobody overwrites a slot before everyone has read them all
        return out

    def allreduce(self, a: np.ndarray) -> np.ndarray:
        parts = self.gather(a)
        total = parts[0].copy()
        for r in range(1, len(parts)):
            total += parts[r]
        return total

    def reduce_on_device(self, a: Any, device: Any) -> None:
        if not isinstance(a, DeviceArray) or not a.flags.c_contiguous:
            raise AssertionError(f"a device collective got {type(a).__name__}, expected a contiguous DeviceArray")
        a.normgen_device.record("allreduce", a.nbytes)
        if self.world > 1:
            a.raw()[...] = self.allreduce(a.raw())  # rank order, the same bytes everywhere
