"""Per-request workflow metadata carried in SGLang's ``custom_params``.

An OpenAI-compatible client sends it as ``extra_body={"custom_params": {...}}``; SGLang delivers
the object unchanged to the scheduler as ``Req.sampling_params.custom_params``. SGLang types that
object as JSON nested at most two levels (values are scalars, lists of scalars, or objects of
scalars), so the format below stays within that:

```json
{"workflow_id": "wf-7", "agent_id": "coder", "upcoming": {"reviewer": 1, "tester": 2}, "final": false}
```

- ``workflow_id`` (string, required for the rest to apply): the live workflow instance.
- ``agent_id`` (string, required with ``workflow_id``): the agent sending this request.
- ``upcoming`` (object, optional): agent id -> steps until that agent of this workflow runs,
  counted while this request runs (this agent is step 0, an agent that runs right after it is 1).
  Steps are finite numbers >= 0 (fractions allowed, e.g. expected steps). Each request's map
  replaces the workflow's previous one.
- ``final`` (bool, optional, default false): this is the workflow's last request; the server
  forgets the workflow once it finishes.

Other keys are left alone (SGLang uses ``custom_params`` for other features too). A request
without ``workflow_id`` and without any of the keys above carries no workflow metadata.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_UPCOMING",
    "METADATA_KEYS",
    "MetadataError",
    "WorkflowMeta",
    "parse_custom_params",
    "to_custom_params",
]

METADATA_KEYS = ("workflow_id", "agent_id", "upcoming", "final")
MAX_ID_LENGTH = 256
MAX_UPCOMING = 256


class MetadataError(ValueError):
    """``custom_params`` holds malformed workflow metadata; the message names the field."""


@dataclass(frozen=True)
class WorkflowMeta:
    """Validated workflow metadata of one request."""

    workflow_id: str
    agent_id: str
    upcoming: Mapping[str, float] = field(default_factory=dict)
    final: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "upcoming", MappingProxyType(dict(self.upcoming)))


def _identifier(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise MetadataError(f"{where} must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise MetadataError(f"{where} must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_LENGTH:
        raise MetadataError(f"{where} is longer than {MAX_ID_LENGTH} characters ({len(value)})")
    return value


def _steps(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetadataError(f"{where} must be a number of steps, got {type(value).__name__} {value!r}")
    steps = float(value)
    if not math.isfinite(steps) or steps < 0:
        raise MetadataError(f"{where} must be a finite number >= 0, got {value!r}")
    return steps


def _upcoming(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise MetadataError(
            f"custom_params.upcoming must be an object of agent id -> steps, got {type(value).__name__} {value!r}"
        )
    if len(value) > MAX_UPCOMING:
        raise MetadataError(f"custom_params.upcoming has {len(value)} agents; at most {MAX_UPCOMING} are allowed")
    out: dict[str, float] = {}
    for agent, steps in value.items():
        key = _identifier(agent, f"custom_params.upcoming key {agent!r}")
        out[key] = _steps(steps, f"custom_params.upcoming[{agent!r}]")
    return out


def parse_custom_params(custom_params: Any) -> WorkflowMeta | None:
    """Workflow metadata of a request, None when it carries none; `MetadataError` if malformed."""
    if custom_params is None:
        return None
    if not isinstance(custom_params, Mapping):
        raise MetadataError(f"custom_params must be a JSON object, got {type(custom_params).__name__}")
    present = [k for k in METADATA_KEYS if k in custom_params]
    if not present:
        return None
    if "workflow_id" not in custom_params:
        raise MetadataError(f"custom_params.{present[0]} was given without custom_params.workflow_id")
    workflow_id = _identifier(custom_params["workflow_id"], "custom_params.workflow_id")
    if "agent_id" not in custom_params:
        raise MetadataError("custom_params.agent_id is required with custom_params.workflow_id")
    agent_id = _identifier(custom_params["agent_id"], "custom_params.agent_id")
    upcoming = _upcoming(custom_params["upcoming"]) if custom_params.get("upcoming") is not None else {}
    final = custom_params.get("final", False)
    if final is None:
        final = False
    if not isinstance(final, bool):
        raise MetadataError(f"custom_params.final must be true or false, got {final!r}")
    return WorkflowMeta(workflow_id, agent_id, upcoming, final)


def to_custom_params(
    workflow_id: str,
    agent_id: str,
    upcoming: Mapping[str, float] | None = None,
    final: bool = False,
) -> dict[str, Any]:
    """The ``custom_params`` object for a request (validated; `MetadataError` if malformed).

    Send it as ``extra_body={"custom_params": to_custom_params(...)}``.
    """
    params: dict[str, Any] = {"workflow_id": workflow_id, "agent_id": agent_id}
    if upcoming:
        params["upcoming"] = {a: (int(s) if s.is_integer() and s < 2**53 else s) for a, s in _upcoming(upcoming).items()}
    if final:
        params["final"] = True
    parse_custom_params(params)
    return params
