"""Compare generated videos with their ground truth: L1, PSNR, SSIM, LPIPS per video and FVD over the set,
the reconstruction metrics of the StableAnimator supplement (DisCo's TikTok protocol; docs/evaluation.md).

  python tools/evaluate.py GENERATED GROUND_TRUTH --out report        # writes report.md and report.json
  make eval ARGS="out/dance.mp4 data/dance.mp4 --out report"

GENERATED and GROUND_TRUTH are each a video file (anything PyAV reads: .mp4, .gif, .webm, ...), a folder
of frames (.png/.jpg, in name order), or a folder of such videos and frame folders, matched by name.

PSNR and SSIM come from torchmetrics, LPIPS from torchmetrics' LPIPS network; L1 and the Fréchet
distance behind FVD are computed here (models/evaluate.py). LPIPS and FVD need pretrained weights that
are never downloaded: they are looked for in ComfyUI/models/evaluation (or --weights DIR) and, when
absent, the metric is reported as not computed (the command still succeeds unless --require names it).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pack_import import pack_module  # noqa: E402

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("evaluate")

METRICS = ("l1", "psnr", "ssim", "lpips", "fvd")
WEIGHTS_FOLDER = "evaluation"         # under ComfyUI/models
# torchvision's own file names for the ImageNet backbones LPIPS measures with (what torchvision would
# fetch into its hub cache; here only ever read from a local folder)
LPIPS_BACKBONES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth",
                   "squeeze": "squeezenet1_1-b8a52dc0.pth"}
I3D_FILE = "i3d_pretrained_400.pt"    # the Kinetics-400 Inception-I3D state dict DisCo's FVD loads
VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".mov", ".mkv", ".avi", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LPIPS_BATCH = 8
I3D_BATCH = 8
CHUNK = 32                            # frames on the device at a time


class EvaluationError(RuntimeError):
    """Inputs that cannot be compared; the message says what to change."""


class MissingWeights(RuntimeError):
    """A metric's pretrained weights are not on this machine; the message is what the report shows."""


def _models():
    return pack_module("models.evaluate")


def _checkpoint():
    return pack_module("models.checkpoint")


# --- reading videos -------------------------------------------------------------------------------

def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and bool(frame_files(path))


def read_frames(path: Path, max_frames: int = 0) -> tuple[np.ndarray, list[str]]:
    """``[T, H, W, 3]`` uint8 RGB and one name per frame (file stems for a folder, indices for a video)."""
    if path.is_dir():
        from PIL import Image

        files = frame_files(path)[:max_frames or None]
        frames = []
        for f in files:
            with Image.open(f) as im:
                frames.append(np.asarray(im.convert("RGB")))
        sizes = {fr.shape for fr in frames}
        if len(sizes) > 1:
            raise EvaluationError(f"The frames in {path} are not all one size ({sorted(sizes)[:3]}); "
                                  "export them at one resolution.")
        return np.stack(frames), [f.stem for f in files]
    import av

    frames = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, IndexError) as exc:
        raise EvaluationError(f"Could not read {path} as a video ({exc}). Use a video file PyAV can decode "
                              "or a folder of PNG frames.") from exc
    if not frames:
        raise EvaluationError(f"{path} has no video frames.")
    return np.stack(frames), [str(i) for i in range(len(frames))]


def _entries(folder: Path) -> dict[str, Path]:
    """Name -> video file or frame folder inside a folder of videos."""
    out = {}
    for p in sorted(folder.iterdir()):
        if is_video(p) or is_frame_folder(p):
            out.setdefault(p.stem if p.is_file() else p.name, p)
    return out


def pair_inputs(generated: Path, ground_truth: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(name, generated, ground truth) pairs and notes on anything left unmatched."""
    for p, what in ((generated, "GENERATED"), (ground_truth, "GROUND_TRUTH")):
        if not p.exists():
            raise EvaluationError(f"{what} {p} does not exist.")
    single = [is_video(p) or is_frame_folder(p) for p in (generated, ground_truth)]
    if all(single):
        return [(generated.stem if generated.is_file() else generated.name, generated, ground_truth)], []
    if any(single) or not (generated.is_dir() and ground_truth.is_dir()):
        raise EvaluationError(
            f"Cannot pair {generated} with {ground_truth}: give two videos (or two folders of frames), or two "
            "folders holding videos / frame folders with the same names.")
    gen, gt = _entries(generated), _entries(ground_truth)
    names = sorted(set(gen) & set(gt))
    notes = []
    for side, only in (("generated", sorted(set(gen) - set(gt))), ("ground truth", sorted(set(gt) - set(gen)))):
        if only:
            notes.append(f"{len(only)} {side} video(s) without a partner, skipped: {', '.join(only[:10])}")
    if not names:
        raise EvaluationError(f"No video in {generated} has a partner of the same name in {ground_truth} "
                              f"(generated: {', '.join(sorted(gen)[:5]) or 'none'}; ground truth: "
                              f"{', '.join(sorted(gt)[:5]) or 'none'}).")
    return [(n, gen[n], gt[n]) for n in names], notes


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if frames.shape[2] == size[0] and frames.shape[1] == size[1]:
        return frames
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames])


def load_pair(gen_path: Path, gt_path: Path, size, max_frames: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Both videos as uint8 arrays of one length and size, and notes on what was adjusted."""
    gen, gen_names = read_frames(gen_path, max_frames)
    gt, gt_names = read_frames(gt_path, max_frames)
    notes = []
    if gen_path.is_dir() and gt_path.is_dir() and set(gen_names) & set(gt_names):
        common = [n for n in gt_names if n in set(gen_names)]     # frames matched by file name
        if len(common) < max(len(gen_names), len(gt_names)):
            notes.append(f"{len(common)} frames have the same name on both sides; only those are compared")
        gi, ti = {n: i for i, n in enumerate(gen_names)}, {n: i for i, n in enumerate(gt_names)}
        gen, gt = gen[[gi[n] for n in common]], gt[[ti[n] for n in common]]
    elif len(gen) != len(gt):
        notes.append(f"{len(gen)} generated vs {len(gt)} ground-truth frames; the first {min(len(gen), len(gt))} "
                     "are compared")
        n = min(len(gen), len(gt))
        gen, gt = gen[:n], gt[:n]
    if size:
        gen, gt = _resize(gen, size), _resize(gt, size)
    elif gen.shape[1:3] != gt.shape[1:3]:
        # as DisCo's evaluation does: the generated frame is resized to the ground truth's size
        notes.append(f"generated frames {gen.shape[2]}x{gen.shape[1]} resized to the ground truth's "
                     f"{gt.shape[2]}x{gt.shape[1]}")
        gen = _resize(gen, (gt.shape[2], gt.shape[1]))
    return gen, gt, notes


# --- weights --------------------------------------------------------------------------------------

def weight_folders(args) -> list[Path]:
    folders = [Path(args.weights)] if args.weights else []
    return folders + [Path(args.comfyui) / "models" / WEIGHTS_FOLDER]


def find_weights(name: str, folders: list[Path]) -> Path:
    """The file ``name`` (or its ``.safetensors`` twin) in the first folder that has it."""
    stem = Path(name).stem
    for folder in folders:
        for candidate in (folder / f"{stem}.safetensors", folder / name):
            if candidate.is_file():
                return candidate
    raise MissingWeights(f"not computed: {name} not found in {' or '.join(str(f) for f in folders)}")


def load_lpips(net: str, folders: list[Path], device: torch.device):
    """torchmetrics' LPIPS network with its ImageNet backbone read from a local file.

    torchmetrics would build the backbone through torchvision, which downloads the weights (and
    unpickles them without ``weights_only``). Here the network is built with a random backbone, no file
    read, then the backbone comes from ``LPIPS_BACKBONES[net]`` in ``folders`` and the learnt linear
    layers from the copy torchmetrics ships; both are read as plain tensors only."""
    from torchmetrics.functional.image import lpips as tm_lpips

    path = find_weights(LPIPS_BACKBONES[net], folders)
    ckpt = _checkpoint()
    backbone = ckpt.load_state_dict(str(path))
    lin_file = Path(tm_lpips.__file__).parent / "lpips_models" / f"{net}.pth"
    lins = torch.load(lin_file, map_location="cpu", weights_only=True)
    model = tm_lpips._NoTrainLpips(net=net, pretrained=False, pnet_rand=True)
    wanted, missing = {}, []
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "net":          # net.slice1.0.weight / net.slices.1.3.squeeze.weight -> features.<i>....
            rest = parts[3:] if parts[1] == "slices" else parts[2:]
            source, src_key = backbone, ".".join(["features", *rest])
        else:                          # lin0.model.1.weight, and lins.0.model.1.weight (the same layer)
            source, src_key = lins, key if parts[0] != "lins" else ".".join([f"lin{parts[1]}", *parts[2:]])
        if src_key not in source or tuple(source[src_key].shape) != tuple(value.shape):
            missing.append(src_key)
            continue
        wanted[key] = source[src_key].float()
    if missing:
        raise ckpt.CheckpointError(
            f"{path} is not torchvision's {net} ImageNet backbone (or {lin_file} is damaged): {len(missing)} "
            f"tensors missing or of another shape, e.g. {', '.join(missing[:4])}. Use {LPIPS_BACKBONES[net]}.")
    model.load_state_dict(wanted, strict=True)
    logger.info("LPIPS (%s): backbone %s, linear layers %s", net, path, lin_file)
    return model.eval().to(device)


def load_i3d(folders: list[Path], device: torch.device):
    path = find_weights(I3D_FILE, folders)
    sd = _checkpoint().load_state_dict(str(path))       # weights only: a file that needs code is refused
    logger.info("I3D from %s", path)
    return _models().InceptionI3D.from_state_dict(sd, source=str(path)).to(device)


# --- metrics --------------------------------------------------------------------------------------

@dataclass
class VideoRow:
    name: str
    frames: int
    values: dict = field(default_factory=dict)       # metric -> per-frame tensor
    notes: list = field(default_factory=list)


def _to_chw(frames: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float() / 255.0


def frame_metrics(gen: np.ndarray, gt: np.ndarray, wanted: set[str], lpips_model, lpips_range: str,
                  device) -> dict[str, torch.Tensor]:
    """Per-frame values of each wanted pixel metric (L1 gives two: ``l1`` and ``l1_disco``), a chunk of
    frames at a time."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
    from torchmetrics.functional.image.lpips import _lpips_update

    ev = _models()
    out: dict[str, list] = {}
    for i in range(0, len(gen), CHUNK):
        a, b = _to_chw(gen[i:i + CHUNK], device), _to_chw(gt[i:i + CHUNK], device)
        part = {}
        if "l1" in wanted:
            part["l1"], part["l1_disco"] = ev.l1_per_frame(a, b), ev.l1_disco_per_frame(a, b)
        if "psnr" in wanted:
            part["psnr"] = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
        if "ssim" in wanted:
            # DisCo's SSIM: gray frames, a 7x7 uniform window (skimage's defaults)
            part["ssim"] = structural_similarity_index_measure(ev.luma(a), ev.luma(b), data_range=1.0,
                                                               gaussian_kernel=False, kernel_size=7, reduction="none")
        if lpips_model is not None:
            with torch.no_grad():
                # "disco": [0, 1] frames fed as they are, as DisCo's code does; "standard": mapped to [-1, 1]
                part["lpips"] = torch.cat([_lpips_update(a[j:j + LPIPS_BATCH], b[j:j + LPIPS_BATCH], lpips_model,
                                                         normalize=lpips_range == "standard").reshape(-1)
                                           for j in range(0, len(a), LPIPS_BATCH)])
        for k, v in part.items():
            out.setdefault(k, []).append(v.reshape(-1).double().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def i3d_features(model, frames: np.ndarray, clip_len: int, device) -> torch.Tensor:
    """I3D features ``[N, 400]`` of a video's clips, ``I3D_BATCH`` clips per forward pass (on the CPU,
    PyTorch runs a batch of one through a much slower 3-D convolution)."""
    clips = _models().i3d_clips(torch.from_numpy(frames), clip_len)
    feats = []
    with torch.no_grad():
        for i in range(0, len(clips), I3D_BATCH):
            feats.append(model(clips[i:i + I3D_BATCH].to(device)).double().cpu())
    return torch.cat(feats) if feats else torch.zeros(0, _models().I3D_CLASSES, dtype=torch.float64)


# --- report ---------------------------------------------------------------------------------------

COLUMNS = (("l1", "L1 (0-1)", "{:.4f}"), ("l1_disco", "L1 (DisCo)", "{:.2E}"), ("psnr", "PSNR (dB)", "{:.2f}"),
           ("ssim", "SSIM", "{:.4f}"), ("lpips", "LPIPS", "{:.4f}"))


def _number(v):
    """JSON has no infinity: an identical frame's PSNR is written as the string "inf"."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")


def _cell(v, fmt: str) -> str:
    if v is None:
        return "-"
    return v if isinstance(v, str) else fmt.format(v)      # "inf" as written in the JSON


def build_report(rows: list[VideoRow], fvd, not_computed: dict, notes: list, protocol: dict) -> dict:
    metrics = [key for key, _, _ in COLUMNS if any(key in r.values for r in rows)]
    videos = []
    for r in rows:
        videos.append({"name": r.name, "frames": r.frames, **{k: _number(r.values[k].mean()) for k in metrics},
                       "notes": r.notes})
    mean = {"frames": sum(r.frames for r in rows)}
    for k in metrics:     # frame-weighted: every frame of every video counts once, as DisCo averages frames
        mean[k] = _number(torch.cat([r.values[k] for r in rows]).mean())
    return {"videos": videos, "mean": mean, "fvd": fvd, "not_computed": not_computed, "notes": notes,
            "protocol": protocol}


def markdown(report: dict, generated: str, ground_truth: str) -> str:
    # computed columns, and a "not computed" column for a wanted metric that could not run (LPIPS)
    present = [(k, title, fmt if k in report["mean"] else None) for k, title, fmt in COLUMNS
               if k in report["mean"] or k in report["not_computed"]]
    head = "| video | frames | " + " | ".join(t for _, t, _ in present) + " |"
    lines = [f"# Evaluation: `{generated}` against `{ground_truth}`", "", head,
             "|" + "---|" * (2 + len(present))]

    def cells(entry):
        out = []
        for k, _, fmt in present:
            out.append("not computed" if fmt is None else _cell(entry.get(k), fmt))
        return out

    for v in report["videos"]:
        lines.append(f"| {v['name']} | {v['frames']} | " + " | ".join(cells(v)) + " |")
    lines.append(f"| **mean** | {report['mean']['frames']} | " + " | ".join(cells(report["mean"])) + " |")
    lines.append("")
    fvd = report["fvd"]
    if fvd is not None:
        lines.append(f"**FVD** (I3D, {fvd['clips_generated']} generated vs {fvd['clips_ground_truth']} ground-truth "
                     f"clips of {fvd['clip_frames']} frames): **{fvd['value']:.2f}**")
    for key, why in report["not_computed"].items():
        lines.append(f"- {key.upper()} {why}")
    for note in report["notes"]:
        lines.append(f"- {note}")
    for v in report["videos"]:
        for note in v["notes"]:
            lines.append(f"- {v['name']}: {note}")
    p = report["protocol"]
    lines += ["", "Mean: over all frames of all videos. L1 (0-1): mean absolute difference of RGB values on the "
              "0-1 scale. L1 (DisCo): DisCo's L1, the mean absolute difference on the 0-255 scale divided by the "
              f"pixels per frame (depends on resolution). PSNR: RGB, 0-1 data range (identical frames: inf). "
              f"SSIM: gray (BT.601), 7x7 uniform window. LPIPS: {p['lpips_net']} backbone, input {p['lpips_range']}. "
              "docs/evaluation.md describes the protocol."]
    return "\n".join(lines) + "\n"


# --- command --------------------------------------------------------------------------------------

def _metric_list(text: str, what: str) -> set[str]:
    names = {m.strip().lower() for m in text.split(",") if m.strip()}
    if "all" in names:
        return set(METRICS)
    unknown = names - set(METRICS)
    if unknown:
        raise EvaluationError(f"{what}: unknown metric(s) {', '.join(sorted(unknown))}; choose from "
                              f"{', '.join(METRICS)} (or all).")
    return names


def _size(text: str | None):
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise EvaluationError(f"--size {text!r}: write it as WIDTHxHEIGHT, e.g. 512x512.") from None
    return w, h


def run(args) -> int:
    wanted = _metric_list(args.metrics, "--metrics")
    required = _metric_list(args.require, "--require") if args.require else set()
    wanted |= required
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    folders = weight_folders(args)
    pairs, notes = pair_inputs(Path(args.generated), Path(args.ground_truth))
    not_computed: dict[str, str] = {}
    lpips_model = i3d = None
    if "lpips" in wanted:
        try:
            lpips_model = load_lpips(args.lpips_net, folders, device)
        except MissingWeights as exc:
            not_computed["lpips"] = (f"{exc}. Put torchvision's ImageNet {args.lpips_net} weights "
                                     f"({LPIPS_BACKBONES[args.lpips_net]}) in {folders[-1]} or pass --weights DIR.")
    if "fvd" in wanted:
        try:
            i3d = load_i3d(folders, device)
        except MissingWeights as exc:
            not_computed["fvd"] = (f"{exc}. Put the Kinetics-400 I3D state dict ({I3D_FILE}, the file DisCo's FVD "
                                   f"loads) in {folders[-1]} or pass --weights DIR.")
    rows, feats_gen, feats_gt = [], [], []
    size = _size(args.size)
    for name, gen_path, gt_path in pairs:
        gen, gt, pair_notes = load_pair(gen_path, gt_path, size, args.max_frames)
        logger.info("%s: %d frames at %dx%d", name, len(gen), gen.shape[2], gen.shape[1])
        row = VideoRow(name, len(gen), frame_metrics(gen, gt, wanted, lpips_model, args.lpips_range, device), pair_notes)
        if i3d is not None:
            feats_gen.append(i3d_features(i3d, gen, args.fvd_clip, device))
            feats_gt.append(i3d_features(i3d, gt, args.fvd_clip, device))
        rows.append(row)
    fvd = None
    if i3d is not None:
        fg, ft = torch.cat(feats_gen), torch.cat(feats_gt)
        if min(len(fg), len(ft)) < 2:
            not_computed["fvd"] = (f"not computed: FVD needs at least 2 clips on each side, got {len(fg)} generated "
                                   f"and {len(ft)} ground-truth clips of {args.fvd_clip or 'all'} frames; use more or "
                                   "longer videos, or a shorter --fvd-clip.")
        else:
            fvd = {"value": _models().frechet_distance_of_features(fg, ft), "clips_generated": len(fg),
                   "clips_ground_truth": len(ft), "clip_frames": args.fvd_clip or "whole video"}
    protocol = {"lpips_net": args.lpips_net, "lpips_range": args.lpips_range, "fvd_clip": args.fvd_clip,
                "size": args.size, "max_frames": args.max_frames, "device": str(device),
                "l1_scale": "mean |generated - ground truth| of RGB values in 0..1",
                "l1_disco": "mean |generated - ground truth| of RGB values in 0..255 divided by H*W",
                "psnr": "torchmetrics, RGB, data_range 1, per frame (identical frames give inf)",
                "ssim": "torchmetrics, BT.601 gray, 7x7 uniform window, data_range 1, per frame"}
    report = build_report(rows, fvd, not_computed, notes, protocol)
    out = Path(args.out)
    base = out.with_suffix("") if out.suffix.lower() in (".md", ".json") else out
    base.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(report, args.generated, args.ground_truth)
    Path(f"{base}.md").write_text(text)
    Path(f"{base}.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("%s\nwrote %s.md and %s.json", text, base, base)
    failed = sorted(required & set(not_computed))
    if failed:
        for m in failed:
            logger.error("--require %s: %s %s", m, m.upper(), not_computed[m])
        return 1
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "), formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("generated", help="generated video, frame folder, or folder of them")
    ap.add_argument("ground_truth", help="ground-truth video, frame folder, or folder of them (same names)")
    ap.add_argument("--out", default="eval_report", help="report path without suffix: writes OUT.md and OUT.json")
    ap.add_argument("--metrics", default="all", help=f"comma-separated, from {', '.join(METRICS)} (default all)")
    ap.add_argument("--require", default="", help="metrics that must be computed: exit 1 when one cannot run "
                    "(e.g. its weights are missing)")
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR") or str(ROOT / ".host" / "ComfyUI"),
                    help=f"ComfyUI folder; weights are read from its models/{WEIGHTS_FOLDER}/")
    ap.add_argument("--weights", default=None, help="another folder to look for the LPIPS and I3D weights in first")
    ap.add_argument("--lpips-net", default="vgg", choices=sorted(LPIPS_BACKBONES),
                    help="LPIPS backbone (DisCo's evaluation: vgg)")
    ap.add_argument("--lpips-range", default="disco", choices=("disco", "standard"),
                    help="disco: frames in [0, 1] fed as they are, as DisCo's code does; standard: mapped to "
                    "[-1, 1], what LPIPS expects")
    ap.add_argument("--fvd-clip", type=int, default=16, help="frames per FVD clip (0: each whole video is one clip)")
    ap.add_argument("--size", default=None, help="resize both sides to WIDTHxHEIGHT first (e.g. 512x512)")
    ap.add_argument("--max-frames", type=int, default=0, help="compare at most this many frames per video")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except (EvaluationError, _checkpoint().CheckpointError) as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
