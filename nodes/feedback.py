"""Short texts shown on the running node itself (the frontend's progress-text line under it), so an
artist sees a report or a warning without reading the server log."""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def show_on_node(text: str) -> None:
    """Show ``text`` on the node that is running now; nothing when no frontend is listening."""
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer
    except ImportError:   # an older host without either: the log line is all there is
        return
    context = get_executing_context()
    server = getattr(PromptServer, "instance", None)
    if context is None or server is None or context.node_id is None:
        return
    try:
        server.send_progress_text(text, context.node_id)
    except Exception:   # a closed socket must never fail the node
        logger.debug("could not send the node text", exc_info=True)
