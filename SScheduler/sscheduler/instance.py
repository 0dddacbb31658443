"""A live instance of a workflow: call its agents, skip optional ones, finish it.

Use it as `async with sched.instance(workflow) as inst:` (declared on enter, finished on exit,
also when the body raises) or `inst = await sched.start(workflow)` ... `await inst.finish()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sscheduler.calls import CallResult, stream_chat, stream_completion
from sscheduler.errors import SSchedulerError
from sscheduler.workflow import Workflow

if TYPE_CHECKING:
    from sscheduler.scheduler import SScheduler

__all__ = ["AgentReply", "WorkflowInstance"]


@dataclass(frozen=True)
class AgentReply:
    """An agent's answer to one call. `str(reply)` is its text."""

    agent_id: str
    text: str
    finish_reason: str | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    latency_s: float
    ttft_s: float | None

    @classmethod
    def of(cls, agent_id: str, r: CallResult) -> AgentReply:
        return cls(agent_id, r.text, r.finish_reason, r.prompt_tokens, r.cached_tokens, r.completion_tokens,
                   r.latency_s, r.ttft_s)

    def __str__(self) -> str:
        return self.text


class WorkflowInstance:
    """One run of a `Workflow` on the server, named `instance_id` (the `workflow_id` it sends)."""

    def __init__(self, sched: SScheduler, workflow: Workflow, instance_id: str) -> None:
        if not isinstance(instance_id, str) or not instance_id:
            raise ValueError(f"instance_id must be a non-empty string, got {instance_id!r}")
        self.workflow = workflow
        self.instance_id = instance_id
        self._sched = sched
        self._state = "new"

    @property
    def started(self) -> bool:
        return self._state != "new"

    @property
    def finished(self) -> bool:
        return self._state == "finished"

    async def start(self) -> WorkflowInstance:
        """Declares the instance (its graph) to the server; once only."""
        if self._state != "new":
            raise SSchedulerError(f"workflow instance {self.instance_id!r} was already started")
        self._state = "running"
        await self._sched.target.instance_started(self.instance_id, self.workflow.graph)
        return self

    async def call(
        self,
        agent_id: str,
        message: str | Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra_body: Mapping[str, Any] | None = None,
        final: bool = False,
        **params: Any,
    ) -> AgentReply:
        """Chat with an agent: its system prompt, then `message` (a user message, or a list of chat
        messages such as the conversation so far). `max_tokens` / `temperature` default to the
        agent's; other keyword arguments go to `chat.completions.create` as they are. `final`
        marks the instance's last request (the `sglang` target tells the server)."""
        agent = self._check(agent_id)
        messages: list[dict[str, Any]] = []
        if agent.system_prompt:
            messages.append({"role": "system", "content": agent.system_prompt})
        if isinstance(message, str):
            messages.append({"role": "user", "content": message})
        elif isinstance(message, Sequence) and all(isinstance(m, Mapping) for m in message):
            messages.extend(dict(m) for m in message if isinstance(m, Mapping))
        else:
            raise TypeError(f"message must be a string or a list of chat messages, got {type(message).__name__}")
        return await self._send(agent_id, stream_chat, messages, max_tokens, temperature, extra_body, final, params)

    async def complete(
        self,
        agent_id: str,
        prompt: str | Sequence[int],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra_body: Mapping[str, Any] | None = None,
        final: bool = False,
        **params: Any,
    ) -> AgentReply:
        """A text completion for an agent (`prompt` is text or token ids; no system prompt is added)."""
        self._check(agent_id)
        if not isinstance(prompt, str) and not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise TypeError("prompt must be a string or a list of token ids (integers)")
        return await self._send(
            agent_id, stream_completion, prompt, max_tokens, temperature, extra_body, final, params
        )

    async def skip(self, agent_id: str) -> None:
        """Reports that an optional agent will not run in this round."""
        agent = self._check(agent_id)
        if not agent.optional:
            raise SSchedulerError(
                f"agent {agent_id!r} of workflow {self.workflow.name!r} is not optional; "
                "only optional agents are skipped"
            )
        await self._sched.target.agent_skipped(self.instance_id, agent_id)

    async def finish(self) -> None:
        """Tells the server the instance ended (its agents stop counting). Idempotent."""
        if self._state == "finished":
            return
        was_started = self._state == "running"
        self._state = "finished"
        if was_started:
            await self._sched.target.instance_finished(self.instance_id)

    async def __aenter__(self) -> WorkflowInstance:
        if self._state == "new":
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.finish()

    def _check(self, agent_id: str) -> Any:
        if self._state == "new":
            raise SSchedulerError(
                f"workflow instance {self.instance_id!r} is not started; use 'async with' or 'await instance.start()'"
            )
        if self._state == "finished":
            raise SSchedulerError(f"workflow instance {self.instance_id!r} is finished")
        return self.workflow.agent(agent_id)

    async def _send(
        self, agent_id: str, call: Any, payload: Any, max_tokens: int | None, temperature: float | None,
        extra_body: Mapping[str, Any] | None, final: bool, params: dict[str, Any],
    ) -> AgentReply:
        agent = self.workflow.agent(agent_id)
        max_tokens = agent.max_tokens if max_tokens is None else max_tokens
        temperature = agent.temperature if temperature is None else temperature
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        if temperature is not None:
            params["temperature"] = temperature
        sched = self._sched
        model = await sched.model_name()
        body = dict(extra_body or {})
        body.update(await sched.target.before_request(self.instance_id, agent_id, final))
        try:
            result = await call(sched.client, model, payload, extra_body=body, **params)
        finally:
            await sched.target.after_request(self.instance_id, agent_id)
        return AgentReply.of(agent_id, result)
