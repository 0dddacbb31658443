"""Workflow instances over HTTP: register a DAG, report agent/workflow completion, list live ones.

`POST /v1/workflows` {"workflow_id", "agents": [{"agent_id", "depends_on", "optional"}], "repeat"}
`POST /v1/workflows/{workflow_id}/events` {"event": "agent_finished", "agent_id"} | {"event": "workflow_finished"}
`GET /v1/workflows` lists live instances; `GET /v1/workflows/{workflow_id}` shows one.

An event answers `"applied": false` with a `"reason"` when it changes nothing: `agent_finished`
for a dynamic workflow (one without a registered graph), for an agent whose request is running,
or one that a request or an earlier event already marked done (events are idempotent: a repeat
never moves the step graph twice, also across the start of a new round of a repeat workflow).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from context_forge.server.errors import APIError, bad_request, parse_body
from context_forge.server.protocol import (
    AgentSpecBody,
    WorkflowEventRequest,
    WorkflowInfo,
    WorkflowList,
    WorkflowRegisterRequest,
)
from context_forge.server.state import ServerState
from context_forge.workflow.errors import (
    CycleError,
    DuplicateWorkflowError,
    UnknownWorkflowError,
    WorkflowError,
)
from context_forge.workflow.graph import WorkflowGraph

router = APIRouter()


def _workflow_error(e: WorkflowError, workflow_id: str) -> APIError:
    if isinstance(e, UnknownWorkflowError):
        return APIError(404, str(e), "workflow_id", "workflow_not_found")
    if isinstance(e, DuplicateWorkflowError):
        return APIError(409, f"{e}; finish it first (event 'workflow_finished')", "workflow_id", "workflow_exists")
    code = "workflow_cycle" if isinstance(e, CycleError) else "invalid_workflow"
    return APIError(400, f"workflow '{workflow_id}': {e}", "agents", code)


def _info(workflow_id: str, graph: WorkflowGraph) -> dict[str, Any]:
    agents = [
        AgentSpecBody(agent_id=s.agent_id, depends_on=list(s.depends_on), optional=s.optional) for s in graph.agents
    ]
    return WorkflowInfo(workflow_id=workflow_id, agents=agents, repeat=graph.repeat).model_dump()


@router.post("/v1/workflows")
async def register_workflow(request: Request) -> Response:
    state: ServerState = request.app.state.cf
    body = parse_body(await request.body(), WorkflowRegisterRequest)
    try:
        graph = WorkflowGraph.from_dict(body.model_dump())
        state.register_workflow(body.workflow_id, graph)
    except WorkflowError as e:
        raise _workflow_error(e, body.workflow_id) from None
    return JSONResponse(_info(body.workflow_id, graph), status_code=201)


@router.get("/v1/workflows")
async def list_workflows(request: Request) -> Response:
    state: ServerState = request.app.state.cf
    return JSONResponse(WorkflowList(data=state.live_workflows()).model_dump())


@router.get("/v1/workflows/{workflow_id}")
async def get_workflow(request: Request, workflow_id: str) -> Response:
    state: ServerState = request.app.state.cf
    graph = state.graph_of(workflow_id)
    if graph is None:
        raise _workflow_error(UnknownWorkflowError(workflow_id), workflow_id)
    return JSONResponse(_info(workflow_id, graph))


@router.post("/v1/workflows/{workflow_id}/events")
async def workflow_event(request: Request, workflow_id: str) -> Response:
    state: ServerState = request.app.state.cf
    event = parse_body(await request.body(), WorkflowEventRequest)
    reason: str | None = None
    try:
        if event.event == "agent_finished":
            if event.agent_id is None:
                raise bad_request("event 'agent_finished' needs 'agent_id'", "agent_id")
            reason = state.agent_finished(workflow_id, event.agent_id)
        else:
            if event.agent_id is not None:
                raise bad_request("event 'workflow_finished' takes no 'agent_id'", "agent_id")
            state.finish_workflow(workflow_id)
    except WorkflowError as e:
        if isinstance(e, UnknownWorkflowError):
            raise _workflow_error(e, workflow_id) from None
        raise APIError(400, str(e), "agent_id", "unknown_agent") from None
    body: dict[str, Any] = {
        "object": "workflow.event", "workflow_id": workflow_id, "event": event.event, "applied": reason is None
    }
    if reason is not None:
        body["reason"] = reason
    return JSONResponse(body)
