"""Compiled emulator modules: kernel signatures, guarded arguments, launches and their reports."""

from __future__ import annotations

import ctypes
import itertools
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .base import ABANDONED, ERROR_KINDS, GUARD_BYTES, ORDERS, EmulationError


class _LaunchConfig(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint32 * 3), ("block", ctypes.c_uint32 * 3), ("order", ctypes.c_int32),
                ("workers", ctypes.c_uint32), ("seed", ctypes.c_uint64), ("timeout_s", ctypes.c_double),
                ("check_uninit", ctypes.c_int32), ("stack_kib", ctypes.c_uint32)]


class _ErrorOut(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int32), ("has_block", ctypes.c_int32), ("block", ctypes.c_uint32 * 3),
                ("message", ctypes.c_char * 8192)]


@dataclass(frozen=True)
class Param:
    """One kernel parameter as the compiled module describes it."""

    pointer: bool
    size: int  # bytes of the scalar, or of the pointee (0 for void)
    category: str  # f float, i/u int, b bool, c char, h half, B bfloat16, x void, o other
    elem_size: int  # bytes of one scalar element (float4 -> 4)
    const: bool  # pointer to const
    ctype: str  # e.g. "const float*"
    name: str = ""  # from the source, when it could be parsed


# Buffers of launches whose worker thread was abandoned (time-out in uninterruptible code):
# that thread may still write into them, so they are never freed.
_abandoned_buffers: list[object] = []
_salts = itertools.count(1)
_lock = threading.Lock()


def _param_names(source: str, kernel: str) -> list[str] | None:
    """Best effort: the parameter names of `kernel` in the source, for messages."""
    base = re.escape(kernel.split("<", 1)[0].split("::")[-1].strip())
    for m in re.finditer(rf"__global__[^;{{}}]*?\b{base}\s*\(", source):
        depth, i = 1, m.end()
        while i < len(source) and depth:
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            i += 1
        text = source[m.end():i - 1]
        parts, depth, cur = [], 0, ""
        for ch in text:
            if ch in "<([":
                depth += 1
            elif ch in ">)]":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if cur.strip():
            parts.append(cur)
        names = []
        for p in parts:
            idents = re.findall(r"[A-Za-z_]\w*", p.split("=")[0])
            names.append(idents[-1] if idents else "")
        return names
    return None


def _parse_signature(sig: str, names: list[str] | None) -> list[Param]:
    params = []
    for i, rec in enumerate(r for r in sig.split(";") if r):
        kind, size, cat, elem, const, ctype = rec.split(":", 5)
        params.append(Param(kind == "P", int(size), cat, int(elem), const == "1", ctype,
                            names[i] if names and i < len(names) else ""))
    if names is not None and len(names) != len(params):
        params = [Param(p.pointer, p.size, p.category, p.elem_size, p.const, p.ctype) for p in params]
    return params


def _dim3(value: int | Sequence[int], what: str) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or any(not isinstance(d, (int, np.integer)) or d < 1 for d in dims):
        raise EmulationError(f"{what} must be a positive int or a tuple of 1 to 3 positive ints, got {value!r}",
                             kind="config")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))  # type: ignore[return-value]


_CAT_DTYPES = {("f", 2): "float16", ("f", 4): "float32", ("f", 8): "float64", ("i", 1): "int8", ("i", 2): "int16",
               ("i", 4): "int32", ("i", 8): "int64", ("u", 1): "uint8", ("u", 2): "uint16", ("u", 4): "uint32",
               ("u", 8): "uint64", ("b", 1): "bool_", ("h", 2): "float16", ("B", 2): "uint16"}


def _dtype_fits(p: Param, dt: np.dtype) -> bool:
    cat = p.category
    if cat in "xco":
        return True
    if cat == "f":
        return dt.kind == "f" and dt.itemsize == p.elem_size
    if cat in "iu":
        return dt.kind in "iu" and dt.itemsize == p.elem_size
    if cat == "b":
        return dt.itemsize == 1 and dt.kind in "biu"
    if cat == "h":
        return dt == np.float16 or (dt.kind in "iu" and dt.itemsize == 2)
    if cat == "B":
        return dt.name == "bfloat16" or (dt.kind in "iu" and dt.itemsize == 2)
    return False


def _expected(p: Param) -> str:
    if p.category == "h":
        return "float16 (or its uint16 bits)"
    if p.category == "B":
        return "bfloat16 bits as uint16 (or an ml_dtypes.bfloat16 array)"
    return _CAT_DTYPES.get((p.category, p.elem_size), f"{p.elem_size}-byte elements")


@dataclass
class _Group:
    """Array arguments that share memory, and the guarded buffer that stands in for it."""

    lo: int
    hi: int
    members: list[tuple[int, np.ndarray, int]]  # (argument index, array, first-element address)
    buf: np.ndarray | None = None
    expect: np.ndarray | None = None  # the guard fill, to compare with after the launch
    data_off: int = 0
    original: np.ndarray | None = None


def _extent(a: np.ndarray) -> tuple[int, int, int]:
    start = a.__array_interface__["data"][0]
    if a.size == 0:
        return start, start, start
    lo = start + sum(min(0, (n - 1) * s) for n, s in zip(a.shape, a.strides))
    hi = start + sum(max(0, (n - 1) * s) for n, s in zip(a.shape, a.strides)) + a.itemsize
    return start, lo, hi


def _root_address(a: np.ndarray) -> int:
    base = a
    while isinstance(base.base, np.ndarray):
        base = base.base
    return base.__array_interface__["data"][0]


def _guard_fill(n: int, salt: int) -> np.ndarray:
    """n bytes of guard: 32-bit words 0x7FFs7Ett, NaN read as float32, as float64 (high word)
    and as float16 (both halves), about 2^31 as int32: reading past an array shows. The
    payload bits vary with the position and with `salt` (one per buffer), so a kernel that
    copies one array's guard into another's (y[n] = 2 * x[n], an off-by-one on both) still
    changes the bytes: NaN arithmetic keeps payloads.
    """
    k = np.arange((n + 3) // 4, dtype=np.uint32)
    words = (np.uint32(0x7FF07E00) | (((k + salt) & 0xF) << 16) | ((k * 13 + salt * 7) & 0x1FF)).astype("<u4")
    return words.view(np.uint8)[:n].copy()


class EmuKernel:
    """One kernel of an EmuModule, callable like CuPy's RawKernel: kernel(grid, block, args)."""

    def __init__(self, module: EmuModule, name: str):
        self.module = module
        self.name = name

    def __call__(self, grid: int | Sequence[int], block: int | Sequence[int], args: Sequence[Any], *,
                 shared_mem: int = 0, **options: Any) -> None:
        if shared_mem:
            raise EmulationError("the CUDA emulator has no dynamic shared memory (shared_mem must be 0): declare "
                                 "shared arrays with NG_SHARED", kind="config", kernel=self.name)
        self.module.launch(self.name, grid=grid, block=block, args=args, **options)

    @property
    def params(self) -> list[Param]:
        return self.module.params(self.name)


class EmuModule:
    """A compiled, loaded emulator module: launch its kernels on NumPy arrays."""

    def __init__(self, lib: ctypes.CDLL, names: list[str], source: str, source_name: str, path: Path):
        self._lib = lib
        self.kernel_names = list(names)
        self.source = source
        self.source_name = source_name
        self.path = path
        self._params: dict[str, list[Param]] = {}

    def _index(self, kernel: str) -> int:
        try:
            return self.kernel_names.index(kernel)
        except ValueError:
            raise EmulationError(f"no kernel {kernel!r} in this module", kind="config", kernel=kernel,
                                 ) from None

    def params(self, kernel: str) -> list[Param]:
        """The kernel's parameters (types from the compiled code, names parsed from the source)."""
        if kernel not in self._params:
            fn = getattr(self._lib, f"ngemu_signature_{self._index(kernel)}")
            fn.restype = ctypes.c_char_p
            self._params[kernel] = _parse_signature(fn().decode(), _param_names(self.source, kernel))
        return self._params[kernel]

    def get_function(self, kernel: str) -> EmuKernel:
        """CuPy-style access: mod.get_function("k")(grid, block, args)."""
        self._index(kernel)
        return EmuKernel(self, kernel)

    def launch(self, kernel: str, grid: int | Sequence[int], block: int | Sequence[int], args: Sequence[Any], *,
               order: str = "forward", seed: int = 0, workers: int = 1, timeout: float = 30.0,
               check_uninitialized: bool = True, stack_kib: int = 128) -> None:
        """Runs `kernel` on the CPU; results land in the array arguments, as on the GPU.

        order: the order blocks run in, and threads run in between two synchronization points:
        "forward", "reverse" or "random" (seeded by `seed`). Comparing the results of several
        orders exposes races on global memory, which the emulator does not instrument.
        workers: OS threads running blocks. timeout: seconds for the whole launch.
        check_uninitialized: report reads of shared memory that no thread of the block wrote.

        >>> mod.launch("k", grid=(8,), block=(256,), args=(y, x, np.int32(n)), order="random", seed=3)

        Raises EmulationError naming the kernel, block, threads, shared array and source lines.
        """
        idx = self._index(kernel)
        if order not in ORDERS:
            raise EmulationError(f"order must be one of {sorted(ORDERS)}, got {order!r}", kind="config", kernel=kernel)
        params = self.params(kernel)
        args = tuple(args)
        if len(args) != len(params):
            sig = ", ".join(f"{p.ctype} {p.name}".strip() for p in params)
            raise EmulationError(f"kernel '{kernel}' takes {len(params)} arguments ({sig}), got {len(args)}",
                                 kind="argument", kernel=kernel)
        slots, keep, groups = self._marshal(kernel, params, args)
        cfg = _LaunchConfig((ctypes.c_uint32 * 3)(*_dim3(grid, "grid")), (ctypes.c_uint32 * 3)(*_dim3(block, "block")),
                            ORDERS[order], max(1, int(workers)), int(seed) & (2**64 - 1), float(timeout),
                            int(bool(check_uninitialized)), int(stack_kib))
        err = _ErrorOut()
        fn = getattr(self._lib, f"ngemu_launch_{idx}")
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(_ErrorOut)]
        rc = fn(ctypes.byref(cfg), slots, ctypes.byref(err))
        if rc == ABANDONED:
            with _lock:
                _abandoned_buffers.append((groups, keep, slots))
        if rc != 0:
            block_idx = tuple(err.block) if err.has_block else None
            message = err.message.decode(errors="replace")
            raise EmulationError(message + self._snippets(message), kind=ERROR_KINDS.get(rc, "error"), kernel=kernel,
                                 block=block_idx)  # type: ignore[arg-type]
        self._finish(kernel, params, groups)

    # -- arguments --------------------------------------------------------------------------------------------------

    def _marshal(self, kernel: str, params: list[Param], args: tuple[Any, ...]) -> tuple[Any, list[Any], list[_Group]]:
        keep: list[Any] = []
        values: list[int] = []
        arrays: list[tuple[int, np.ndarray]] = []
        for i, (a, p) in enumerate(zip(args, params)):
            what = f"argument {i} of '{kernel}' ({p.ctype} {p.name})".replace(" )", ")")
            if p.pointer:
                if not isinstance(a, np.ndarray):
                    raise EmulationError(f"{what}: expected a NumPy array, got {type(a).__name__}", kind="argument",
                                         kernel=kernel)
                if not _dtype_fits(p, a.dtype):
                    raise EmulationError(f"{what}: expected a {_expected(p)} array, got {a.dtype}", kind="argument",
                                         kernel=kernel)
                arrays.append((i, a))
                values.append(0)
            else:
                values.append(self._scalar(what, p, a, keep, kernel))
        groups = self._guard(arrays)
        for g in groups:
            for i, _a, first in g.members:
                ptr = ctypes.c_void_p(g.buf.ctypes.data + g.data_off + (first - g.lo))  # type: ignore[union-attr]
                keep.append(ptr)
                values[i] = ctypes.addressof(ptr)
        slots = (ctypes.c_void_p * max(1, len(values)))(*values)
        return slots, keep, groups

    @staticmethod
    def _scalar(what: str, p: Param, a: Any, keep: list[Any], kernel: str) -> int:
        suggest = "np." + _CAT_DTYPES.get((p.category, p.size), "<type>")
        if isinstance(a, np.ndarray) or not isinstance(a, np.generic):
            got = "an array" if isinstance(a, np.ndarray) else f"a Python {type(a).__name__}"
            raise EmulationError(f"{what}: expected a NumPy scalar, got {got}; pass e.g. {suggest}({a!r}) so that its "
                                 "C type is fixed (CuPy would pass a Python int as 8 bytes)", kind="argument",
                                 kernel=kernel)
        dt = a.dtype
        fits = dt.itemsize == p.size and (
            p.category == "o" or (p.category == "f" and dt.kind == "f") or (p.category in "iuc" and dt.kind in "iu")
            or (p.category == "b" and dt.kind in "biu") or (p.category == "h" and dt == np.float16)
            or (p.category == "B" and dt.itemsize == 2))
        if not fits:
            raise EmulationError(f"{what}: got a {dt} scalar; pass {suggest}(...)", kind="argument", kernel=kernel)
        holder = np.array(a)
        keep.append(holder)
        return holder.ctypes.data

    @staticmethod
    def _guard(arrays: list[tuple[int, np.ndarray]]) -> list[_Group]:
        groups: list[_Group] = []
        for i, a in sorted(arrays, key=lambda ia: _extent(ia[1])[1]):
            first, lo, hi = _extent(a)
            last = groups[-1] if groups else None
            if last is not None and lo < last.hi and hi > last.lo:
                last.hi = max(last.hi, hi)
                last.members.append((i, a, first))
            else:
                groups.append(_Group(lo, hi, [(i, a, first)]))
        for g in groups:
            size = g.hi - g.lo
            root = min(_root_address(a) for _i, a, _f in g.members)
            phase = (g.lo - root) % 256 if g.lo >= root else g.lo % 256
            g.expect = _guard_fill(2 * GUARD_BYTES + 512 + size, next(_salts))
            g.buf = g.expect.copy()
            addr = g.buf.ctypes.data
            g.data_off = (addr + GUARD_BYTES + 255) // 256 * 256 - addr + phase
            ctypes.memmove(addr + g.data_off, g.lo, size)
            if not any(a.flags.writeable for _i, a, _f in g.members):
                g.original = g.buf[g.data_off:g.data_off + size].copy()
        return groups

    def _finish(self, kernel: str, params: list[Param], groups: list[_Group]) -> None:
        for g in groups:
            buf, size = g.buf, g.hi - g.lo
            assert buf is not None
            expect = g.expect
            assert expect is not None
            end = g.data_off + size
            bad = np.flatnonzero(np.concatenate([buf[:g.data_off] != expect[:g.data_off], buf[end:] != expect[end:]]))
            if bad.size:
                pos = np.where(bad < g.data_off, bad, bad + size)
                raise EmulationError(self._guard_message(kernel, params, g, int(pos[0]), int(pos[-1])),
                                     kind="global-bounds", kernel=kernel)
            data = buf[g.data_off:end]
            if g.original is not None:
                changed = np.flatnonzero(data != g.original)
                if changed.size:
                    names = ", ".join(self._arg_name(params, i) for i, _a, _f in g.members)
                    raise EmulationError(f"emulated kernel '{kernel}' wrote to read-only array {names} (byte "
                                         f"{int(changed[0])} of its memory); pass a writeable array if the kernel "
                                         "is meant to write it", kind="readonly-write", kernel=kernel)
                continue
            ctypes.memmove(g.lo, buf.ctypes.data + g.data_off, size)

    @staticmethod
    def _arg_name(params: list[Param], i: int) -> str:
        p = params[i]
        return f"argument {i} ({p.ctype} {p.name})".replace(" )", ")")

    def _guard_message(self, kernel: str, params: list[Param], g: _Group, first: int, last: int) -> str:
        lines = [f"emulated kernel '{kernel}' wrote out of bounds of global memory:"]
        for i, a, addr in g.members:
            p0 = g.data_off + (addr - g.lo)  # offset of the pointer the kernel received
            span = f"bytes {first - p0:+d}..{last - p0:+d} from the pointer"
            elems = f"elements {(first - p0) // a.itemsize}..{(last - p0) // a.itemsize}"
            lines.append(f"  {self._arg_name(params, i)}, a {a.dtype} array of {a.size} elements: {span} were "
                         f"overwritten, i.e. {elems} (valid: 0..{a.size - 1} for a contiguous array)")
        lines.append("  (guard bytes around each array are checked after the launch; out-of-bounds reads are not "
                     "detected, they read NaN, or about 2^31 as int32)")
        return "\n".join(lines)

    def _snippets(self, message: str) -> str:
        lines = sorted({int(n) for n in re.findall(rf"\b{re.escape(self.source_name)}:(\d+)", message)})
        src = self.source.splitlines()
        shown = [f"  {n:5d} | {src[n - 1].strip()}" for n in lines[:6] if 0 < n <= len(src)]
        return ("\n  source:\n" + "\n".join(shown)) if shown else ""
