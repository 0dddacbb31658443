"""SScheduler: declare multi-agent workflows, run many instances against an OpenAI-compatible server
with workflow metadata attached (Context Forge, SGLang with the Context Forge plugin, or any other),
and replay workload traces (`sscheduler replay`)."""

from sscheduler.calls import CallResult
from sscheduler.errors import ReplayError, SSchedulerError
from sscheduler.instance import AgentReply, WorkflowInstance
from sscheduler.replay import ReplayResult, RequestRecord, replay_trace
from sscheduler.scheduler import SScheduler
from sscheduler.stats import ReplaySummary, percentile
from sscheduler.targets import Target, make_target, register_target, target_names
from sscheduler.workflow import Agent, Workflow

__all__ = [
    "Agent",
    "AgentReply",
    "CallResult",
    "ReplayError",
    "ReplayResult",
    "ReplaySummary",
    "RequestRecord",
    "SScheduler",
    "SSchedulerError",
    "Target",
    "Workflow",
    "WorkflowInstance",
    "make_target",
    "percentile",
    "register_target",
    "replay_trace",
    "target_names",
]
