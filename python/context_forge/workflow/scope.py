"""Keys that name an agent *within one workflow instance*.

The cache tags radix nodes with the keys of the requests that pass through them. Tagging with
``scope_key(workflow_id, agent_id)`` instead of the bare agent id lets a policy rank a node by the
most urgent workflow that still needs it: with many workflows sharing agent names (`planner`,
`coder`), a bare name would make every branch any workflow's planner ever touched look as urgent
as the one planner about to run.
"""

from __future__ import annotations

SEP = "\x1f"


def scope_key(workflow_id: str | None, agent_id: str) -> str:
    """``workflow_id`` + SEP + ``agent_id``; the bare agent id when there is no workflow."""
    return f"{workflow_id}{SEP}{agent_id}" if workflow_id else agent_id


def split_scope(key: str) -> tuple[str | None, str]:
    """Inverse of :func:`scope_key`: ``(workflow_id or None, agent_id)``."""
    wf, sep, agent = key.partition(SEP)
    return (wf, agent) if sep else (None, key)
