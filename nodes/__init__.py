"""ComfyUI adapter layer: node declarations, validation, progress; math lives in ``models/``."""
from comfy_api.latest import ComfyExtension, io

from .folders import register_model_folders


class IdentityAnimatorExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from . import animation, color, decode, evaluate, face, inputs, loaders, pose, refine, sampling

        return [*inputs.NODES, *loaders.NODES, *pose.NODES, *face.NODES, *animation.NODES, *sampling.NODES, *refine.NODES,
                *decode.NODES, *color.NODES, *evaluate.NODES]


def create_extension() -> IdentityAnimatorExtension:
    register_model_folders()
    return IdentityAnimatorExtension()
