"""Custom ComfyUI types of the pack, declared once."""
from comfy_api.latest import io

IDAdapter = io.Custom("IDA_ID_ADAPTER")
PoseNet = io.Custom("IDA_POSENET")
FaceEncoder = io.Custom("IDA_FACE_ENCODER")
ArcFace = io.Custom("IDA_ARCFACE")

CATEGORY = "Identity Animator"
CAT_LOADERS = f"{CATEGORY}/loaders"
