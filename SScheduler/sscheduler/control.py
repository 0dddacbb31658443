"""Client of Context Forge's workflow API (`/v1/workflows`), tolerant of servers that lack it.

`POST {base}/workflows` {"workflow_id", "agents": [{"agent_id", "depends_on", "optional"}], "repeat"}
declares an instance; `POST {base}/workflows/{id}/events` {"event": "agent_finished", "agent_id"} or
{"event": "workflow_finished"} reports progress.

A server without these routes (vanilla SGLang, vLLM, an older Context Forge) answers 404 or 405 to
the declaration: that is logged once as a warning and every later call becomes a no-op, so the
run continues without workflow awareness. Other refusals (a duplicate live instance, an invalid
graph) raise `SSchedulerError` with the server's message.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import httpx

from context_forge.workflow.graph import WorkflowGraph
from sscheduler.errors import SSchedulerError

log = logging.getLogger("sscheduler")

_MISSING_ROUTE = (404, 405, 501)


class WorkflowControl:
    """Declares workflow instances and reports agent / instance completion to the server."""

    def __init__(self, base_url: str, http: httpx.AsyncClient, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = http
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.available: bool | None = None
        """None until the first declaration; False once the server showed it has no workflow API."""

    async def declare(self, instance_id: str, graph: WorkflowGraph) -> bool:
        """Registers a live instance of `graph`; False when the server has no workflow API."""
        if self.available is False:
            return False
        body = {"workflow_id": instance_id, **graph.to_dict()}
        r = await self._post("/workflows", body)
        if r.status_code in _MISSING_ROUTE and _error_code(r) is None:
            self._unavailable(r)
            return False
        if r.status_code == 409:
            raise SSchedulerError(
                f"workflow instance {instance_id!r} is already live on the server; "
                f"use another instance id or finish it first ({_message(r)})"
            )
        if r.status_code >= 400:
            raise SSchedulerError(
                f"declaring workflow instance {instance_id!r} failed: HTTP {r.status_code}: {_message(r)}"
            )
        self.available = True
        return True

    async def agent_finished(self, instance_id: str, agent_id: str) -> None:
        await self._event(instance_id, {"event": "agent_finished", "agent_id": agent_id})

    async def workflow_finished(self, instance_id: str) -> None:
        await self._event(instance_id, {"event": "workflow_finished"})

    async def _event(self, instance_id: str, body: dict[str, Any]) -> None:
        if self.available is False:
            return
        r = await self._post(f"/workflows/{quote(instance_id, safe='')}/events", body)
        if r.status_code < 400:
            return
        if r.status_code in _MISSING_ROUTE and _error_code(r) is None:
            self._unavailable(r)
            return
        if r.status_code == 404:
            log.warning("workflow instance %r is not live on the server; event %s dropped", instance_id, body["event"])
            return
        what = body["event"] + (f" of agent {body['agent_id']!r}" if "agent_id" in body else "")
        raise SSchedulerError(
            f"reporting {what} for workflow instance {instance_id!r} failed: HTTP {r.status_code}: {_message(r)}"
        )

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        url = self.base_url + path
        try:
            return await self._http.post(url, json=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise SSchedulerError(f"POST {url} failed: {type(exc).__name__}: {exc}") from exc

    def _unavailable(self, r: httpx.Response) -> None:
        if self.available is not False:
            log.warning(
                "server at %s has no workflow API (HTTP %d on %s); continuing without workflow declarations",
                self.base_url, r.status_code, r.request.url.path,
            )
        self.available = False


def _error(r: httpx.Response) -> dict[str, Any] | None:
    try:
        body = r.json()
    except ValueError:
        return None
    err = body.get("error") if isinstance(body, dict) else None
    return err if isinstance(err, dict) else None


def _error_code(r: httpx.Response) -> Any:
    """The OpenAI-style error code of a response (None for a framework's bare 'Not Found')."""
    err = _error(r)
    return None if err is None else err.get("code")


def _message(r: httpx.Response) -> str:
    err = _error(r)
    if err is not None and err.get("message"):
        return str(err["message"])
    return r.text[:300] or r.reason_phrase
