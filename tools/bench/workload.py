"""One benchmark configuration, in this process: the pack's Animation Sampler (through its nodes, on
ComfyUI's model management) and the official pipeline re-stated on diffusers (tests/ida_official.py),
on the same random weights, timed, with peak memory and FLOPs.

Real sizes on a CUDA GPU: random weights in the official layouts (``official_checkpoint_keys.json``:
the StableAnimator UNet with its ID adapter, PoseNet, iresnet100; the SVD-xt VAE from ComfyUI's own
modules), drawn on the GPU. ``tiny``: the test factory's tiny UNet, PoseNet, ArcFace and temporal
decoder, on the CPU, so the whole path runs in CI (it proves the path, it measures nothing real).
"""
from __future__ import annotations

import gc
import json
import math
import resource
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

STEPS_OFFICIAL_END = 20 / 25      # refinement on steps 0..20 of 25 (command_op_infer.sh)
ADM = {"fps": 7, "motion_bucket_id": 127, "augmentation_level": 0.02}
CFG = 3.0
OFFICIAL_WINDOW = 16              # inference_op.py's tile size


@dataclass
class Spec:
    """What one run measures; the levers default to the pack's defaults."""
    name: str
    frames: int
    width: int
    height: int
    refine: bool
    baseline: bool = True
    steps: int = 25
    dtype: str = "fp16"           # the UNet's weights and compute: fp16 | bf16
    compile: bool = False         # torch.compile of the UNet (the compile's time is reported apart)
    channels_last: bool = False
    chunk: int = 4                # frames decoded together by refinement
    iterations: int = 3           # Adam steps per refined step
    baseline_refine_steps: int = 2  # official HJB: refined steps timed, the rest extrapolated
    tiny: bool = False


@dataclass
class Part:
    """The measurement of one pipeline (the pack's or the baseline's)."""
    status: str = "ok"
    seconds: float | None = None
    warmup_seconds: float | None = None
    peak_gib: float | None = None
    tflop: float | None = None
    refine_seconds: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # process RSS, KiB on Linux


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def _timed(device, out: dict, key: str):
    _sync(device)
    t = time.perf_counter()
    yield
    _sync(device)
    out[key] = time.perf_counter() - t


def count_tflop(fn) -> float:
    """TFLOP of ``fn()``, counted by torch's FLOP counter (matrix products, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e12


# ---------------------------------------------------------------------------------------- weights

def official_shapes(keys_path: Path, name: str) -> dict:
    return {k: tuple(s) for k, s in json.loads(keys_path.read_text())[name].items()}


def random_state_dict(shapes: dict, device, dtype, seed: int) -> dict:
    from ida_factory import randomize_

    sd = {k: torch.empty(s, device=device, dtype=torch.long if k.endswith("num_batches_tracked") else dtype)
          for k, s in shapes.items()}
    for k, v in sd.items():
        if not v.is_floating_point():
            v.zero_()
    return randomize_(sd, seed)


def unet_weights(spec: Spec, keys: Path, device) -> dict:
    """The official ``unet.pth`` tensors (diffusers layout + ID adapter), random; the same for both pipelines."""
    if spec.tiny:
        from ida_factory import tiny_unet_state_dict

        return tiny_unet_state_dict()
    return random_state_dict(official_shapes(keys, "Animation/unet.pth"), device, UNET_DTYPES[spec.dtype], 0)


def pose_weights(spec: Spec, keys: Path, device) -> dict:
    if spec.tiny:
        from ida_factory import tiny_pose_net_state_dict

        return tiny_pose_net_state_dict()
    return random_state_dict(official_shapes(keys, "Animation/pose_net.pth"), device, torch.float32, 1)


def arcface_net(spec: Spec, keys: Path, device):
    """iresnet100 (tiny: the factory's), drawn on the CPU so both pipelines get the same values."""
    from identity_animator.models.iresnet import IResNet

    if spec.tiny:
        from ida_factory import tiny_iresnet_state_dict

        sd = tiny_iresnet_state_dict()
    else:
        sd = random_state_dict(official_shapes(keys, "Animation/glintr100_torch.pth"), "cpu", torch.float32, 3)
    return IResNet.from_state_dict(sd).to(device).requires_grad_(False)


def vae_state_dict() -> dict:
    """SVD-xt's VAE (encoder and temporal decoder), random, ComfyUI's key layout; drawn on the CPU so
    both pipelines get the same values."""
    from ida_factory import _meta_shapes_svd_xt

    prefix = "first_stage_model."
    shapes = {k[len(prefix):]: tuple(v) for k, v in _meta_shapes_svd_xt().items() if k.startswith(prefix)}
    return random_state_dict(shapes, "cpu", torch.float32, 7)


def pack_vae(spec: Spec):
    """ComfyUI's VAE of SVD-xt; ``tiny``: a tiny temporal decoder (ComfyUI's VAE class fixes SVD's size,
    and refinement reads only the decoder's weights)."""
    if spec.tiny:
        from ida_factory import DecoderOnlyVAE, tiny_video_decoder_state_dict

        return DecoderOnlyVAE(tiny_video_decoder_state_dict())
    import comfy.sd

    return comfy.sd.VAE(sd=vae_state_dict())


def baseline_decoder_weights(spec: Spec) -> dict:
    """The same decoder weights as :func:`pack_vae`'s, keys relative to ``decoder.``."""
    if spec.tiny:
        from ida_factory import tiny_video_decoder_state_dict

        return tiny_video_decoder_state_dict()
    return {k[len("decoder."):]: v for k, v in vae_state_dict().items() if k.startswith("decoder.")}


UNET_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


# ---------------------------------------------------------------------------------------- inputs

@dataclass
class Inputs:
    clip: torch.Tensor          # [1, 1, 1024]
    face: torch.Tensor          # [1, 4, 1024]
    poses: torch.Tensor         # [F, H, W, 3] in [0, 1]
    ref_latent: torch.Tensor    # [1, 4, h, w]
    boxes: list                 # per-frame face boxes in pixels
    points: list                # per-frame five face points [5, 2]
    reference: torch.Tensor     # [1, H, W, 3]


def five_points(box) -> torch.Tensor:
    """Eyes, nose, mouth corners placed in a box as on a frontal face."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    rel = [(0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8)]
    return torch.tensor([[x1 + a * w, y1 + b * h] for a, b in rel])


def make_inputs(spec: Spec) -> Inputs:
    g = torch.Generator().manual_seed(0)
    h, w = spec.height, spec.width
    fh, fw = max(16, h // 8), max(16, w // 8)     # a face about an eighth of the frame, as in full-body shots
    boxes = []
    for k in range(spec.frames):   # the face drifts a little, as a dancer's does
        x1 = w // 2 - fw // 2 + int(4 * math.sin(k / 3))
        y1 = h // 6 + int(2 * math.cos(k / 4))
        boxes.append((x1, y1, x1 + fw, y1 + fh))
    return Inputs(torch.randn(1, 1, 1024, generator=g), torch.randn(1, 4, 1024, generator=g),
                  torch.rand(spec.frames, h, w, 3, generator=g), torch.randn(1, 4, h // 8, w // 8, generator=g),
                  boxes, [five_points(b) for b in boxes], torch.rand(1, h, w, 3, generator=g))


# ---------------------------------------------------------------------------------------- the pack

class PackRun:
    """The pack's nodes as a workflow wires them: Apply StableAnimator, Face Refine Sampler, Animation Sampler."""

    def __init__(self, spec: Spec, keys: Path, device):
        import comfy.model_management as mm
        import comfy.model_patcher

        from identity_animator.models.face import FaceConditioning, FaceLandmarks, FaceResult
        from identity_animator.models.id_adapter import IDAdapterWeights
        from identity_animator.models.pose_net import PoseNet
        from identity_animator.models.unet_convert import convert_stableanimator_unet
        from identity_animator.nodes.animation import ApplyStableAnimator
        from identity_animator.nodes.svd_model import build_svd_model

        self.spec, self.device = spec, device
        self.inputs = x = make_inputs(spec)
        conv = convert_stableanimator_unet(unet_weights(spec, keys, device))
        model = build_svd_model(conv.unet, "fp32" if spec.tiny else spec.dtype, "benchmark")
        del conv.unet
        id_adapter = IDAdapterWeights.from_converted(conv.id_adapter).to(torch.float32 if spec.tiny else UNET_DTYPES[spec.dtype])
        pose = comfy.model_patcher.ModelPatcher(PoseNet.from_state_dict(pose_weights(spec, keys, device)),
                                                mm.get_torch_device(), mm.unet_offload_device())
        face = FaceConditioning(x.clip, x.face)
        (self.model,) = ApplyStableAnimator.execute(model, id_adapter, face, pose, x.poses, 1.0, 1.0, 0.0, 1.0).result
        if spec.compile:
            self.model.add_object_patch("diffusion_model", torch.compile(self.model.get_model_object("diffusion_model")))
        self.positive = [[x.clip, {"concat_latent_image": x.ref_latent, **ADM}]]
        self.negative = [[torch.zeros_like(x.clip), {"concat_latent_image": torch.zeros_like(x.ref_latent), **ADM}]]
        self.refine_args = None
        if spec.refine:
            vae = pack_vae(spec)
            masks = torch.zeros(spec.frames, spec.height, spec.width)
            for k, (x1, y1, x2, y2) in enumerate(x.boxes):
                masks[k, y1:y2, x1:x2] = 1
            ref_box = x.boxes[0]
            ref_face = FaceResult(torch.zeros(512).numpy(), torch.tensor(ref_box, dtype=torch.float32).numpy(),
                                  five_points(ref_box).numpy(), 1.0, None, spec.width, spec.height)
            marks = FaceLandmarks(tuple(p.numpy() for p in x.points), spec.width, spec.height)
            self.refine_args = (vae, arcface_net(spec, keys, "cpu"), x.reference, ref_face, masks, marks)

    def sampler(self, steps: int):
        from identity_animator.nodes.refine import FaceRefineSampler

        if self.refine_args is None:
            return None
        vae, arc, ref, face, masks, marks = self.refine_args
        end = refined_steps(steps) - 1
        (sampler,) = FaceRefineSampler.execute(vae, arc, ref, face, masks, True, "euler", 0, end, self.spec.iterations,
                                               0.1, 32, True, self.spec.chunk, 0.0, 0.0, 1000.0, 1.0,
                                               face_landmarks=marks).result
        return sampler

    def __call__(self, steps: int):
        from identity_animator.nodes.sampling import AnimationSampler

        latent = {"samples": torch.zeros(self.spec.frames, 4, self.spec.height // 8, self.spec.width // 8)}
        (out,) = AnimationSampler.execute(self.model, self.positive, self.negative, latent, 1, steps, CFG, CFG,
                                          "official", 16, 4, False, False, self.sampler(steps)).result
        return out["samples"]

    def to_channels_last(self):
        import comfy.model_management as mm

        mm.load_models_gpu([self.model])
        channels_last_(self.model.model.diffusion_model)


def channels_last_(module: torch.nn.Module) -> None:
    """The 4-D (2-D convolution) weights in channels-last layout, in place. ``Module.to(memory_format=)``
    refuses the whole model because the SVD UNet also holds 5-D temporal convolution weights."""
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() == 4:
                param.data = param.data.contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------- the baseline

class BaselineRun:
    """The official pipeline on diffusers: fp16 (or the spec's dtype) UNet with SDPA attention, batch-1
    uncond/cond passes, 16/4 windows; with refinement, the official HJB loop in fp32 (full-frame decode
    through diffusers' temporal decoder with gradient checkpointing)."""

    def __init__(self, spec: Spec, keys: Path, device):
        from ida_official import official_posenet, official_unet

        self.spec, self.device = spec, device
        self.inputs = make_inputs(spec)
        dtype = torch.float32 if spec.tiny else UNET_DTYPES[spec.dtype]
        config = None
        if spec.tiny:
            from ida_factory import TINY_UNET

            config = TINY_UNET
        self.unet = official_unet(unet_weights(spec, keys, device), config, device, dtype)
        if spec.channels_last:
            channels_last_(self.unet)
        self.posenet = official_posenet(pose_weights(spec, keys, device), device, dtype)
        self.hjb = None
        if spec.refine:
            from ida_official_vae import diffusers_temporal_vae

            vae = diffusers_temporal_vae(baseline_decoder_weights(spec)).to(device, torch.float32).requires_grad_(False)
            vae.enable_gradient_checkpointing()   # as refined_vae.py has it for HJB backprop
            self.vae = vae
            arc = arcface_net(spec, keys, device)
            x1, y1, x2, y2 = self.inputs.boxes[0]
            ref = self.inputs.reference[0, y1:y2, x1:x2].movedim(-1, 0)[None].to(device) * 2 - 1
            with torch.no_grad():
                self.ref_emb = arc(torch.nn.functional.interpolate(ref, size=(112, 112), mode="bilinear", align_corners=False))
            self.arcface = arc

    def refiner(self, steps: int, max_steps):
        from ida_official import OfficialHJB

        if not self.spec.refine:
            return None
        end = refined_steps(steps) - 1
        decode = lambda z, n: self.vae.decode(z, num_frames=n).sample
        return OfficialHJB(decode, self.arcface, self.ref_emb, self.inputs.boxes, start=0, end=end,
                           iterations=self.spec.iterations, chunk=4, max_steps=max_steps)

    def __call__(self, steps: int, max_refine_steps=None):
        from ida_official import official_sample

        from identity_animator.nodes.sampling import PeriodicNoise, official_sigmas

        x, dev = self.inputs, self.device
        latent = {"samples": torch.zeros(self.spec.frames, 4, self.spec.height // 8, self.spec.width // 8)}
        noise = PeriodicNoise(1, 16).generate_noise(latent).to(dev)
        self.last_refiner = self.refiner(steps, max_refine_steps)
        return official_sample(self.unet, self.posenet, x.poses, x.clip, x.face, x.ref_latent * 0.18215, noise,
                               official_sigmas(steps).tolist(), min_cfg=CFG, max_cfg=CFG, fps=ADM["fps"],
                               motion=ADM["motion_bucket_id"], aug=ADM["augmentation_level"], refine=self.last_refiner)


# ---------------------------------------------------------------------------------------- measuring

def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def refined_steps(steps: int) -> int:
    """How many steps the official schedule refines: 0..20 of 25 (21), all of a short run."""
    return min(steps - 1, round(steps * STEPS_OFFICIAL_END)) + 1


def _record_failure(part: Part, err: BaseException) -> None:
    """The status line for the table, and the traceback's end for whoever reads results.json later."""
    part.status = "out of memory" if _is_oom(err) else f"failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
    if not _is_oom(err):
        part.extra["traceback"] = traceback.format_exception(err)[-12:]


def measure_pack(spec: Spec, keys: Path, device) -> Part:
    part = Part()
    try:
        run = PackRun(spec, keys, device)
        if spec.channels_last:
            run.to_channels_last()
        t = {}
        with _timed(device, t, "warm"):
            run(1)                         # loads the models on the device, autotunes; compiles with --compile
        _reset_peak(device)
        with _timed(device, t, "run"):
            run(spec.steps)
        part.seconds, part.warmup_seconds, part.peak_gib = t["run"], t["warm"], _peak_gib(device)
        if not spec.compile:               # the counter cannot see inside a compiled graph
            per_step = count_tflop(lambda: _no_refine(run, 1))
            total = spec.steps * per_step
            if spec.refine:
                total += refined_steps(spec.steps) * (count_tflop(lambda: run(1)) - per_step)
            part.tflop = total
    except Exception as err:   # one configuration's failure is recorded, the rest still run
        _record_failure(part, err)
    finally:
        _free(device)
    return part


def _no_refine(run: PackRun, steps: int):
    saved, run.refine_args = run.refine_args, None
    try:
        return run(steps)
    finally:
        run.refine_args = saved


def measure_baseline(spec: Spec, keys: Path, device) -> Part:
    part = Part()
    if not spec.baseline:
        part.status = "not run"
        return part
    if spec.frames < OFFICIAL_WINDOW:
        # inference_op.py's window list is empty below one window: the official code cannot run it
        part.status = f"not run: the official pipeline needs at least {OFFICIAL_WINDOW} frames"
        return part
    try:
        run = BaselineRun(spec, keys, device)
        t = {}
        with _timed(device, t, "warm"):
            run(1, max_refine_steps=1)
        _reset_peak(device)
        with _timed(device, t, "run"):
            run(spec.steps, max_refine_steps=spec.baseline_refine_steps if spec.refine else None)
        part.warmup_seconds, part.peak_gib = t["warm"], _peak_gib(device)
        total = t["run"]
        if spec.refine:
            measured = run.last_refiner.seconds
            per_step = sum(measured) / len(measured)
            part.refine_seconds = per_step * refined_steps(spec.steps)
            total = total - sum(measured) + part.refine_seconds
            part.note = (f"refinement timed on {len(measured)} of {refined_steps(spec.steps)} refined steps "
                         f"({per_step:.2f} s each), the rest extrapolated")
        part.seconds = total
        spec_refine, spec.refine = spec.refine, False
        per_step = count_tflop(lambda: run(1))
        spec.refine = spec_refine
        tflop = spec.steps * per_step
        if spec.refine:
            tflop += refined_steps(spec.steps) * (count_tflop(lambda: run(1, max_refine_steps=1)) - per_step)
        part.tflop = tflop
    except Exception as err:
        _record_failure(part, err)
        if part.status == "out of memory":
            part.peak_gib = _peak_gib(device)
    finally:
        _free(device)
    return part


def measure(spec: Spec, keys: Path) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not spec.tiny else "cpu")
    pack = measure_pack(spec, keys, device)
    baseline = measure_baseline(spec, keys, device)
    return {"spec": asdict(spec), "pack": asdict(pack), "baseline": asdict(baseline)}
