"""Custom ComfyUI types of the pack, declared once."""
from comfy_api.latest import io

IDAdapter = io.Custom("IDA_ID_ADAPTER")
PoseNet = io.Custom("IDA_POSENET")
FaceEncoder = io.Custom("IDA_FACE_ENCODER")
ArcFace = io.Custom("IDA_ARCFACE")
DWPose = io.Custom("IDA_DWPOSE")
# shared with comfyui_controlnet_aux: a list of per-frame OpenPose dicts (models/keypoints.py)
PoseKeypoint = io.Custom("POSE_KEYPOINT")
FaceAnalysis = io.Custom("IDA_FACE_ANALYSIS")
Face = io.Custom("IDA_FACE")
FaceLandmarks = io.Custom("IDA_FACE_LANDMARKS")   # per-frame five face points (models.face.FaceLandmarks)
FaceConditioning = io.Custom("IDA_FACE_CONDITIONING")

CATEGORY = "Identity Animator"
CAT_LOADERS = f"{CATEGORY}/loaders"
CAT_POSE = f"{CATEGORY}/pose"
CAT_FACE = f"{CATEGORY}/face"
CAT_ANIMATION = f"{CATEGORY}/animation"
CAT_SAMPLING = f"{CATEGORY}/sampling"
CAT_VIDEO = f"{CATEGORY}/video"
