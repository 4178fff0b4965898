"""Queue many animations on one or more ComfyUI servers.

  python tools/batch.py --workflow workflows/api/animate_512x512.json --jobs jobs.csv \\
      --server http://127.0.0.1:8188 --server http://gpu2:8188 --out batch_out

Jobs come from a CSV or JSON file (columns/keys ``reference``, ``driving``, ``seed``, ``name`` and any
``<node id>.<input>`` override such as ``18.steps``), or from folders: ``--references DIR --drivings DIR
[--seeds 1,2]`` makes every combination. Inputs are uploaded through /upload/image, prompts are queued
on /prompt and followed on /ws, outputs are downloaded from /view into ``--out/<job name>/``.

Each job has a fixed prompt id (derived from the workflow and the job), and a progress/state file
(``--state``, default ``<out>/batch_state.json``) is written after every change. So when a server
restarts mid-job the job is re-queued once it is back (its queue and history are gone), a job the
server still holds is waited for rather than queued twice, and a second run of the same command
resumes where the first stopped.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import mimetypes
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_client import ComfyClient, PromptError  # noqa: E402

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VIDEO_EXT = {".mp4", ".webm", ".mov", ".mkv", ".gif"}


@dataclass
class Job:
    name: str
    reference: str | None = None
    driving: str | None = None
    seed: int | None = None
    overrides: dict = field(default_factory=dict)
    status: str = "pending"          # pending | running | done | failed
    server: str | None = None
    prompt_id: str | None = None
    attempts: int = 0
    outputs: list = field(default_factory=list)
    error: str | None = None


# --- job lists -------------------------------------------------------------------------------------

def _split_row(row: dict) -> Job:
    known = {k: row.get(k) for k in ("name", "reference", "driving", "seed")}
    overrides = {k: _scalar(v) for k, v in row.items() if k not in known and k != "overrides" and v not in (None, "")}
    overrides.update(row.get("overrides") or {})
    seed = int(known["seed"]) if known["seed"] not in (None, "") else None
    ref, drv = known["reference"] or None, known["driving"] or None
    name = known["name"] or "_".join(p for p in (Path(ref).stem if ref else "", Path(drv).stem if drv else "",
                                                  f"s{seed}" if seed is not None else "") if p)
    return Job(name=name, reference=ref, driving=drv, seed=seed, overrides=overrides)


def _scalar(v):
    if not isinstance(v, str):
        return v
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def load_jobs(args) -> list[Job]:
    jobs = []
    if args.jobs:
        path = Path(args.jobs)
        rows = json.loads(path.read_text()) if path.suffix == ".json" else list(csv.DictReader(path.open()))
        base = path.parent
        for row in rows:
            job = _split_row(row)
            job.reference = str((base / job.reference).resolve()) if job.reference else None
            job.driving = str((base / job.driving).resolve()) if job.driving else None
            jobs.append(job)
    if args.references:
        refs = sorted(p for p in Path(args.references).iterdir() if p.suffix.lower() in IMAGE_EXT)
        drvs = sorted(p for p in Path(args.drivings).iterdir() if p.suffix.lower() in VIDEO_EXT) if args.drivings else [None]
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [None]
        for r, d, s in itertools.product(refs, drvs, seeds):
            jobs.append(_split_row({"reference": str(r), "driving": str(d) if d else None, "seed": s}))
    names = [j.name for j in jobs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SystemExit(f"Job names must be unique; repeated: {sorted(dup)}. Add a 'name' column.")
    if not jobs:
        raise SystemExit("No jobs: give --jobs FILE or --references DIR.")
    return jobs


# --- binding jobs to a workflow ----------------------------------------------------------------------

def find_slots(workflow: dict) -> dict:
    """Which node input takes the reference image, the driving video and the seed."""
    def first(pred):
        return next((nid for nid, n in workflow.items() if pred(n)), None)

    ref = first(lambda n: n["class_type"] == "LoadImage" and "reference" in n.get("_meta", {}).get("title", "").lower()) \
        or first(lambda n: n["class_type"] == "LoadImage")
    drv = first(lambda n: n["class_type"] == "LoadVideo")
    seed = first(lambda n: n["class_type"] == "IDA_AnimationSampler") or first(lambda n: "seed" in n["inputs"])
    return {"reference": (ref, "image"), "driving": (drv, "file"), "seed": (seed, "seed")}


def prompt_for(workflow: dict, job: Job, uploaded: dict) -> dict:
    prompt = json.loads(json.dumps(workflow))
    slots = find_slots(prompt)
    for key in ("reference", "driving"):
        if getattr(job, key):
            nid, inp = slots[key]
            if nid is None:
                raise ValueError(f"The workflow has no node for the {key} input.")
            prompt[nid]["inputs"][inp] = uploaded[getattr(job, key)]
    if job.seed is not None and slots["seed"][0]:
        prompt[slots["seed"][0]]["inputs"]["seed"] = job.seed
    for target, value in job.overrides.items():
        nid, _, inp = target.partition(".")
        if nid not in prompt or not inp:
            raise ValueError(f"Override {target!r} does not name '<node id>.<input>' of this workflow.")
        prompt[nid]["inputs"][inp] = value
    for node in prompt.values():
        if node["class_type"] == "SaveVideo" or "filename_prefix" in node["inputs"]:
            node["inputs"]["filename_prefix"] = f"ida_batch/{job.name}"
    return prompt


def job_prompt_id(workflow: dict, job: Job) -> str:
    key = json.dumps([workflow, job.name, job.reference, job.driving, job.seed, job.overrides], sort_keys=True)
    return str(uuid.UUID(hashlib.sha256(key.encode()).hexdigest()[:32]))


# --- talking to a server ---------------------------------------------------------------------------

def upload(url: str, path: str) -> str:
    """Upload ``path`` into the server's input/ida_batch folder under a content-hash name; returns the input name."""
    data = Path(path).read_bytes()
    name = f"{hashlib.sha1(data).hexdigest()[:12]}_{Path(path).name}"
    boundary = uuid.uuid4().hex
    ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\nContent-Type: {ctype}\r\n\r\n'.encode(),
        data, b"\r\n",
        f'--{boundary}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\nida_batch\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n--{boundary}--\r\n'.encode(),
    ]
    req = urllib.request.Request(url.rstrip("/") + "/upload/image", data=b"".join(parts),
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        info = json.loads(r.read())
    return f"{info.get('subfolder')}/{info['name']}" if info.get("subfolder") else info["name"]


def output_files(outputs: dict) -> list[dict]:
    return [f for node in outputs.values() for key in ("images", "gifs", "videos", "pose_files")
            for f in node.get(key, []) if f.get("type") == "output"]


def download(url: str, f: dict, dest: Path) -> Path:
    q = urllib.parse.urlencode({"filename": f["filename"], "subfolder": f.get("subfolder", ""), "type": "output"})
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f["filename"]
    with urllib.request.urlopen(f"{url.rstrip('/')}/view?{q}", timeout=300) as r, open(out, "wb") as fh:
        fh.write(r.read())
    return out


def _ws_errors() -> tuple:
    import websocket

    return (websocket.WebSocketException,)


class Batch:
    def __init__(self, workflow: dict, jobs: list[Job], servers: list[str], out: Path, state: Path,
                 restart_wait: float = 300, max_attempts: int = 5, quiet: bool = False):
        self.workflow, self.servers, self.out, self.state_path = workflow, servers, out, state
        self.restart_wait, self.max_attempts, self.quiet = restart_wait, max_attempts, quiet
        self.lock = threading.Lock()
        self.jobs = self._resume(jobs)
        self.progress = {}

    def _resume(self, jobs: list[Job]) -> list[Job]:
        if not self.state_path.exists():
            return jobs
        saved = {j["name"]: Job(**j) for j in json.loads(self.state_path.read_text())["jobs"]}
        merged = []
        for job in jobs:
            old = saved.get(job.name)
            if old and (old.reference, old.driving, old.seed, old.overrides) == (job.reference, job.driving, job.seed, job.overrides):
                if old.status == "running":     # the previous run stopped while the job was on a server
                    old.status = "pending"
                merged.append(old)
            else:
                merged.append(job)
        return merged

    def save(self):
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"workflow_hash": hashlib.sha256(json.dumps(self.workflow, sort_keys=True).encode()).hexdigest(),
                                   "jobs": [asdict(j) for j in self.jobs]}, indent=1))
        tmp.replace(self.state_path)

    def next_job(self, server: str) -> Job | None:
        with self.lock:
            # a job that was on this server when it went away goes back to it first (its prompt id may still be there)
            job = next((j for j in self.jobs if j.status == "pending" and j.server == server), None) \
                or next((j for j in self.jobs if j.status == "pending"), None)
            if job:
                job.status, job.server = "running", server
                job.prompt_id = job.prompt_id or job_prompt_id(self.workflow, job)
                self.save()
            return job

    def report(self):
        if self.quiet:
            return
        done = sum(j.status == "done" for j in self.jobs)
        failed = sum(j.status == "failed" for j in self.jobs)
        now = " | ".join(f"{s.split('//')[-1]}: {p}" for s, p in self.progress.items() if p)
        bar = "#" * int(30 * done / len(self.jobs))
        sys.stderr.write(f"\r[{bar:<30}] {done}/{len(self.jobs)} done, {failed} failed  {now[:80]:<80}")
        sys.stderr.flush()

    def wait_for(self, client: ComfyClient) -> bool:
        deadline = time.monotonic() + self.restart_wait
        while time.monotonic() < deadline:
            if client.is_up():
                return True
            time.sleep(1.0)
        return False

    def run_job(self, client: ComfyClient, job: Job):
        """Run ``job`` to completion on this server; raises OSError if the server goes away."""
        history = client.get_json(f"/history/{job.prompt_id}").get(job.prompt_id)
        if history and history.get("status", {}).get("completed"):
            return history.get("outputs", {})            # finished before we lost track of it
        queue = client.get_json("/queue")
        held = any(item[1] == job.prompt_id for item in queue.get("queue_running", []) + queue.get("queue_pending", []))
        uploaded = {p: upload(client.base_url, p) for p in (job.reference, job.driving) if p}
        prompt = prompt_for(self.workflow, job, uploaded)

        def on_event(e):
            d = e.get("data", {})
            if e["type"] == "progress":
                self.progress[client.base_url] = f"{job.name} node {d.get('node')} {d.get('value')}/{d.get('max')}"
                self.report()

        result = client.follow(job.prompt_id, timeout=24 * 3600, on_event=on_event) if held else \
            client.run(prompt, timeout=24 * 3600, on_event=on_event, prompt_id=job.prompt_id)
        if result.status != "success":
            raise PromptError(f"{result.status}: {json.dumps(result.error)[:500] if result.error else ''}")
        return result.outputs

    def worker(self, server: str):
        client = ComfyClient(server)
        while True:
            job = self.next_job(server)
            if job is None:
                return
            job.attempts += 1
            try:
                outputs = self.run_job(client, job)
                files = [str(download(server, f, self.out / job.name)) for f in output_files(outputs)]
                with self.lock:
                    job.status, job.outputs, job.error = "done", files, None
                    self.save()
            except PromptError as exc:
                with self.lock:
                    job.status, job.error = "failed", str(exc)
                    self.save()
            except (OSError, TimeoutError, *_ws_errors()) as exc:   # connection lost: the server restarted or went away
                with self.lock:
                    job.error = f"attempt {job.attempts}: {exc}"
                    job.status = "failed" if job.attempts >= self.max_attempts else "pending"
                    self.save()
                if not self.wait_for(client):
                    with self.lock:
                        if job.status == "pending":
                            job.server = None    # another server may take it
                        self.save()
                    return
            finally:
                self.progress[server] = ""
                self.report()

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.save()
        threads = [threading.Thread(target=self.worker, args=(s,), daemon=True) for s in self.servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.report()
        if not self.quiet:
            sys.stderr.write("\n")
        failed = [j for j in self.jobs if j.status != "done"]
        for j in failed:
            sys.stderr.write(f"{j.name}: {j.status} {j.error or ''}\n")
        return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--workflow", required=True, help="API-format workflow (workflows/api/*.json)")
    ap.add_argument("--jobs", help="CSV or JSON list of jobs")
    ap.add_argument("--references", help="folder of reference images (all combinations with --drivings, --seeds)")
    ap.add_argument("--drivings", help="folder of driving videos")
    ap.add_argument("--seeds", help="comma-separated seeds")
    ap.add_argument("--server", action="append", required=True, help="ComfyUI URL; repeat for several servers")
    ap.add_argument("--out", default="batch_out", help="where outputs are downloaded")
    ap.add_argument("--state", help="state file (default <out>/batch_state.json); rerun to resume")
    ap.add_argument("--restart-wait", type=float, default=300, help="seconds to wait for a server that went away")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batch = Batch(json.loads(Path(args.workflow).read_text()), load_jobs(args), args.server, out,
                  Path(args.state) if args.state else out / "batch_state.json", args.restart_wait, quiet=args.quiet)
    return batch.run()


if __name__ == "__main__":
    sys.exit(main())
