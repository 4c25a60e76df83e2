"""The wire types of the pack's node sockets (ComfyUI V3 custom types), all prefixed PICKDRAW_."""

from comfy_api.latest import io

Palette = io.Custom("PICKDRAW_PALETTE")
LayoutTemplate = io.Custom("PICKDRAW_LAYOUT_TEMPLATE")
