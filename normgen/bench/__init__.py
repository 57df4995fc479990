"""Benchmarks (`normgen bench`): normgen against PyTorch, NumPy and a copy of the same bytes.

    cpu.py    CPU cases, providers, timing, tables, JSON and plots
    cuda.py   the same on a GPU (CUDA events)
    memory.py resident memory (peak, held after) against PyTorch, one fresh process per loop
"""
