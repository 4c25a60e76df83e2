"""The ComfyUI side of Pick-and-Draw.

``ops/`` is the Python face of the native library (torch only, no ComfyUI). ``comfy_host/`` is the one
adapter that touches ComfyUI's model and patch APIs; ``*_nodes.py`` are the node classes, listed by
``extension.py``. Importing this package loads the native library, so a missing or mismatched build is
reported at once with the command that fixes it.
"""

from . import ops  # noqa: F401  (importing ops loads the native library)
