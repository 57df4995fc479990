"""Shared test setup: one kernel cache for the whole session, fixed seeds."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

# One cache per test session (cold in CI, shared by every test and subprocess of the session),
# unless the caller chose one: NORMGEN_CACHE_DIR=... pytest keeps compiled kernels between runs.
if "NORMGEN_CACHE_DIR" not in os.environ:
    os.environ["NORMGEN_CACHE_DIR"] = tempfile.mkdtemp(prefix="normgen-test-cache-")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
