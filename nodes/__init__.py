"""The ComfyUI side of Pick-and-Draw.

``ops/`` is the Python face of the native library (torch only). Node classes will live in
``*_nodes.py`` files next to this one and are the only modules, with the one host adapter, that
import ComfyUI. Loading the pack loads the native library first, so a missing or mismatched build
is reported at start-up with the command that fixes it.
"""

from .ops import _native

_native.load()

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
