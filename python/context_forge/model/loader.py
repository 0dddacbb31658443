"""Builds a model on its target device and dtype and fills its weights.

The network is first built on the ``meta`` device (no memory, no init kernels), then materialised
with ``to_empty`` directly on the target device, then either loaded from safetensors tensor by tensor
or filled in place with seeded random numbers. A full-size dummy model therefore never exists in host
memory and builds in seconds on a GPU.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from context_forge.model.config import PRESETS, ModelConfig
from context_forge.model.registry import get_model_class

LOAD_FORMATS = ("auto", "safetensors", "dummy")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16}
INDEX_FILE = "model.safetensors.index.json"


def resolve_device(device: torch.device | str) -> torch.device:
    """``cpu`` or ``cuda[:n]`` (ROCm builds of torch also answer to ``cuda``)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"invalid device {device!r}; use 'cpu' or 'cuda[:N]'") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use 'cpu' or 'cuda[:N]'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no GPU")
    return dev


def resolve_dtype(dtype: torch.dtype | str, device: torch.device | str) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU and float32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use 'auto' or one of {sorted(DTYPES)}") from None


def load_model(model_path: str | Path | None, load_format: str = "auto",
               dtype: torch.dtype | str = "auto", device: torch.device | str = "cpu",
               model_config: ModelConfig | None = None, seed: int = 0,
               attention_backend: str = "torch_sdpa") -> tuple[nn.Module, ModelConfig]:
    """Build the model for ``model_path`` and return it (eval mode) with its config.

    ``model_path`` is a Hugging Face model directory, or (dummy weights only) a preset name such as
    ``tiny-llama`` or ``None`` (= ``tiny-llama``). ``model_config`` overrides the directory's
    ``config.json``. ``load_format``: ``safetensors`` (the directory's ``*.safetensors``, single or
    sharded), ``dummy`` (random, deterministic for ``seed``), ``auto`` (safetensors, error if none)."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load_format {load_format!r}; use one of {list(LOAD_FORMATS)}")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    directory = _model_dir(model_path, load_format)
    config = model_config or _config_for(model_path, directory)
    files: list[Path] = []
    if load_format != "dummy":
        assert directory is not None
        files = safetensors_files(directory)
    model = get_model_class(config.architecture)(config, attention_backend, device="meta",
                                                 dtype=torch_dtype)
    model.to_empty(device=dev)
    model.tie_weights()
    if load_format == "dummy":
        model.init_dummy_weights(seed)
    else:
        model.load_weights(iter_safetensors(files))
    return model.eval(), config


def _model_dir(model_path: str | Path | None, load_format: str) -> Path | None:
    if model_path is None or (load_format == "dummy" and str(model_path) in PRESETS
                              and not Path(model_path).is_dir()):
        if load_format != "dummy":
            raise ValueError(f"load_format {load_format!r} needs a model directory; model_path is "
                             f"{model_path!r} (use load_format='dummy' for random weights)")
        return None
    directory = Path(model_path)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory} (known presets for dummy "
                                f"weights: {sorted(PRESETS)})")
    return directory


def _config_for(model_path: str | Path | None, directory: Path | None) -> ModelConfig:
    if directory is not None:
        return ModelConfig.from_file(directory)
    return ModelConfig.preset(str(model_path) if model_path is not None else "tiny-llama")


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files of a model directory: those named by the shard index when there is one."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({e!r})") from None
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{directory}: shards named in {INDEX_FILE} are missing: {missing}")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {directory} (use load_format='dummy' "
                                f"for random weights)")
    return files


def iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor in ``files``, one tensor in memory at a time."""
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
