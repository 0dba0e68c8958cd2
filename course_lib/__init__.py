"""course_lib: models, data and batched interpretability methods for the course.

Under nbgrader (``NBGRADER_EXECUTION`` set) importing course_lib switches off progress
bars and warnings: nbgrader gives zero to a test cell that writes to stderr.
"""
import os as _os

__version__ = "0.1.0"

if _os.environ.get("NBGRADER_EXECUTION"):
    import warnings as _warnings

    _os.environ.setdefault("TQDM_DISABLE", "1")
    _os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _warnings.simplefilter("ignore")

from .device import default_device  # noqa: E402
from .zoo import available_models, load_dataset, load_model  # noqa: E402

__all__ = ["load_model", "load_dataset", "available_models", "default_device"]
