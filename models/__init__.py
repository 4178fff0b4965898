"""Pure-torch modules and checkpoint conversions for Identity Animator.

Nothing in this package imports ComfyUI; device and dtype come from the inputs or the caller.
"""
