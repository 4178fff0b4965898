"""`make bench`: time, peak memory and achieved FLOP/s of the Animation Sampler without and with HJB face
refinement, side by side with the official pipeline re-stated on diffusers on the same random weights.

On a CUDA GPU it runs the plan below at real sizes (25 steps, official windows 16/4 and refinement
schedule) within ``--budget`` seconds; each configuration in its own process, so peak memory is its
own and one that fails (out of memory) is recorded and the rest still run. ``--tiny`` runs the same
path at tiny sizes on the CPU (the CI proof). Results go to ``--out`` (results.json, benchmarks.md)
and, unless ``--no-write``, into docs/benchmarks.md.

The GPU machine that runs it has no ComfyUI and no network: ``make bench-bundle`` builds what it lacks,
and ``tools/bench/run_on_device.sh`` installs and runs it there (docs/benchmarks.md says how).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
DOC = ROOT / "docs" / "benchmarks.md"
KEYS = ROOT / "tests" / "data" / "official_checkpoint_keys.json"

# in the order they run; the levers last, so a short budget still gets the main table
GPU_PLAN = [
    dict(name="16f 512x512", frames=16, width=512, height=512, refine=False),
    dict(name="25f 576x1024", frames=25, width=576, height=1024, refine=False),
    dict(name="16f 512x512 HJB", frames=16, width=512, height=512, refine=True),
    dict(name="25f 576x1024 HJB", frames=25, width=576, height=1024, refine=True),
    dict(name="64f 576x1024 HJB", frames=64, width=576, height=1024, refine=True, baseline=False),
    dict(name="lever: bf16", frames=25, width=576, height=1024, refine=False, dtype="bf16"),
    dict(name="lever: channels-last", frames=25, width=576, height=1024, refine=False, channels_last=True, baseline=False),
    dict(name="lever: decode chunk 8", frames=25, width=576, height=1024, refine=True, chunk=8, baseline=False),
    dict(name="lever: decode chunk 25", frames=25, width=576, height=1024, refine=True, chunk=25, baseline=False),
    dict(name="lever: torch.compile", frames=25, width=576, height=1024, refine=False, compile=True, baseline=False),
]
# the CI proof: the same path (both pipelines, refinement, FLOP counts) at the smallest sizes
TINY_PLAN = [
    dict(name="tiny 16f 64x64", frames=16, width=64, height=64, refine=False, steps=2, tiny=True),
    dict(name="tiny 16f 64x64 HJB", frames=16, width=64, height=64, refine=True, steps=2, iterations=1,
         baseline_refine_steps=1, tiny=True),
]
# dense bf16 tensor-core peak (TFLOP/s, no sparsity) from NVIDIA's data sheets, matched on the device name
BF16_PEAK_TFLOPS = [("H200", 989.4), ("H100 SXM", 989.4), ("H100 80GB HBM3", 989.4), ("H100 NVL", 835.0),
                    ("H100 PCIe", 756.0), ("H100", 756.0), ("A100", 312.0), ("L40S", 362.1), ("RTX 6000 Ada", 364.2),
                    ("RTX 4090", 165.2), ("RTX 3090", 71.0), ("L4", 121.0), ("A10", 125.0)]
STARTUP_ESTIMATE_S = 30     # a process's imports and weights, before its first measurement


def setup_host(bundle: Path | None, cpu: bool) -> Path:
    """ComfyUI on the path: unpacked from the bundle, or the checkout's host; the pack as identity_animator."""
    if bundle is not None:
        comfy = unpack_comfy(bundle)
    else:
        comfy = Path(os.environ.get("COMFYUI_DIR") or ROOT / ".host" / "ComfyUI")
    sys.path.insert(0, str(comfy))
    sys.path.insert(1, str(ROOT / "tests"))
    import utils.install_util  # noqa: F401  (ComfyUI's own utils package, before any other of that name)
    from comfy.cli_args import args

    args.cpu = cpu
    from pack_import import pack_module

    pack_module("nodes")
    return comfy


def unpack_comfy(bundle: Path) -> Path:
    """The bundle's ComfyUI source, unpacked once per bundle under the temp folder."""
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    digest = manifest["files"]["comfyui.zip"]["sha256"][:12]
    dest = Path(tempfile.gettempdir()) / f"ida-bench-comfyui-{digest}"
    if not (dest / "comfy" / "model_management.py").exists():
        part = dest.with_suffix(".partial")
        with zipfile.ZipFile(bundle / "comfyui.zip") as zf:
            zf.extractall(part)
        os.replace(part, dest)
    return dest


def run_one(spec_json: str, bundle: Path | None) -> dict:
    from bench.workload import Spec, measure

    spec = Spec(**json.loads(spec_json))
    import torch

    setup_host(bundle, cpu=spec.tiny or not torch.cuda.is_available())
    keys = bundle / KEYS.name if bundle is not None else KEYS
    result = measure(spec, keys)
    result["imported_from"] = imported_from()
    return result


def imported_from() -> dict:
    """Where ComfyUI, the pack and the bundle's packages were imported from (the CPU proof checks it)."""
    names = ["comfy", "identity_animator", "torch"] + [n for n in ("diffusers", "kornia", "av", "torchsde") if n in sys.modules]
    found = {}
    for name in names:
        mod = sys.modules.get(name)
        # A package imported as a namespace (or a C module) has no __file__; its search path says where.
        where = getattr(mod, "__file__", None) or next(iter(getattr(mod, "__path__", []) or []), None)
        if where:
            found[name] = str(Path(where).resolve())
    return found


def run_plan(plan: list[dict], bundle: Path | None, budget: float, steps: int | None,
             logs: Path | None = None) -> list[dict]:
    """Each configuration in a fresh process; what does not fit the budget is recorded as not run.

    A configuration that fails leaves its full output in ``logs/<name>.log`` so a GPU run that is
    over when anyone reads it can still be diagnosed."""
    from bench.workload import Spec

    results, start = [], time.monotonic()
    for entry in plan:
        spec = dataclasses.asdict(Spec(**{**entry, **({"steps": steps} if steps else {})}))
        left = budget - (time.monotonic() - start)
        if left < STARTUP_ESTIMATE_S:
            results.append({"spec": spec, "status": "not run: time budget spent"})
            continue
        cmd = [sys.executable, __file__, "--one", json.dumps(spec)] + (["--bundle", str(bundle)] if bundle else [])
        t = time.monotonic()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            results.append({"spec": spec, "status": f"stopped: over the time budget after {time.monotonic() - t:.0f} s"})
            continue
        m = re.search(r"^RESULT (.*)$", done.stdout, re.M)
        if m:
            res = json.loads(m.group(1))
            res["status"], res["process_seconds"] = "ok", time.monotonic() - t
        else:
            lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()]
            oom = "out of memory" in done.stderr.lower()
            res = {"spec": spec, "status": "out of memory" if oom else f"failed: {lines[-1][:300] if lines else done.returncode}"}
            if logs is not None:
                logs.mkdir(parents=True, exist_ok=True)
                log = logs / (re.sub(r"[^A-Za-z0-9_.-]+", "_", spec["name"]) + ".log")
                log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
                res["log"] = log.name
        results.append(res)
        print(f"[bench] {spec['name']}: {summary_line(res)}", flush=True)
    return results


def summary_line(res: dict) -> str:
    if res.get("status") != "ok":
        return res["status"]
    p, b = res["pack"], res["baseline"]
    out = f"pack {p['status']}" + (f" {p['seconds']:.2f} s" if p["seconds"] else "")
    if not b["status"].startswith("not run"):
        out += f", baseline {b['status']}" + (f" {b['seconds']:.2f} s" if b["seconds"] else "")
    return out


# ---------------------------------------------------------------------------------------- the table

def device_info() -> dict:
    import torch

    info = {"torch": torch.__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else "unknown"
        except (OSError, subprocess.SubprocessError, IndexError):
            info["driver"] = "unknown"
        info["bf16_peak_tflops"] = next((p for n, p in BF16_PEAK_TFLOPS if n.lower() in info["device"].lower()), None)
    else:
        info["device"] = f"CPU only: {os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    return info


def _fmt(v, spec="{:.2f}", none="–"):
    return none if v is None else spec.format(v)


def _share(part: dict, peak) -> str:
    if part.get("tflop") is None or not part.get("seconds") or not peak:
        return "–"
    return f"{100 * part['tflop'] / part['seconds'] / peak:.0f} %"


def _cell_status(part: dict) -> str:
    return part["status"] if part["status"] != "ok" else ""


def _refined_steps(steps: int) -> int:
    from bench.workload import refined_steps

    return refined_steps(steps)


def table(results: list[dict], info: dict) -> str:
    peak = info.get("bf16_peak_tflops")
    rows = ["| configuration | pack s | pack s/frame | pack peak GiB | pack TFLOP | pack FLOP/s share | baseline s | "
            "baseline peak GiB | baseline TFLOP | baseline share | pack/baseline time | notes |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        spec = res["spec"]
        if res.get("status") != "ok":
            rows.append(f"| {spec['name']} | {res['status']} |  |  |  |  |  |  |  |  |  |  |")
            continue
        p, b = res["pack"], res["baseline"]
        ratio = f"{p['seconds'] / b['seconds']:.2f}" if p["seconds"] and b["seconds"] else "–"
        notes = "; ".join(x for x in (_cell_status(p) and f"pack: {p['status']}",
                                      _cell_status(b) and f"baseline: {b['status']}",
                                      p["warmup_seconds"] and spec["compile"] and f"compile + first step {p['warmup_seconds']:.0f} s",
                                      b.get("note")) if x)
        rows.append(f"| {spec['name']} | {_fmt(p['seconds'])} | {_fmt(p['seconds'] and p['seconds'] / spec['frames'], '{:.3f}')} | "
                    f"{_fmt(p['peak_gib'])} | {_fmt(p['tflop'], '{:.4g}')} | {_share(p, peak)} | {_fmt(b['seconds'])} | "
                    f"{_fmt(b['peak_gib'])} | {_fmt(b['tflop'], '{:.4g}')} | {_share(b, peak)} | {ratio} | {notes} |")
    s0 = results[0]["spec"] if results else {}
    refine_spec = next((r["spec"] for r in results if r["spec"].get("refine")), s0)
    mem = "peak GPU memory allocated (`torch.cuda.max_memory_allocated`, weights included)" if "cuda" in info else \
          "peak process RSS (the baseline runs second: its figure is the process's peak so far)"
    head = (f"Device: **{info['device']}**"
            + (f", driver {info.get('driver')}, CUDA {info.get('cuda')}" if "cuda" in info else "")
            + f"; torch {info['torch']}, Python {info['python']}; measured {info['date']} by `tools/benchmark.py`"
            + (f" (`--tiny`)" if s0.get("tiny") else "") + ".\n\n"
            f"{s0.get('steps', '?')} steps, official windows (16 frames, overlap 4), CFG 3.0; HJB rows refine steps "
            f"0-{_refined_steps(refine_spec.get('steps', 25)) - 1} with {refine_spec.get('iterations', 3)} Adam iterations "
            f"(the pack: crop decode, margin 32 px, chunks of {refine_spec.get('chunk', 4)} unless the row says "
            f"otherwise, fp32 decoder; the baseline: the official loop, full-frame fp32 decode of all frames "
            f"with gradient checkpointing). Seconds are sampling only (the final VAE decode is the same for both), "
            f"after a one-step warm-up. Memory: {mem}. TFLOP counted by `torch.utils.flop_counter` on the same "
            f"shapes; FLOP/s share of the GPU's dense bf16 peak"
            + (f" ({peak:g} TFLOP/s)" if peak else " (not known for this device)") + ".")
    return head + "\n\n" + "\n".join(rows)


def write_section(name: str, text: str, doc: Path = DOC) -> None:
    body = doc.read_text() if doc.exists() else "# Benchmarks\n\nWritten by `tools/benchmark.py`.\n"
    start, end = f"<!-- {name} start -->", f"<!-- {name} end -->"
    block = f"{start}\n{text}\n{end}"
    if start in body:
        body = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    doc.write_text(body)


def record(results: list[dict], info: dict, out: Path | None, write_doc: bool) -> str:
    text = table(results, info)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"device": info, "results": results}, indent=1) + "\n")
        (out / "benchmarks.md").write_text(text + "\n")
    if write_doc:
        write_section("GPU" if "cuda" in info else "CPU", f"## {'GPU' if 'cuda' in info else 'CPU'}\n\n{text}")
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="run from a bench bundle (make bench-bundle) instead of .host")
    ap.add_argument("--out", type=Path, help="folder for results.json and benchmarks.md")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU: proves the path, measures nothing real")
    ap.add_argument("--budget", type=float, default=510.0, help="seconds for the whole plan (default 510)")
    ap.add_argument("--steps", type=int, help="sampling steps (default 25; 2 with --tiny)")
    ap.add_argument("--only", action="append", help="run only the configuration of this name, or the lever of this name (repeatable)")
    ap.add_argument("--record", type=Path, help="write docs/benchmarks.md from a results.json a GPU run returned")
    ap.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md alone")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.bundle)), flush=True)
        return 0
    if args.record:
        data = json.loads(args.record.read_text())
        print(record(data["results"], data["device"], None, True))
        return 0
    import torch

    tiny = args.tiny or not torch.cuda.is_available()
    plan = TINY_PLAN if tiny else GPU_PLAN
    if args.only:
        plan = [p for p in plan if any(o == p["name"] or o in p["name"].split(": ") for o in args.only)]
    results = run_plan(plan, args.bundle, args.budget, args.steps, logs=args.out)
    print(record(results, device_info(), args.out, not args.no_write))
    failed = [r for r in results if r.get("status") != "ok" and not r["status"].startswith(("not run", "out of memory"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
