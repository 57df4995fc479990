"""Code generation: a Plan's kernel structure formatted into source by the Jinja2 templates.

    render.py        the template context (everything a template prints comes from the plan)
    generate.py      readable sources for `normgen generate` and generated/
    cpu_prelude.py   Numba loops every generated CPU module imports
    prelude.cuh      the first lines of every generated CUDA source
"""

from pathlib import Path

#: the folder of the preludes (prelude.cuh is also on the include path of nvcc and the emulator)
PRELUDE_DIR = Path(__file__).resolve().parent
