"""Workflow-aware two-tier radix prefix cache over KV pages (pure Python + torch-free core)."""

from .node import LoadTicket, RadixNode
from .policy import (
    EvictionPolicy, PolicyContext, available_policies, build_policy, get_policy, policy_class,
    register_policy, serving_policies,
)
from context_forge.kv.pool import PagePool, PoolExhausted
from .radix import InsertResult, MatchResult, RadixTree
from .tiered import CacheStats, LoadPlan, RadixCache
from context_forge.kv.transfer import CountingTransfer, KVTransfer

__all__ = [
    "RadixNode", "LoadTicket", "EvictionPolicy", "PolicyContext", "available_policies", "build_policy",
    "get_policy", "policy_class", "register_policy", "serving_policies",
    "PagePool", "PoolExhausted", "InsertResult", "MatchResult", "RadixTree", "CacheStats", "LoadPlan",
    "RadixCache", "CountingTransfer", "KVTransfer",
]
