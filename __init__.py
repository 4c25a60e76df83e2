"""ComfyUI entry point of the Pick-and-Draw node pack (V3 extension API): re-exports comfy_entrypoint only.

Loading it loads the native library first (nodes/__init__.py), so a missing or mismatched build is
reported at start-up with the command that fixes it.
"""

from .nodes.extension import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
