"""A small client for a running ComfyUI server: queue API-format workflows on ``/prompt``, follow
``/ws`` until the prompt ends, and read ``/history``. Used by the demo and the integration tests."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field


class PromptError(RuntimeError):
    """The server rejected a prompt or its execution failed; ``details`` holds the server's JSON."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


@dataclass
class PromptResult:
    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    events: list[dict] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    error: dict | None = None

    def event_types(self) -> list[str]:
        return [e["type"] for e in self.events]


class ComfyClient:
    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.client_id = uuid.uuid4().hex

    def get_json(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.base_url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post_json(self, path: str, body: dict, timeout: float = 30):
        req = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return json.loads(raw) if raw else {}
        except urllib.error.HTTPError as exc:
            details = json.loads(exc.read() or b"{}")
            raise PromptError(f"{path} answered HTTP {exc.code}: {json.dumps(details)[:2000]}", details) from exc

    def is_up(self) -> bool:
        try:
            self.get_json("/system_stats", timeout=2)
            return True
        except (OSError, ValueError):
            return False

    def queue(self, prompt: dict, prompt_id: str | None = None) -> str:
        body = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id or uuid.uuid4().hex}
        return self.post_json("/prompt", body)["prompt_id"]

    def interrupt(self) -> None:
        self.post_json("/interrupt", {})

    def run(self, prompt: dict, timeout: float = 600, on_event=None, prompt_id: str | None = None) -> PromptResult:
        """Queue ``prompt`` and follow the websocket until it succeeds, fails or is interrupted.

        ``on_event(event)`` is called for every JSON event of this prompt (e.g. to interrupt it).
        """
        return self._follow(lambda: self.queue(prompt, prompt_id), timeout, on_event)

    def follow(self, prompt_id: str, timeout: float = 600, on_event=None) -> PromptResult:
        """Follow a prompt that is already queued (e.g. by an earlier run of a batch)."""
        def already_queued():
            return prompt_id

        result = self._follow(already_queued, timeout, on_event, poll_history=True)
        return result

    def _follow(self, start, timeout, on_event, poll_history=False) -> PromptResult:
        import websocket  # websocket-client

        ws_url = self.base_url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        ws = websocket.create_connection(ws_url, timeout=min(timeout, 5.0) if poll_history else timeout)
        try:
            prompt_id = start()
            events, status, error = [], None, None
            deadline = time.monotonic() + timeout
            while status is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f} s")
                if poll_history:   # events of a prompt queued by another client do not reach this one
                    entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
                    if entry and entry.get("status", {}).get("completed") is not None:
                        status = "success" if entry["status"].get("status_str") == "success" else "error"
                        break
                    try:
                        msg = ws.recv()
                    except websocket.WebSocketTimeoutException:
                        continue
                else:
                    msg = ws.recv()
                if isinstance(msg, bytes):
                    events.append({"type": "binary_preview", "data": {"bytes": len(msg)}})
                    continue
                event = json.loads(msg)
                data = event.get("data", {})
                if data.get("prompt_id", prompt_id) != prompt_id:
                    continue
                events.append(event)
                if on_event is not None:
                    on_event(event)
                kind = event["type"]
                if kind == "execution_error":
                    status, error = "error", data
                elif kind == "execution_interrupted":
                    status = "interrupted"
                elif kind == "executing" and data.get("node") is None:
                    status = "success"
        finally:
            ws.close()
        outputs = self.get_json(f"/history/{prompt_id}").get(prompt_id, {}).get("outputs", {})
        return PromptResult(prompt_id, status, events, outputs, error)
