"""Start and stop a real ComfyUI server (``main.py --cpu``) on loopback with only this pack loaded."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from comfy_client import ComfyClient  # noqa: E402

PACK_DIR_NAME = "comfyui-identity-animator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``with ComfyServer(comfy_dir, base_dir) as server: server.client.run(prompt)``.

    ``base_dir`` gets ComfyUI's models/input/output/user/custom_nodes folders; the pack is linked
    into its custom_nodes and is the only custom node pack allowed to load.
    """

    def __init__(self, comfy_dir, base_dir, python=sys.executable, extra_args=(), startup_timeout=180, port=None):
        self.comfy_dir, self.base_dir = Path(comfy_dir), Path(base_dir)
        self.python, self.extra_args, self.startup_timeout = python, list(extra_args), startup_timeout
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = ComfyClient(self.url)
        self.log_path = self.base_dir / "comfyui.log"
        self.proc = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        for sub in ("custom_nodes", "models", "input", "output", "user", "temp"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / PACK_DIR_NAME
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base_dir),
               "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_DIR_NAME, *self.extra_args]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while not self.client.is_up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} during start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"ComfyUI did not answer in {self.startup_timeout} s:\n{self.log_tail()}")
            time.sleep(0.3)
        if f"IMPORT FAILED" in self.log() and PACK_DIR_NAME in self.import_failures():
            raise RuntimeError(f"The pack failed to import:\n{self.log_tail()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def import_failures(self) -> str:
        return "\n".join(l for l in self.log().splitlines() if "IMPORT FAILED" in l)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        self._log.close()
