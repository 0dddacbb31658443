"""Maps a Hugging Face ``architectures[0]`` name to the torch implementation that runs it."""
from __future__ import annotations

from typing import Callable, TypeVar

from torch import nn

from context_forge.model.llama import LlamaFamilyForCausalLM

_M = TypeVar("_M", bound=type[nn.Module])
_MODELS: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaFamilyForCausalLM,
    "MistralForCausalLM": LlamaFamilyForCausalLM,
    "Qwen2ForCausalLM": LlamaFamilyForCausalLM,
    "Qwen3ForCausalLM": LlamaFamilyForCausalLM,
}


def register_model(architecture: str) -> Callable[[_M], _M]:
    """Class decorator: run checkpoints whose ``architectures[0]`` is ``architecture`` with the class."""

    def deco(cls: _M) -> _M:
        if architecture in _MODELS and _MODELS[architecture] is not cls:
            raise ValueError(f"model architecture {architecture!r} is already registered")
        _MODELS[architecture] = cls
        return cls

    return deco


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(architecture: str) -> type[nn.Module]:
    try:
        return _MODELS[architecture]
    except KeyError:
        raise ValueError(f"unsupported model architecture {architecture!r}; supported: "
                         f"{supported_architectures()}") from None
