"""Loader nodes for the official StableAnimator weights and the SVD-xt base."""
from __future__ import annotations

import logging

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io
from safetensors import SafetensorError

from ..models.checkpoint import CheckpointError, damaged_safetensors_message, is_safetensors, load_preferred, load_state_dict
from ..models.face_encoder import FaceEncoder
from ..models.id_adapter import IDAdapterWeights
from ..models.iresnet import IResNet
from ..models.pose_net import PoseNet
from ..models.unet_convert import convert_stableanimator_unet
from . import types
from .validation import Node
from .folders import STABLEANIMATOR, full_path, list_files
from .svd_model import UNET_DTYPES, WEIGHT_DTYPES, build_svd_model

logger = logging.getLogger(__name__)


def _load(folder: str, name: str) -> tuple[dict, str]:
    picked = full_path(folder, name)
    loaded = load_preferred(picked)
    for warning in loaded.warnings:   # a twin passed over: the user should re-convert or delete it
        logger.warning("%s", warning)
    if loaded.path != picked:
        logger.info("Using %s (converted twin of %s)", loaded.path, name)
    return loaded.state_dict, loaded.path


def _weights_combo(default_hint: str, tooltip: str) -> io.Combo.Input:
    files = list_files(STABLEANIMATOR)
    default = next((f for f in files if default_hint in f), files[0] if files else None)
    return io.Combo.Input(f"{default_hint}_name", options=files, default=default, tooltip=tooltip)


class LoadAnimationUNet(Node):
    """Loads StableAnimator's Animation/unet.pth into ComfyUI's native SVD model.

    The ID-adapter weights stored in the same file come out separately, for the ID-adapter patch.
    """

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_LoadAnimationUNet",
            display_name="Load Animation UNet",
            category=types.CAT_LOADERS,
            description=cls.__doc__.strip(),
            inputs=[
                _weights_combo("unet", "The model that draws every frame: Animation/unet.pth (or the .safetensors "
                               "written by `make convert`) from ComfyUI/models/stableanimator."),
                io.Combo.Input("weight_dtype", options=["default", *UNET_DTYPES], default="default",
                               tooltip="Lower precision fits smaller GPUs, higher needs more memory. UNet weight "
                               "precision. default: ComfyUI picks for your device (fp16/bf16 on GPUs). fp32 doubles "
                               "memory; fp8 halves it again (computed in fp16/bf16). The ID adapter and PoseNet stay "
                               "in at least fp16 whatever you pick."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The animation model, for Apply StableAnimator: ComfyUI "
                                "SVD model with StableAnimator's UNet weights."),
                types.IDAdapter.Output(display_name="id_adapter",
                                       tooltip="What keeps the reference's face, for Apply StableAnimator: the 16 "
                                       "id_to_k/id_to_v pairs of the distribution-aware ID adapter."),
            ],
        )

    @classmethod
    def execute(cls, unet_name, weight_dtype) -> io.NodeOutput:
        sd, path = _load(STABLEANIMATOR, unet_name)
        converted = convert_stableanimator_unet(sd, source=path)
        del sd
        model = build_svd_model(converted.unet, weight_dtype, path)
        unet_dtype = model.model.get_dtype()
        id_dtype = unet_dtype if unet_dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float16
        id_adapter = IDAdapterWeights.from_converted(converted.id_adapter).to(id_dtype)
        logger.info("ID adapter: %d layers, %d parameters, %s", len(id_adapter.blocks),
                    id_adapter.num_parameters(), id_dtype)
        return io.NodeOutput(model, id_adapter)


class LoadPoseNet(Node):
    """Loads StableAnimator's Animation/pose_net.pth (the pose guider)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_LoadPoseNet",
            display_name="Load PoseNet",
            category=types.CAT_LOADERS,
            description=cls.__doc__.strip(),
            inputs=[_weights_combo("pose_net", "The network that makes the body follow the skeletons: "
                                   "Animation/pose_net.pth from ComfyUI/models/stableanimator.")],
            outputs=[types.PoseNet.Output(display_name="pose_net",
                                          tooltip="Makes the body follow the skeletons, for Apply StableAnimator. "
                                          "PoseNet: skeleton images -> features added after the UNet's conv_in.")],
        )

    @classmethod
    def execute(cls, pose_net_name) -> io.NodeOutput:
        sd, path = _load(STABLEANIMATOR, pose_net_name)
        # 0.2 M parameters: kept in fp32, computed in the sampler's dtype through manual_cast
        net = PoseNet.from_state_dict(sd, dtype=torch.float32, device=mm.unet_offload_device(),
                                      operations=comfy.ops.manual_cast, source=path)
        logger.info("PoseNet from %s: %d output channels", path, net.out_channels)
        return io.NodeOutput(comfy.model_patcher.ModelPatcher(
            net, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()))


class LoadFaceEncoder(Node):
    """Loads StableAnimator's Animation/face_encoder.pth (FusionFaceId: ArcFace + CLIP -> 4 face tokens)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_LoadFaceEncoder",
            display_name="Load Face Encoder",
            category=types.CAT_LOADERS,
            description=cls.__doc__.strip(),
            inputs=[
                _weights_combo("face_encoder", "The network that turns the reference's face into the identity the "
                               "animation keeps: Animation/face_encoder.pth from ComfyUI/models/stableanimator."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="fp32",
                               tooltip="fp32 is exact; fp16/bf16 halve this network's memory, slightly less precise. "
                               "Face Encoder precision (57 M parameters, run once per video)."),
            ],
            outputs=[types.FaceEncoder.Output(display_name="face_encoder",
                                              tooltip="Turns the reference's face into identity tokens: Face Encoder "
                                              "for the Face Encode node.")],
        )

    @classmethod
    def execute(cls, face_encoder_name, weight_dtype) -> io.NodeOutput:
        sd, path = _load(STABLEANIMATOR, face_encoder_name)
        enc = FaceEncoder.from_state_dict(sd, dtype=WEIGHT_DTYPES[weight_dtype], device=mm.unet_offload_device(),
                                          operations=comfy.ops.manual_cast, source=path)
        logger.info("Face Encoder from %s: %d tokens x %d, CLIP width %d", path, enc.num_tokens, enc.cross_dim, enc.clip_dim)
        return io.NodeOutput(comfy.model_patcher.ModelPatcher(
            enc, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()))


class LoadArcFace(Node):
    """Loads the PyTorch ArcFace (Animation/glintr100_torch.pth, iresnet100) used for face refinement."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_LoadArcFace",
            display_name="Load ArcFace (PyTorch)",
            category=types.CAT_LOADERS,
            description=cls.__doc__.strip(),
            inputs=[_weights_combo("glintr100", "The face recogniser Face Refine Sampler uses to judge how alike each "
                                   "frame's face and the reference's are: Animation/glintr100_torch.pth from "
                                   "ComfyUI/models/stableanimator.")],
            outputs=[types.ArcFace.Output(display_name="arcface",
                                          tooltip="Judges face likeness, for Face Refine Sampler: differentiable "
                                          "ArcFace (112x112 RGB in [-1,1] -> 512-d embedding).")],
        )

    @classmethod
    def execute(cls, glintr100_name) -> io.NodeOutput:
        sd, path = _load(STABLEANIMATOR, glintr100_name)
        # ComfyUI runs every node under torch.inference_mode(), and tensors made there can never take
        # part in backward. Refinement backpropagates through this network (to its input; the weights
        # come out frozen), so it is built outside inference mode and kept out of ComfyUI's model
        # management (which would re-create its weights).
        with torch.inference_mode(False):
            net = IResNet.from_state_dict({k: v.clone() for k, v in sd.items()}, source=path)
        logger.info("ArcFace iresnet from %s: blocks %s", path, [len(getattr(net, f"layer{i}")) for i in range(1, net.num_layers + 1)])
        return io.NodeOutput(net)


class LoadSVDBase(Node):
    """Loads the VAE and CLIP-H image encoder from ComfyUI's svd_xt.safetensors, skipping its UNet.

    Same detection as ComfyUI's Image Only Checkpoint Loader, without building the 1.5 B-parameter
    SVD UNet that StableAnimator replaces anyway.
    """

    @classmethod
    def define_schema(cls):
        files = folder_paths.get_filename_list("checkpoints")
        default = next((f for f in files if "svd_xt" in f), files[0] if files else None)
        return io.Schema(
            node_id="IDA_LoadSVDBase",
            display_name="Load SVD-xt VAE + CLIP Vision",
            category=types.CAT_LOADERS,
            description=cls.__doc__.strip(),
            inputs=[io.Combo.Input("ckpt_name", options=files, default=default,
                                   tooltip="The base video model whose VAE and image encoder the graph uses (its UNet "
                                   "is not loaded): svd_xt.safetensors (Stable Video Diffusion img2vid-xt) in "
                                   "ComfyUI/models/checkpoints.")],
            outputs=[
                io.ClipVision.Output(display_name="clip_vision", tooltip="Reads the reference's overall look, for Face "
                                     "Encode: OpenCLIP ViT-H/14 image encoder of SVD-xt."),
                io.Vae.Output(display_name="vae", tooltip="Turns pictures into latents and back into frames (Animation "
                              "Conditioning, Animation Decode, Face Refine Sampler): SVD-xt VAE with the temporal "
                              "decoder."),
            ],
        )

    @classmethod
    def execute(cls, ckpt_name) -> io.NodeOutput:
        path = full_path("checkpoints", ckpt_name)
        if is_safetensors(path):
            try:  # ComfyUI's reader honours its mmap options; its damage reports get the pack's wording
                sd, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
            except (SafetensorError, ValueError, OSError) as exc:
                raise CheckpointError(damaged_safetensors_message(path, exc)) from exc
        else:
            # The pack's weights-only reader: ComfyUI's refusal of a code pickle advises weights_only=False.
            sd, metadata = load_state_dict(path), None
        out = comfy.sd.load_state_dict_guess_config(sd, output_vae=True, output_clip=False, output_clipvision=True,
                                                    output_model=False, metadata=metadata)
        if out is None or out[3] is None or out[2] is None:
            raise CheckpointError(
                f"{path} is not an SVD img2vid checkpoint with a VAE and CLIP image encoder. "
                "Use svd_xt.safetensors from stabilityai/stable-video-diffusion-img2vid-xt."
            )
        return io.NodeOutput(out[3], out[2])


NODES = [LoadAnimationUNet, LoadPoseNet, LoadFaceEncoder, LoadArcFace, LoadSVDBase]
