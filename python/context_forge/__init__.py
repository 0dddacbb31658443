"""Context Forge: an LLM serving engine with workflow-aware KV-cache management."""
__version__ = "0.1.0"
