"""Batch queueing against two real ComfyUI servers on loopback, one restarted in the middle of a job:
every job finishes exactly once, and a second run resumes from the state file."""
from __future__ import annotations

import csv
import json
import shutil
import sys
import threading
import time

import pytest

from conftest import COMFY_DIR, ROOT
from ida_server import ComfyServer
from test_workflows import tiny

sys.path.insert(0, str(ROOT / "tools"))
import batch  # noqa: E402


@pytest.fixture(scope="module")
def second_server(server, tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy-b")
    (base / "models").symlink_to(server.base_dir / "models", target_is_directory=True)
    srv = ComfyServer(COMFY_DIR, base)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def job_files(server, tmp_path):
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    shutil.copy(server.base_dir / "input" / "face_reference.png", jobs_dir / "person.png")
    shutil.copy(server.base_dir / "input" / "driving.mp4", jobs_dir / "dance.mp4")
    rows = [{"name": f"job{i}", "reference": "person.png", "driving": "dance.mp4", "seed": i, "18.steps": 1} for i in range(3)]
    with open(jobs_dir / "jobs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    workflow = tiny(json.loads((ROOT / "workflows" / "api" / "animate_512x512.json").read_text()))
    (tmp_path / "workflow.json").write_text(json.dumps(workflow))
    return tmp_path / "workflow.json", jobs_dir / "jobs.csv"


def restart_when_busy(srv: ComfyServer, state_path, done: dict):
    """Restart ``srv`` (same port) as soon as the batch has a job running on it."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if state_path.exists():
            try:
                jobs = json.loads(state_path.read_text())["jobs"]
            except ValueError:
                jobs = []
            running = [j for j in jobs if j["status"] == "running" and j["server"] == srv.url]
            if running:
                time.sleep(1.5)             # let it get into the job
                srv.stop()
                done["job"] = running[0]["name"]
                srv.start()
                return
        time.sleep(0.2)


def test_two_servers_one_restarted_mid_run(server, second_server, job_files, tmp_path):
    workflow, jobs_csv = job_files
    out = tmp_path / "out"
    state = out / "batch_state.json"
    restarted = {}
    t = threading.Thread(target=restart_when_busy, args=(second_server, state, restarted))
    t.start()
    code = batch.main(["--workflow", str(workflow), "--jobs", str(jobs_csv), "--server", server.url,
                       "--server", second_server.url, "--out", str(out), "--quiet", "--restart-wait", "120"])
    t.join()
    assert restarted, "the second server was never busy, so it was not restarted"
    saved = {j["name"]: j for j in json.loads(state.read_text())["jobs"]}
    assert code == 0 and all(j["status"] == "done" for j in saved.values()), saved
    assert saved[restarted["job"]]["attempts"] >= 2
    for name in saved:
        files = sorted((out / name).iterdir())
        assert len(files) == 1 and files[0].suffix == ".mp4", files       # exactly one result per job
        assert saved[name]["outputs"] == [str(files[0])]
    assert len({j["prompt_id"] for j in saved.values()}) == 3


def test_resume_skips_finished_jobs(server, job_files, tmp_path):
    workflow, jobs_csv = job_files
    out = tmp_path / "out"
    args = ["--workflow", str(workflow), "--jobs", str(jobs_csv), "--server", server.url, "--out", str(out), "--quiet"]
    b = batch.Batch(json.loads(workflow.read_text()), batch.load_jobs(batch_args(args))[:2], [server.url], out,
                    out / "batch_state.json", quiet=True)
    out.mkdir(parents=True)
    assert b.run() == 0
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    assert len(first) == 2
    assert batch.main(args) == 0                    # all three now; the first two are not run again
    saved = {j["name"]: j for j in json.loads((out / "batch_state.json").read_text())["jobs"]}
    assert all(j["status"] == "done" for j in saved.values()) and len(saved) == 3
    assert all(p.stat().st_mtime_ns == m for p, m in first.items())
    assert saved["job0"]["attempts"] == 1


def batch_args(argv):
    import argparse

    ap = argparse.ArgumentParser()
    for name in ("--workflow", "--jobs", "--out", "--references", "--drivings", "--seeds"):
        ap.add_argument(name)
    ap.add_argument("--server", action="append")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def test_bad_job_lists_say_why(tmp_path):
    (tmp_path / "dup.json").write_text(json.dumps([{"name": "a"}, {"name": "a"}]))
    with pytest.raises(SystemExit, match="repeated"):
        batch.load_jobs(batch_args(["--jobs", str(tmp_path / "dup.json")]))
    with pytest.raises(SystemExit, match="No jobs"):
        batch.load_jobs(batch_args([]))
    job = batch.Job(name="x", overrides={"99.steps": 3})
    with pytest.raises(ValueError, match="99.steps"):
        batch.prompt_for(json.loads((ROOT / "workflows" / "api" / "animate_512x512.json").read_text()), job, {})
