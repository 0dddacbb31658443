"""Pick an attention backend by name: every built-in backend is imported here, so registering one
is one decorated class in its own module plus one import line below."""
from __future__ import annotations

import torch

import context_forge.attention.torch_sdpa  # noqa: F401  (registers itself)
import context_forge.attention.triton_backend  # noqa: F401
from context_forge.attention.base import _BACKENDS, AttentionBackend

__all__ = ["available_attention_backends", "default_attention_backend", "get_attention_backend"]


def available_attention_backends() -> list[str]:
    return sorted(_BACKENDS.names())


def default_attention_backend() -> str:
    """``triton`` when a GPU is visible and Triton imports, else ``torch_sdpa``."""
    if torch.cuda.is_available():
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch_sdpa"
        return "triton"
    return "torch_sdpa"


def get_attention_backend(name: str, **kwargs: object) -> AttentionBackend:
    """A new instance of the backend registered as ``name`` (``auto``: ``default_attention_backend()``)."""
    if name == "auto":
        name = default_attention_backend()
    return _BACKENDS.lookup(name, sort_names=True)(**kwargs)
