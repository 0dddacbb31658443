"""Errors raised by the engine to its callers (the server maps them to HTTP responses)."""

from __future__ import annotations


class InvalidRequest(ValueError):
    """A request the engine refuses before allocating anything for it.

    ``param`` names the offending request field (OpenAI error convention), e.g. ``"max_tokens"``.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


class EngineError(RuntimeError):
    """The engine cannot serve the request (not started, shut down, or its step loop failed)."""


class DuplicateRequest(InvalidRequest):
    """A request id that is already being served."""

    def __init__(self, rid: str) -> None:
        super().__init__(f"request id {rid!r} is already in use", "rid")
