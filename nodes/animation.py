"""Animation nodes: StableAnimator's patches on a cloned SVD model, and its conditioning."""
from __future__ import annotations

import logging

import numpy as np
import torch

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io

from .patches import IDAttentionPatch, PoseResidualPatch, temporal_block_marks
from . import types
from .feedback import show_on_node
from .validation import Node, generation_size_problem, known, verdict

logger = logging.getLogger(__name__)


def _pose_features(pose_net, pose_images: torch.Tensor, chunk: int = 16, keep_dtype=torch.float16) -> torch.Tensor:
    """PoseNet on every frame once, in chunks on its device; features are kept off the GPU."""
    mm.load_models_gpu([pose_net])
    dev = pose_net.load_device
    feats = []
    pbar = comfy.utils.ProgressBar(len(pose_images))
    for i in range(0, len(pose_images), chunk):
        mm.throw_exception_if_processing_interrupted()
        x = pose_images[i:i + chunk, ..., :3].movedim(-1, 1).to(dev, torch.float32) * 2.0 - 1.0   # [n, 3, H, W] in [-1, 1]
        with torch.no_grad():
            feats.append(pose_net.model(x).to(mm.intermediate_device(), keep_dtype))
        pbar.update_absolute(min(i + chunk, len(pose_images)), len(pose_images))
    return torch.cat(feats)


class ApplyStableAnimator(Node):
    """Patches a copy of the model with StableAnimator's ID adapter (face tokens on the 16 spatial
    cross-attentions) and PoseNet (skeleton features after the first convolution)."""

    rule_inputs = ('id_start_percent', 'id_end_percent')

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_ApplyStableAnimator", display_name="Apply StableAnimator", category=types.CAT_ANIMATION,
            description=cls.__doc__.strip(),
            inputs=[
                io.Model.Input("model", tooltip="The animation model, from Load Animation UNet. It is cloned, never "
                               "changed."),
                types.IDAdapter.Input("id_adapter", tooltip="What keeps the reference's face in the frames, from Load "
                                      "Animation UNet."),
                types.FaceConditioning.Input("face_conditioning", tooltip="The reference's identity, from Face "
                                             "Encode."),
                types.PoseNet.Input("pose_net", tooltip="What makes the body follow the skeletons, from Load PoseNet."),
                io.Image.Input("pose_images", tooltip="The skeletons the body follows: skeleton images at generation "
                               "size, one per frame (Render Skeleton)."),
                io.Float.Input("id_strength", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="Higher pushes the face harder towards the reference's, lower lets it drift; "
                               "the model was trained at 1.0. Weight of the face branch (official: 1.0). 0 turns the "
                               "ID adapter off."),
                io.Float.Input("pose_strength", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="Higher makes the body follow the skeletons more strictly, lower loosens it; "
                               "the model was trained at 1.0. Weight of the PoseNet features (official: 1.0)."),
                io.Float.Input("id_start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Raise it to let the first, layout-forming steps run without the face branch. "
                               "Start of the sampling range where the ID adapter acts (0 = first step)."),
                io.Float.Input("id_end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Lower it to let the last, detail-forming steps run without the face branch. "
                               "End of that range (1 = last step)."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The animation model steered by the face and the "
                                     "skeletons, for Animation Sampler: the patched copy.")],
        )

    @classmethod
    def rules(cls, values):
        start, end = values.get("id_start_percent"), values.get("id_end_percent")
        if known(start, end) and start >= end:
            return (f"id_start_percent ({start}) must be below id_end_percent ({end}), or the ID adapter never acts. "
                    "Swap them; to turn the face branch off set id_strength to 0.")
        return None

    @classmethod
    def execute(cls, model, id_adapter, face_conditioning, pose_net, pose_images, id_strength, pose_strength,
                id_start_percent, id_end_percent) -> io.NodeOutput:
        tokens = face_conditioning.face_tokens
        if tokens.shape[-1] != id_adapter.cross_attention_dim:
            raise ValueError(f"Face tokens are {tokens.shape[-1]}-wide but the ID adapter expects "
                             f"{id_adapter.cross_attention_dim}: Face Encoder and UNet come from different models.")
        m = model.clone()
        sampling = m.get_model_object("model_sampling")
        sigma_start, sigma_end = sampling.percent_to_sigma(id_start_percent), sampling.percent_to_sigma(id_end_percent)
        for (block, number), kv in id_adapter.blocks.items():
            m.set_model_attn2_replace(IDAttentionPatch(kv["to_k"], kv["to_v"], tokens, id_strength, sigma_start, sigma_end),
                                      block, number)
        # the temporal blocks find the same replace patches; their mark keeps the face off them
        for name, mark in temporal_block_marks(m.model.diffusion_model).items():
            m.add_object_patch(name, mark)
        keep = torch.float32 if m.model.get_dtype() == torch.float32 else torch.float16
        feats = _pose_features(pose_net, pose_images, keep_dtype=keep)
        channels = m.model.diffusion_model.input_blocks[0][0].weight.shape[0]
        if feats.shape[1] != channels:
            raise ValueError(f"PoseNet gives {feats.shape[1]} channels but the UNet's first block has {channels}.")
        m.set_model_input_block_patch(PoseResidualPatch(feats, pose_strength))
        logger.info("Apply StableAnimator: ID adapter on %d blocks (strength %.2f), PoseNet on %d frames (strength %.2f)",
                    len(id_adapter.blocks), id_strength, len(feats), pose_strength)
        return io.NodeOutput(m)


def _lanczos(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    from PIL import Image

    arr = (image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    img = Image.fromarray(arr).resize((width, height), Image.LANCZOS)
    return torch.from_numpy(np.asarray(img, np.float32) / 255.0)


class AnimationConditioning(Node):
    """StableAnimator's conditioning: the reference latent (VAE mode of the Lanczos-resized reference,
    noise-augmented in [-1, 1] as the official pipeline does, unscaled), the CLIP token, and
    fps / motion bucket / augmentation for the time embedding. The negative is all zeros."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_AnimationConditioning", display_name="Animation Conditioning", category=types.CAT_ANIMATION,
            description=cls.__doc__.strip(),
            inputs=[
                io.Vae.Input("vae", tooltip="Encodes the reference picture for the model: SVD-xt VAE."),
                io.Image.Input("image", tooltip="The reference picture every frame is made from (the first of the "
                               "batch)."),
                types.FaceConditioning.Input("face_conditioning", tooltip="The reference's look, from Face Encode (its "
                                             "CLIP token is used here)."),
                io.Image.Input("pose_images", tooltip="Set the animation's size and length: the skeleton images "
                               "(Render Skeleton); their size is the generation size and their count the number of "
                               "frames."),
                io.Int.Input("fps", default=7, min=1, max=60, tooltip="The frame rate the model is told it draws for; "
                             "keep 7 unless experimenting (the saved video's speed is Animation Decode's fps). "
                             "Frame-rate conditioning (official: 7; the model sees fps-1)."),
                io.Int.Input("motion_bucket_id", default=127, min=1, max=1023, tooltip="How much movement the model is "
                             "asked for: higher asks for more, lower for less. Motion amount conditioning (official: "
                             "127)."),
                io.Float.Input("noise_aug_strength", default=0.02, min=0.0, max=1.0, step=0.01,
                               tooltip="More noise makes the frames stick less closely to the reference picture; less "
                               "keeps them closer. Noise added to the reference before encoding, in [-1,1] units "
                               "(official: 0.02)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip="Changes the noise added to the "
                             "reference (noise_aug_strength), so the result changes slightly. Seed of that noise."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="What the animation should look like, for "
                                       "Animation Sampler: CLIP token, reference latent, fps/motion/augmentation."),
                io.Conditioning.Output(display_name="negative", tooltip="What guidance pushes away from, for Animation "
                                       "Sampler: all zeros, as the official unconditional pass."),
                io.Latent.Output(display_name="latent", tooltip="The empty video to fill, for Animation Sampler: an "
                                 "empty latent, one frame per pose image."),
            ],
        )

    @classmethod
    def rules(cls, values):
        poses = values.get("pose_images")
        if poses is None:
            return None
        problem = generation_size_problem(poses.shape[2], poses.shape[1])
        return f"pose_images: {problem}" if problem else None

    @classmethod
    def execute(cls, vae, image, face_conditioning, pose_images, fps, motion_bucket_id, noise_aug_strength,
                seed) -> io.NodeOutput:
        length, height, width = pose_images.shape[0], pose_images.shape[1], pose_images.shape[2]
        if (width, height) not in ((512, 512), (576, 1024)):
            logger.warning("StableAnimator was trained at 512x512 and 576x1024; %dx%d may look worse.", width, height)
        src_h, src_w = image.shape[1], image.shape[2]
        if abs(src_w * height - src_h * width) > 0.01 * src_h * width:
            note = (f"The reference ({src_w}x{src_h}) is stretched to {width}x{height}: put Fit Reference to Size before "
                    "it to crop or pad instead.")
            logger.warning("Animation Conditioning: %s", note)
            show_on_node(note)
        ref = _lanczos(image[0], width, height)[None]                                         # [1, H, W, 3] in [0, 1]
        noise = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed))
        # ComfyUI's VAE maps [0, 1] to [-1, 1]; half the noise here is the official amount in [-1, 1]
        latent = vae.encode(ref + noise * (noise_aug_strength / 2.0))
        clip = face_conditioning.clip_embeds
        adm = {"fps": fps, "motion_bucket_id": motion_bucket_id, "augmentation_level": noise_aug_strength}
        positive = [[clip, {"concat_latent_image": latent, **adm}]]
        negative = [[torch.zeros_like(clip), {"concat_latent_image": torch.zeros_like(latent), **adm}]]
        empty = torch.zeros([length, 4, height // 8, width // 8], device=mm.intermediate_device())
        return io.NodeOutput(positive, negative, {"samples": empty})


NODES = [ApplyStableAnimator, AnimationConditioning]
