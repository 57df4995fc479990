"""The output pool (normgen.runtime.alloc): reuse across shapes under a cap, never a buffer
that something still refers to, distinct buffers for concurrent threads, its settings."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from normgen.errors import NormgenError
from normgen.runtime import alloc
from normgen.runtime.alloc import Pool, size_class

MIB = 1 << 20


def addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def span(a: np.ndarray) -> tuple[int, int]:
    lo, hi = np.lib.array_utils.byte_bounds(a)
    return lo, hi


def overlap(a: np.ndarray, b: np.ndarray) -> bool:
    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


@pytest.fixture
def pool(monkeypatch) -> Pool:
    """A fresh relative-cap pool installed as the process's pool (so normgen's ops use it)."""
    p = Pool()
    monkeypatch.setattr(alloc, "_default", p)
    return p


# ---- size classes and reuse ---------------------------------------------------------------------


@pytest.mark.parametrize("nbytes", [MIB, MIB + 1, 3 * MIB + 12345, 5000 * 4096 - 4, 1 << 30, (1 << 30) + 1])
def test_size_class_rounds_up_by_at_most_an_eighth_to_whole_pages(nbytes):
    c = size_class(nbytes)
    assert nbytes <= c <= nbytes * 1.125 + 4096
    assert c % alloc.PAGE == 0
    assert size_class(c) == c  # a class size is its own class


def test_a_freed_buffer_serves_a_smaller_shape_that_fills_half_of_it(pool):
    y = pool.empty((4096, 1024), np.float32)  # 16 MiB
    a = addr(y)
    del y
    z = pool.empty((3000, 1024), np.float32)  # 11.7 MiB: more than half of it
    assert addr(z) == a
    s = pool.stats()
    assert (s.reused, s.missed) == (1, 1)
    del z
    w = pool.empty((4096, 256), np.float32)  # 4 MiB: less than half, so fresh memory
    assert addr(w) != a
    assert pool.stats().missed == 2


def test_best_fit_takes_the_smallest_buffer_that_fits(pool):
    big, mid = pool.empty((8 * MIB,), np.uint8), pool.empty((5 * MIB,), np.uint8)
    a_big, a_mid = addr(big), addr(mid)
    del big, mid
    x = pool.empty((4 * MIB,), np.uint8)  # both fit and are at least half full: the 5 MiB one
    assert addr(x) == a_mid
    y = pool.empty((4 * MIB,), np.uint8)  # the 8 MiB one is exactly half full: still served
    assert addr(y) == a_big


def test_variable_shape_loop_stays_under_the_relative_cap_and_reuses(pool):
    rng = np.random.default_rng(0)
    y = None
    largest = 0
    for _ in range(alloc.WINDOW):  # within one window the cap follows the largest request so far
        n = int(rng.integers(1000, 5001))
        largest = max(largest, n * 1024 * 4)
        y = pool.empty((n, 1024), np.float32)  # the previous y dies after this call, as in a loop
        y[-1, -1] = 1.0
        s = pool.stats()
        assert s.held <= s.cap == alloc.CAP_FACTOR * largest
    s = pool.stats()
    assert s.reused > 4 * s.missed, s
    assert s.released > 0  # the cap did bind: without it this loop would hold far more
    assert s.held + s.lent <= (alloc.CAP_FACTOR + 1) * largest * 1.125


def test_over_the_cap_the_least_recently_returned_go_first():
    pool = Pool(cap_bytes=3 * 4 * MIB)
    arrays = [pool.empty((4 * MIB,), np.uint8) for _ in range(4)]
    addrs = [addr(a) for a in arrays]
    for i in range(4):
        arrays[i] = None  # returned in order 0, 1, 2, 3
    s = pool.stats()
    assert (s.held, s.buffers, s.released) == (12 * MIB, 3, 1)
    again = [pool.empty((4 * MIB,), np.uint8) for _ in range(3)]  # all alive at once
    got = {addr(a) for a in again}
    assert got == set(addrs[1:])  # buffer 0, returned first, was the one unmapped


def test_the_relative_cap_forgets_old_large_requests(pool):
    big = pool.empty((64 * MIB,), np.uint8)
    del big
    assert pool.stats().held == 64 * MIB
    small = []
    for _ in range(2 * alloc.WINDOW):
        small.append(pool.empty((MIB,), np.uint8))
        if len(small) > 2:
            small.pop(0)
    s = pool.stats()
    assert s.cap == alloc.CAP_FACTOR * MIB
    assert s.held <= s.cap  # the 64 MiB buffer was unmapped once the window moved on


def test_release_unmaps_free_buffers_and_live_ones_come_back_later(pool):
    keep = pool.empty((2 * MIB,), np.uint8)
    gone = pool.empty((2 * MIB,), np.uint8)
    del gone
    pool.release()
    s = pool.stats()
    assert (s.held, s.lent, s.released) == (0, 2 * MIB, 1)
    del keep
    assert pool.stats().held == 2 * MIB


def test_small_and_non_numeric_arrays_are_not_pooled(pool):
    small = pool.empty((1000,), np.float32)
    obj = pool.empty((MIB,), object)  # zero pages are not valid object pointers: never pooled
    assert small.flags.owndata and obj.flags.owndata
    assert obj[0] is None
    assert pool.stats().missed == 0


@pytest.mark.parametrize("make", [
    lambda: np.empty((64, 128, 32), np.float32),
    lambda: np.empty((64, 32, 128), np.float32).transpose(0, 2, 1),  # channels_last-like
    lambda: np.empty((32, 128, 64), np.float64).transpose(2, 0, 1)[:, ::2],  # sliced and transposed
])
def test_empty_like_keeps_the_dimension_order(pool, make):
    x = make()
    out = pool.empty_like(x)
    ref = np.empty_like(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.strides == ref.strides
    assert not out.flags.owndata and pool.stats().missed == 1


# ---- never a buffer still referenced --------------------------------------------------------------


def _holders():
    import torch

    return {
        "slice": lambda y: y[10:],
        "view of a view": lambda y: y[10:].reshape(-1)[5:],
        "transpose": lambda y: y.T,
        "dtype view": lambda y: y.view(np.int32),
        "memoryview": memoryview,
        "np.from_dlpack": np.from_dlpack,
        "torch.from_numpy": torch.from_numpy,
        "torch.from_numpy, then a view": lambda y: torch.from_numpy(y)[3:].t(),
        "torch.from_dlpack": torch.from_dlpack,
    }


@pytest.mark.parametrize("how", list(_holders()))
def test_memory_still_referenced_is_not_handed_out(pool, how):
    pytest.importorskip("torch")
    y = pool.empty((1024, 1024), np.float32)
    y[:] = np.arange(y.size, dtype=np.float32).reshape(y.shape)
    holder = _holders()[how](y)
    seen = np.array(np.asarray(holder))  # a copy of what the holder shows now
    lo, hi = span(y)
    del y
    gc.collect()
    z = pool.empty((1024, 1024), np.float32)  # same size: would get that memory if it were free
    assert not (span(z)[0] < hi and lo < span(z)[1])
    z[:] = -1.0
    assert np.array_equal(np.asarray(holder), seen)
    assert pool.stats().reused == 0
    del holder, z
    gc.collect()
    w = pool.empty((1024, 1024), np.float32)  # now nothing refers to it: it is reused
    assert pool.stats().reused == 1 and w.size == 1024 * 1024


# ---- threads --------------------------------------------------------------------------------------


def test_concurrent_threads_get_distinct_buffers(pool):
    n_threads, rounds = 6, 40
    barrier = threading.Barrier(n_threads)
    live: list[np.ndarray | None] = [None] * n_threads
    errors: list[str] = []

    def work(k: int) -> None:
        try:
            for r in range(rounds):
                a = pool.empty((MIB + 4096 * (r % 3),), np.uint8)  # sizes that share buffers
                a[:] = k
                live[k] = a
                barrier.wait()  # every thread holds one buffer now
                if k == 0:
                    held = [b for b in live if b is not None]
                    for i in range(len(held)):
                        for j in range(i + 1, len(held)):
                            if overlap(held[i], held[j]):
                                errors.append(f"round {r}: threads share memory")
                barrier.wait()
                if not np.all(a == k):
                    errors.append(f"round {r}: thread {k}'s buffer was written by another")
                live[k] = None
                del a
                barrier.wait()
        except threading.BrokenBarrierError:
            pass
        except Exception as e:  # noqa: BLE001 - reported below, with the thread
            errors.append(f"thread {k}: {e!r}")
            barrier.abort()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = pool.stats()
    assert s.reused + s.missed == n_threads * rounds
    assert s.reused > 0  # buffers went round between threads, yet never two at once
    assert s.lent == 0


# ---- settings -------------------------------------------------------------------------------------


def test_settings_from_the_environment():
    assert Pool.from_env({}).fixed_cap is None and Pool.from_env({}).enabled
    assert Pool.from_env({"NORMGEN_POOL_BYTES": "256M"}).cap() == 256 * MIB
    assert Pool.from_env({"NORMGEN_POOL_BYTES": "1GiB"}).cap() == 1 << 30
    assert Pool.from_env({"NORMGEN_POOL_BYTES": "4096"}).cap() == 4096
    assert not Pool.from_env({"NORMGEN_POOL_BYTES": "0"}).enabled
    assert not Pool.from_env({"NORMGEN_POOL": "0"}).enabled


def test_bad_settings_say_what_is_allowed():
    with pytest.raises(NormgenError) as e:
        Pool.from_env({"NORMGEN_POOL_BYTES": "lots"})
    assert str(e.value) == ("NORMGEN_POOL_BYTES='lots' is not a size\n"
                            "  allowed: bytes, or a number with K, M or G (e.g. 256M)")
    with pytest.raises(NormgenError) as e:
        Pool.from_env({"NORMGEN_POOL": "off"})
    assert "NORMGEN_POOL='off': expected 0 (no output pool) or 1" in str(e.value)


def test_a_disabled_pool_hands_out_plain_arrays():
    pool = Pool.from_env({"NORMGEN_POOL": "0"})
    a = pool.empty_like(np.empty((1024, 1024), np.float32))
    assert a.flags.owndata
    assert pool.stats() == alloc.Stats(held=0, buffers=0, lent=0, cap=0, reused=0, missed=0, released=0)


# ---- through normgen's ops ------------------------------------------------------------------------


def test_layer_norm_over_varying_lengths_reuses_and_stays_correct(pool):
    from normgen.ops import layer_norm

    rng = np.random.default_rng(1)
    w = rng.standard_normal(1024).astype(np.float32)
    b = rng.standard_normal(1024).astype(np.float32)
    y = None
    for i in range(40):
        n = int(rng.integers(256, 1200))  # 1-4.7 MiB outputs
        x = rng.standard_normal((n, 1024), dtype=np.float32) * 3 + 1
        y = layer_norm(x, (1024,), w, b)
        if i % 8 == 7:  # a reused buffer holds the last output's numbers: every element must be rewritten
            x64 = x.astype(np.float64)
            ref = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5) * w + b
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
        s = pool.stats()
        assert s.held <= s.cap
    s = pool.stats()
    assert s.reused > s.missed, s


def test_torch_outputs_keep_their_memory_until_the_tensor_dies(pool):
    torch = pytest.importorskip("torch")
    import normgen.torch as nt

    x = torch.randn(512, 1024)
    y1 = nt.layer_norm(x, (1024,))
    before = y1.clone()
    y2 = nt.layer_norm(x * 2 + 1, (1024,))  # y1 is alive: y2 must not get its memory
    assert y1.data_ptr() != y2.data_ptr()
    assert torch.equal(y1, before)
    x.requires_grad_()
    y3 = nt.layer_norm(x, (1024,))
    (g,) = torch.autograd.grad(y3, x, torch.ones_like(y3))
    assert len({y1.data_ptr(), y2.data_ptr(), y3.data_ptr(), g.data_ptr()}) == 4
    assert torch.equal(y1, before)


def test_a_failed_map_gives_back_held_memory_then_raises_memory_error(pool, monkeypatch):
    kept = pool.empty((2 * MIB,), np.uint8)
    del kept  # one free 2 MiB buffer, too small for what comes next

    def no_memory(size):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(alloc, "_Block", no_memory)
    with pytest.raises(MemoryError, match="unable to map 8388608 bytes"):
        pool.empty((8 * MIB,), np.uint8)
    s = pool.stats()
    assert (s.held, s.lent, s.released) == (0, 0, 1)
