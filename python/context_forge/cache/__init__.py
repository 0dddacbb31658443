"""Workflow-aware two-tier radix prefix cache over KV pages (pure Python + torch-free core)."""

from .node import LoadTicket, RadixNode
from .policy import EvictionPolicy, available_policies, get_policy, register_policy
from .pool import PagePool, PoolExhausted
from .radix import InsertResult, MatchResult, RadixTree
from .tiered import CacheStats, LoadPlan, RadixCache
from .transfer import CountingTransfer, KVTransfer

__all__ = [
    "RadixNode", "LoadTicket", "EvictionPolicy", "available_policies", "get_policy", "register_policy",
    "PagePool", "PoolExhausted", "InsertResult", "MatchResult", "RadixTree", "CacheStats", "LoadPlan",
    "RadixCache", "CountingTransfer", "KVTransfer",
]
