"""ComfyUI's V3 entry point: the list of the pack's nodes. Node IDs are an API: never rename one."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import file_nodes, guidance_nodes, palette_nodes, prompt_nodes, template_nodes, toy_world_nodes


class PickAndDrawExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*prompt_nodes.NODES, *palette_nodes.NODES, *template_nodes.NODES, *guidance_nodes.NODES, *file_nodes.NODES,
                *toy_world_nodes.NODES]


async def comfy_entrypoint() -> PickAndDrawExtension:
    return PickAndDrawExtension()
