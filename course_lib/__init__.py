"""course_lib: models, data and batched interpretability methods for the course.

Under nbgrader (``NBGRADER_EXECUTION`` set) importing course_lib switches off progress
bars and warnings: nbgrader gives zero to a test cell that writes to stderr.

Importing course_lib also lowers torch's intra-op threads to the CPUs this process may use (its
cgroup quota and affinity mask), never raising them, and leaves them alone where the user chose
(``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``torch.set_num_threads`` before the import, or
``COURSE_LIB_THREADS``): see :mod:`course_lib.threads`.
"""
import os as _os
import sys as _sys

__version__ = "0.1.0"

if _os.environ.get("NBGRADER_EXECUTION"):
    import warnings as _warnings

    _os.environ.setdefault("TQDM_DISABLE", "1")
    _os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _warnings.simplefilter("ignore")

_torch_was_imported = "torch" in _sys.modules  # before us: the user may have set its threads

from .threads import cap_torch_threads as _cap_torch_threads  # noqa: E402

_cap_torch_threads(torch_was_imported=_torch_was_imported)

from .device import default_device  # noqa: E402
from .zoo import available_models, load_dataset, load_model  # noqa: E402

__all__ = ["load_model", "load_dataset", "available_models", "default_device"]
