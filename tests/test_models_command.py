"""The `models` command: listing, checking, and resumable downloads against a local HTTP server."""
from __future__ import annotations

import http.server
import re
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import models as mc  # noqa: E402


class RangeHandler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    requests: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append((self.path, self.headers.get("Range")))
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        m = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m:
            start = int(m.group(1))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def hub():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    RangeHandler.requests.clear()
    yield f"http://127.0.0.1:{srv.server_address[1]}", RangeHandler
    srv.shutdown()


def small(name="pose_net.pth", size=5000):
    m = next(m for m in mc.MODELS if m.name == name)
    return mc.ModelFile(m.name, m.folder, m.repo, m.path, size, m.licence, m.nodes)


def test_list_names_folders_licences_and_status(tmp_path, capsys):
    (tmp_path / "models" / "dwpose").mkdir(parents=True)
    (tmp_path / "models" / "dwpose" / "yolox_l.onnx").write_bytes(b"x")
    assert mc.main(["--comfyui", str(tmp_path), "list"]) == 0
    out = capsys.readouterr().out
    assert "| unet.pth | models/stableanimator/ | 6.2 GB |" in out and "non-commercial" in out
    assert re.search(r"\| yolox_l\.onnx \|.*\| present \|", out)
    assert mc.main(["--comfyui", str(tmp_path), "check"]) == 1


def test_download_resumes_and_checks_the_size(tmp_path, hub, monkeypatch):
    url, handler = hub
    model = small()
    payload = bytes(range(256)) * 20 + b"tail" * 30     # 5,240 bytes
    model = mc.ModelFile(model.name, model.folder, model.repo, model.path, len(payload), model.licence, model.nodes)
    handler.files[f"/{model.repo}/resolve/main/{model.path}"] = payload
    dest = tmp_path / "models" / model.folder / model.name
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(payload[:2000])        # an interrupted earlier download
    out = mc.download(model, tmp_path / "models", url, chunk=512)
    assert out == dest and dest.read_bytes() == payload
    assert handler.requests[-1][1] == "bytes=2000-"                         # it resumed, not restarted
    assert not dest.with_name(dest.name + ".part").exists()
    assert mc.status(model, tmp_path / "models") == "present, size ok"
    dest.write_bytes(payload[:10])
    assert mc.status(model, tmp_path / "models").startswith("WRONG SIZE")


def test_download_command_end_to_end_and_failures(tmp_path, hub, monkeypatch, capsys):
    url, handler = hub
    for m in mc.MODELS:
        if m.folder == "dwpose":
            handler.files[f"/{m.repo}/resolve/main/{m.path}"] = m.name.encode() * 100
    assert mc.main(["--comfyui", str(tmp_path), "--endpoint", url, "download", "yolox_l.onnx", "dw-ll_ucoco_384.onnx"]) == 0
    assert (tmp_path / "models" / "dwpose" / "yolox_l.onnx").read_bytes() == b"yolox_l.onnx" * 100
    assert mc.main(["--comfyui", str(tmp_path), "--endpoint", url, "download", "yolox_l.onnx"]) == 0
    assert "already present" in capsys.readouterr().out
    assert mc.main(["--comfyui", str(tmp_path), "--endpoint", url, "download", "pose_net.pth"]) == 1   # 404 here
    assert "run the same command again to resume" in capsys.readouterr().out
    assert mc.main(["--comfyui", str(tmp_path), "download", "nonsense.bin"]) == 2
