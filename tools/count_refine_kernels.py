"""Count the operator calls and host syncs of one face-refinement iteration and one refined step.

Refinement is launch-bound, not compute-bound: every aten operator call is (at least) one GPU kernel
launch, and every host sync stalls the launch queue. This builds a FaceRefiner the way the Face Refine
Sampler does (``RefineSamplerFunction.build``: ``GradDecoder`` over a fresh SVD-xt VAE decoder, gradient
checkpointing, Load ArcFace's iresnet, ``reference_embedding``, ``frame_targets``), with the real-size
architectures and random weights, and counts on CPU with a ``TorchDispatchMode``:

* aten ops: every operator call that reaches the dispatcher below autograd (views included, so an
  upper bound of the kernels), split into decode forward, ArcFace forward, the rest of the forward
  (crop, loss), backward (with the checkpoint recomputation) and Adam;
* host syncs: reads of device data on the host (``item``/``float``/``tolist``/``.cpu()`` and the
  syncs hidden in ops: ``_local_scalar_dense``, ``_linalg_check_errors``, ``nonzero`` ...); reads of
  host-born tensors (Adam's CPU step counter) are not syncs and are left out;
* uploads: host -> device copies: non-scalar tensors made from Python data (``torch.tensor([...])``,
  list indexing) -- each a copy on a GPU -- and, when run with ``--device cuda``, real cross-device copies.

Counts are taken on a refined step after one no-grad pass (so whatever the refiner builds lazily is
built); the ops that first pass needed beyond a later one are reported as one-time setup. ``--refiner-module /tmp/face_refine_before.py --arcface-requires-grad`` measures an older
``models/face_refine.py`` with ArcFace's weights left trainable, as Load ArcFace built them before.
Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

FRAME_SYNC_METHODS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu")
HIDDEN_SYNC_OPS = ("_local_scalar_dense", "_linalg_check_errors", "nonzero", "masked_select", "unique",
                   "_unique2", "unique_consecutive", "equal", "repeat_interleave")
PHASES = ("decode", "arcface", "crop+loss", "backward", "adam")


# --- counting ------------------------------------------------------------------------------------

def _tensors(tree):
    import torch
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


class Tally:
    """Counts per (section, phase); ``section`` is set by the caller, ``phase`` from where the call is."""

    def __init__(self):
        self.ops, self.syncs, self.uploads = Counter(), Counter(), Counter()
        self.op_names = Counter()
        self.section: str | None = None     # None: not counted
        self.device = "cpu"                 # the device refinement runs on
        self.phase = "crop+loss"

    def where(self) -> tuple[str, str] | None:
        import torch

        if self.section is None:
            return None
        return self.section, "backward" if torch._C._current_autograd_node() is not None else self.phase

    @contextlib.contextmanager
    def in_phase(self, phase: str):
        outer, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = outer


def counting_modes(tally: Tally):
    """A dispatch mode (ops, hidden syncs, uploads) and a function mode (Python-level reads of device data)."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.weak import WeakIdKeyDictionary

    host_born = WeakIdKeyDictionary()       # tensors made from Python data on the host and what came of them
    reading = [False]                       # inside a Python-level read: its _local_scalar_dense is that read

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = func.__name__.split(".")[0]
            ins, outs = _tensors((args, kwargs)), _tensors(out)
            if name in ("lift_fresh", "lift_fresh_copy"):
                host = outs[0].device.type == "cpu"
                if host:
                    for t in outs:
                        host_born[t] = True
                at = tally.where()
                if at and outs[0].dim() > 0 and (not host or tally.device == "cpu"):
                    tally.uploads[at] += 1          # Python data onto the device (on CPU runs: would be)
            elif ins and all(t in host_born for t in ins):
                for t in outs:
                    host_born[t] = True
            at = tally.where()
            if at is None:
                return out
            tally.ops[at] += 1
            tally.op_names[at[0], name] += 1
            device_in = [t for t in ins if t not in host_born]
            if name in HIDDEN_SYNC_OPS and device_in and not (name == "_local_scalar_dense" and reading[0]):
                tally.syncs[at] += 1
            if name in ("_to_copy", "copy_") and ins and outs:
                src, dst = (ins[0], outs[0]) if name == "_to_copy" else (ins[1], ins[0])
                if src.device != dst.device:
                    (tally.syncs if dst.device.type == "cpu" else tally.uploads)[at] += 1
            return out

    class Reads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name not in FRAME_SYNC_METHODS or not args or not isinstance(args[0], torch.Tensor):
                return func(*args, **kwargs)
            at = tally.where()
            if at and args[0] not in host_born and (tally.device == "cpu" or args[0].device.type != "cpu"):
                tally.syncs[at] += 1
            reading[0] = True
            try:
                return func(*args, **kwargs)
            finally:
                reading[0] = False

    return Ops(), Reads()


# --- the refiner, as the node builds it -----------------------------------------------------------

class VAEWeights:
    """What ``GradDecoder`` reads of a ComfyUI VAE: its state dict."""

    def __init__(self, sd):
        self.sd = sd

    def get_sd(self):
        return self.sd


def random_svd_xt_vae(seed: int) -> VAEWeights:
    """SVD-xt's VAE decoder tensors (the shapes of the test checkpoint), random weights."""
    import torch
    from ida_factory import _meta_shapes_svd_xt, randomize_

    prefix = "first_stage_model."
    sd = {k[len(prefix):]: torch.empty(s) for k, s in _meta_shapes_svd_xt().items() if k.startswith(prefix + "decoder.")}
    return VAEWeights(randomize_(sd, seed))


def random_iresnet100(seed: int):
    """glintr100's tensor shapes (the official checkpoint's key manifest), random weights, through the
    loader's ``IResNet.from_state_dict``."""
    import torch
    from ida_factory import randomize_
    from identity_animator.models.iresnet import IResNet

    shapes = json.loads((ROOT / "tests" / "data" / "official_checkpoint_keys.json").read_text())["Animation/glintr100_torch.pth"]
    sd = {k: torch.tensor(0) if k.endswith("num_batches_tracked") else torch.empty(s) for k, s in shapes.items()}
    randomize_(sd, seed)
    for k in sd:
        if k.endswith("prelu.weight"):
            sd[k].fill_(0.25)
    return IResNet.from_state_dict(sd, source="random iresnet100")


def load_refine_module(path: str | None):
    if path is None:
        import identity_animator.models.face_refine as mod

        return mod
    spec = importlib.util.spec_from_file_location("face_refine_measured", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def face_points(fr, k: int, face: int, size: int):
    """Five landmarks of a ~``face``-pixel face near the frame centre, drifting and turning a little per frame."""
    import math

    import torch

    a = math.radians(4.0 * k)
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
    dst = torch.tensor(fr.ARCFACE_DST, dtype=torch.float64) - fr.ARCFACE_SIZE / 2
    centre = torch.tensor([size / 2 + 5.0 * k - 10.0, size / 2 + 3.0 * k - 6.0], dtype=torch.float64)
    return (dst @ rot.T * (face / fr.ARCFACE_SIZE) * (1.0 + 0.03 * k) + centre).numpy()


def build_refiner(fr, vae, net, args, chunk: int, device):
    """``RefineSamplerFunction.build``, minus ComfyUI's model object: targets by ``frame_targets``,
    reference by ``reference_target`` / ``reference_embedding``, the gradient decoder, the refiner."""
    import torch

    import comfy.latent_formats
    import comfy.model_management as mm
    from identity_animator.nodes.refine import GradDecoder

    g = torch.Generator().manual_seed(args.seed)
    size, face = args.size, args.face
    ref_points = face_points(fr, 0, face, size)
    ref_box = (size / 2 - face / 2 - 10, size / 2 - face / 2 - 10, size / 2 + face / 2 - 10, size / 2 + face / 2 - 6)
    reference = torch.rand(size, size, 3, generator=g)
    ref_target = fr.reference_target(ref_box, ref_points, args.framing, size, size)
    boxes = [tuple(int(v) for v in (x1 - 4, y1 - 4, x2 + 4, y2 + 4))
             for x1, y1, x2, y2 in (fr.carried_box(ref_box, ref_points, face_points(fr, k, face, size))
                                    for k in range(args.frames))]
    landmarks = [face_points(fr, k, face, size) for k in range(args.frames)]
    targets = fr.frame_targets(boxes, landmarks, args.framing, ref_box, ref_points, size, size)
    decoder = GradDecoder(vae, comfy.latent_formats.SD15().process_out, device, torch.float32)
    with torch.inference_mode(False):
        arcface = net.to(device)
        ref = fr.reference_embedding(arcface, reference.to(device), ref_target)
    return fr.FaceRefiner(decoder, arcface, ref, targets, fr.RefineSchedule(0, 20, args.iterations, 0.1),
                          margin=32, chunk=chunk, crop=True, check_cancel=mm.throw_exception_if_processing_interrupted)


# --- measuring ------------------------------------------------------------------------------------

def instrument(refiner, tally: Tally) -> list:
    """Phase labels on the refiner's parts; returns the hook handles to remove."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    decode, arcface = refiner.decode, refiner.arcface

    def labelled_decode(z):
        with tally.in_phase("decode"):
            return decode(z)

    class LabelledArcFace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = arcface

        def forward(self, x):
            with tally.in_phase("arcface"):
                return self.net(x)

    iteration = [0]
    loss_and_grad, loss = refiner.loss_and_grad, refiner.loss

    def counted_loss_and_grad(z):
        if tally.section is not None and tally.section != "warm-up":
            iteration[0] += 1
            tally.section = f"iteration {iteration[0]}"
        return loss_and_grad(z)

    def counted_loss(z):
        if tally.section is not None and tally.section != "warm-up":
            tally.section = "after"
        return loss(z)

    refiner.decode, refiner.arcface = labelled_decode, LabelledArcFace()
    refiner.loss_and_grad, refiner.loss = counted_loss_and_grad, counted_loss
    adam = []
    pre = register_optimizer_step_pre_hook(lambda opt, a, k: adam.append(tally.in_phase("adam")) or adam[-1].__enter__())
    post = register_optimizer_step_post_hook(lambda opt, a, k: adam.pop().__exit__(None, None, None))
    return [pre, post]


def measure(fr, vae, net, args, chunk: int, device) -> dict:
    import torch

    tally = Tally()
    tally.device = device.type
    ops, reads = counting_modes(tally)
    g = torch.Generator().manual_seed(args.seed + 1)
    lat = args.size // 8
    x0 = torch.randn(args.frames, 4, lat, lat, generator=g).to(device)
    with ops, reads:
        refiner = build_refiner(fr, vae, net, args, chunk, device)
        handles = instrument(refiner, tally)
        try:
            # whatever the refiner builds lazily on first use is built here, once, and counted apart
            tally.section = "warm-up"
            with torch.inference_mode(False):
                refiner.loss(x0.clone())
            with torch.inference_mode():          # as ComfyUI samples
                tally.section = "head"
                t = time.perf_counter()
                refiner(x0, 0, 25)
                seconds = time.perf_counter() - t
                tally.section = None
        finally:
            for h in handles:
                h.remove()
    last = f"iteration {args.iterations}"

    def per(counter, section=None):
        return sum(v for (s, _), v in counter.items() if (s != "warm-up" if section is None else s == section))

    return dict(chunk=chunk, chunks=len(refiner.chunks()), frames=len(refiner.frames()),
                setup_ops=per(tally.ops, "warm-up") - per(tally.ops, "after"),
                iteration={p: tally.ops[last, p] for p in PHASES}, iteration_ops=per(tally.ops, last),
                iteration_syncs=per(tally.syncs, last), iteration_uploads=per(tally.uploads, last),
                step_ops=per(tally.ops), step_syncs=per(tally.syncs), step_uploads=per(tally.uploads),
                top=Counter({n: v for (s, n), v in tally.op_names.items() if s == last}).most_common(args.top),
                seconds=seconds)


def table(rows, label: str, steps: int) -> str:
    head = ("| version | chunk (chunks) | aten ops / iteration | decode fwd | ArcFace fwd | crop+loss | backward | Adam "
            "| host syncs / iteration | uploads / iteration | aten ops / step | host syncs / step | uploads / step "
            f"| aten ops / {steps} steps |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        it = r["iteration"]
        lines.append(f"| {label} | {r['chunk']} ({r['chunks']}) | {r['iteration_ops']} | {it['decode']} | {it['arcface']} "
                     f"| {it['crop+loss']} | {it['backward']} | {it['adam']} | {r['iteration_syncs']} "
                     f"| {r['iteration_uploads']} | {r['step_ops']} | {r['step_syncs']} | {r['step_uploads']} "
                     f"| {r['step_ops'] * steps} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="frame side in pixels")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--face", type=int, default=64, help="face size in pixels")
    ap.add_argument("--chunk", type=int, nargs="+", default=[4, 0], help="frames per chunk; 0 = all frames")
    ap.add_argument("--framing", choices=("arcface", "official"), default="arcface")
    ap.add_argument("--iterations", type=int, default=3, help="Adam iterations per refined step")
    ap.add_argument("--steps", type=int, default=21, help="refined steps per video (official: 21 of 25)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="current")
    ap.add_argument("--refiner-module", help="measure this face_refine.py instead of the pack's")
    ap.add_argument("--arcface-requires-grad", action="store_true",
                    help="leave ArcFace's weights trainable (Load ArcFace before it froze them)")
    ap.add_argument("--top", type=int, default=0, help="also list the N most frequent ops of an iteration")
    args = ap.parse_args(argv)

    import conftest  # noqa: F401  (pack alias and ComfyUI on the path)
    import torch

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    fr = load_refine_module(args.refiner_module)
    vae = random_svd_xt_vae(args.seed + 7)
    net = random_iresnet100(args.seed + 3)
    if args.arcface_requires_grad:
        net.requires_grad_(True)
    rows = []
    for chunk in args.chunk:
        r = measure(fr, vae, net, args, chunk or args.frames, device)
        print(f"chunk {r['chunk']}: refined step {r['seconds']:.1f} s", file=sys.stderr)
        rows.append(r)
    print(f"{args.frames} frames of {args.size}x{args.size}, ~{args.face} px faces ({args.framing} framing), "
          f"{args.iterations} Adam iterations per refined step, random SVD-xt VAE decoder (fp32, checkpointed "
          f"crop decode, margin 32) and random iresnet100 on {args.device}"
          f"{'; ArcFace weights trainable' if args.arcface_requires_grad else ''}\n")
    print(table(rows, args.label, args.steps))
    print("\nOne-time setup on first use (ops of the first no-grad pass beyond a later one): "
          + ", ".join(f"chunk {r['chunk']}: {r['setup_ops']}" for r in rows))
    for r in rows:
        if r["top"]:
            print(f"\nchunk {r['chunk']}, most frequent ops of an iteration: "
                  + ", ".join(f"{n} {v}" for n, v in r["top"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
