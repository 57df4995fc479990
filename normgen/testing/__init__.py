"""Instruments for testing normgen (not used by ops in normal calls).

    cuda_emu/       runs generated CUDA C on the CPU, catching races and bad indices
    hostile.py      hostile calls and spec mutations
    reliability.py  the reliability campaign (docs/RELIABILITY.md)
    distcheck.py    statistics across processes checked against one process
"""
