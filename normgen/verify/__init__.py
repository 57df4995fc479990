"""Verification: the independent NumPy oracle and the checks of generated kernels against it.

    oracle.py      the float64 reference, written from the math alone
    check.py       kernels vs oracle over shapes, layouts, dtypes and modes (`normgen check`)
    reference.py   the reference shapes of the bundled specs
"""
