"""Errors of the SScheduler client (workflow declaration errors are `context_forge`'s `WorkflowError`)."""

from __future__ import annotations


class SSchedulerError(Exception):
    """A run could not go on: the server refused a call, or the client was used wrongly."""


class ReplayError(SSchedulerError):
    """A trace replay stopped: a request failed; the message names the request and the cause."""
