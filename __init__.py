"""Identity Animator: StableAnimator-style identity-preserving human image animation for ComfyUI.

Importing the pack does nothing but define these names; nodes and model folders are set up when
ComfyUI calls ``comfy_entrypoint``.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import create_extension

    return create_extension()
