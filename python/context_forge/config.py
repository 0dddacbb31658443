"""``ServerConfig``: the one configuration object, built from YAML + command line, validated once.

Every key is both a YAML key and a command-line flag: ``page_size: 16`` in the file,
``--page-size 16`` or ``--page_size 16`` on the command line; the command line overrides the
file. Unknown keys, wrong types and bad values raise ``ConfigError`` naming the key (and a close
match for a misspelt key). Booleans take ``true/false/yes/no/on/off/1/0``; on the command line a
bare ``--flag`` means true and ``--no-flag`` false. ``null`` or ``none`` clears an optional key.
``pressure_thresholds`` takes four numbers, space- or comma-separated.

Construction checks values that need no hardware; ``resolved()`` then fills in what depends on
the machine (``device`` and ``dtype`` "auto", the CPU pool size, the load format of presets).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import difflib
import math
import os
import types
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from context_forge.cache.policy import available_policies, serving_policies
from context_forge.memory.pressure import DEFAULT_HYSTERESIS, DEFAULT_THRESHOLDS, check_thresholds

__all__ = ["ATTENTION_BACKENDS", "MODEL_PRESETS", "ConfigError", "ServerConfig"]

MODEL_PRESETS = ("tiny-llama", "llama3-8b")
"""Model names that need no directory (random weights, ``load_format: dummy``)."""
ATTENTION_BACKENDS = ("auto", "torch_sdpa", "triton")
CPU_DEFAULT_MAX_TOTAL_TOKENS = 65536
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NULL = {"null", "none", "~"}


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the bad value."""


def _opt(default: Any, help: str, choices: Any = None) -> Any:
    """A key: default, help text and, for a string key whose values come from a registry, a
    function returning the allowed values."""
    return field(default=default, metadata={"help": help, "choices": choices})


def _offline_only_hint(key: str, value: str) -> str | None:
    if key == "radix_eviction_policy" and value in available_policies() and value not in serving_policies():
        return f"{value} needs knowledge of the future and is simulator-only (use it with context-forge-sim, not for serving)"
    return None


@dataclass(frozen=True)
class ServerConfig:
    """All server settings. See ``reference_markdown()`` for the table of keys."""

    backend: Literal["native", "sglang"] = _opt("native", "Serving engine: the built-in one or real SGLang with the Context Forge plugin.")
    model_path: str = _opt("tiny-llama", "Local Hugging Face model directory, or a preset (tiny-llama, llama3-8b) used with random weights.")
    tokenizer_path: str | None = _opt(None, "Tokenizer directory; null = model_path when it is a directory, else the built-in byte tokenizer.")
    served_model_name: str | None = _opt(None, "Model name reported by the API; null = the preset name or the directory's name.")
    load_format: Literal["auto", "safetensors", "dummy"] = _opt("auto", "Weights: auto (safetensors if present; dummy for presets), safetensors, or dummy (random).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _opt("auto", "Model and KV dtype; auto = bfloat16 on cuda, float32 on cpu.")
    device: Literal["auto", "cpu", "cuda"] = _opt("auto", "Device; auto = cuda when available (CUDA or ROCm build), else cpu.")
    host: str = _opt("127.0.0.1", "Address the HTTP server binds.")
    port: int = _opt(30000, "HTTP port.")
    random_seed: int = _opt(0, "Seed for dummy weights and sampling.")
    context_length: int | None = _opt(None, "Maximum tokens per sequence; null = the model's max_position_embeddings.")
    page_size: int = _opt(16, "Tokens per KV page; the radix cache shares whole pages only (1 is allowed).")
    max_total_tokens: int | None = _opt(None, f"Device KV pool size in tokens; null = from mem_fraction_static on GPU, {CPU_DEFAULT_MAX_TOTAL_TOKENS} on CPU.")
    mem_fraction_static: float = _opt(0.85, "Fraction of GPU memory for weights plus the KV pool (when max_total_tokens is null).")
    max_running_requests: int | None = _opt(None, "Most requests decoding at once; null = limited by the KV pool only.")
    chunked_prefill_size: int = _opt(8192, "Prefill token budget per scheduler step; longer prompts are prefilled in chunks.")
    max_prefill_tokens: int = _opt(16384, "Most prompt tokens admitted into one prefill batch.")
    attention_backend: str = _opt("auto", "Attention implementation: " + ", ".join(ATTENTION_BACKENDS) + "; auto = triton (paged kernels, CUDA graphs) on a GPU where Triton imports, else torch_sdpa.")
    disable_cuda_graph: bool = _opt(False, "Run decode eagerly instead of replaying captured CUDA/HIP graphs (GPU with the triton backend only).")
    cuda_graph_max_bs: int | None = _opt(None, "Largest decode batch captured as a graph; null = min(64, max_running_requests).")
    disable_radix_cache: bool = _opt(False, "Turn prefix caching off (every request recomputes its prompt).")
    enable_hierarchical_cache: bool = _opt(False, "Keep evicted KV in a host-memory tier and load it back instead of recomputing.")
    hicache_ratio: float = _opt(2.0, "Host pool size as a multiple of the device pool; must be > 1 (as in SGLang, the host tier must be larger than the device pool).")
    hicache_size: float = _opt(0.0, "Host pool size in GB; 0 = use hicache_ratio.")
    hicache_write_policy: Literal["write_through", "write_back", "write_through_selective"] = _opt("write_through", "When device KV is copied to host: on insert, on eviction, or on insert for nodes hit more than once.")
    radix_eviction_policy: str = _opt("pbkv", "Eviction order: lru, kvflow (next use from declared workflow graphs and agents' learned recurrence), pbkv (kvflow plus the next-agent predictor for undeclared workflows).", serving_policies)
    load_ahead_step: int = _opt(2, "Prefetch KV of agents expected within this many steps.")
    evict_pri_level: int = _opt(4, "Next uses up to this many steps away are ranked exactly; farther ones in coarse geometric bands, after which KV no user is expected to need is evicted first; must be >= load_ahead_step.")
    blend_weight: float = _opt(0.6, "pbkv: weight of the workflow graph against the predictor (1 = graph only).")
    predictor_smoothing: float = _opt(0.1, "pbkv: additive smoothing of the next-agent Markov predictor.")
    predictor_path: str | None = _opt(None, "pbkv: JSON Lines file of predictor counts to start from.")
    enable_prefetch: bool = _opt(True, "Load KV of upcoming agents from host before their requests arrive (needs enable_hierarchical_cache).")
    prefetch_budget: float = _opt(0.25, "Share of the device pool that landed prefetches may hold protected (from eviction until their agent's request is admitted, the agent is no longer due or its workflow ends); a prefetch that does not fit beside it and the pages running and queued requests need is skipped; 0 = no protection, no budget.")
    prefetch_wait_mode: Literal["request", "layer"] = _opt("request", "A request whose prefix is still loading waits in the queue until the whole load has landed (request), or starts once the load is issued and its forward pass waits for each layer's KV (layer).")
    hicache_io_backend: Literal["auto", "kernel", "direct"] = _opt("auto", "GPU host->device loads (prefetches and on-demand loads of every policy): direct (copy-engine copies of whole pages into a device staging buffer, then a device-side scatter into the page slots; with prefetch_wait_mode layer in layer groups, so loads land layer by layer; no SM-resident kernel, so decode keeps its SMs), kernel (a Triton kernel on a side stream reads pinned host memory layer by layer: holds SMs for the whole copy; falls back to direct where it cannot run), auto = direct.")
    memory_monitor: Literal["auto", "none", "torch", "nvml", "rocm"] = _opt("auto", "Device-memory reader for pressure modes; an explicit choice fails if its package or device is missing.")
    pressure_thresholds: tuple[float, ...] = _opt(DEFAULT_THRESHOLDS, "Occupancy where NORMAL, PRESSURE, CRITICAL, EMERGENCY start: 4 increasing fractions in (0, 1).")
    pressure_hysteresis: float = _opt(DEFAULT_HYSTERESIS, "How far below a threshold occupancy must fall before the mode steps down.")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = _opt("info", "Logging level.")
    enable_metrics: bool = _opt(True, "Serve Prometheus metrics at /metrics.")
    api_key: str | None = _opt(None, "If set, requests must send 'Authorization: Bearer <api_key>'.")
    max_queued_requests: int | None = _opt(None, "Reject new requests when this many wait; null = unbounded.")
    max_request_bytes: int = _opt(8 * 1024 * 1024, "Largest HTTP request body in bytes; larger ones get 413 before they are read or parsed.")
    stream_interval: int = _opt(1, "Send a streaming chunk every this many decoded tokens.")

    def __post_init__(self) -> None:
        for name, annotation in _field_types().items():
            object.__setattr__(self, name, _coerce(name, getattr(self, name), annotation))
        self._validate()

    # ----- building -------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        """Every key, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "config") -> ServerConfig:
        """Build from a mapping of keys (``-`` or ``_`` spelling) to raw values."""
        return cls(**_typed(_normalise_keys(values, origin), origin))

    @classmethod
    def from_yaml(cls, path: str) -> ServerConfig:
        """Build from one YAML file."""
        return cls.from_dict(_load_yaml(path), origin=path)

    @classmethod
    def from_sources(cls, config_path: str | None, argv: list[str]) -> ServerConfig:
        """Build from an optional YAML file plus command-line overrides.

        ``argv`` may itself carry ``--config FILE`` (as ``launch_server`` passes it through);
        giving a file both ways is an error.
        """
        cli_path, overrides = _parse_argv(argv)
        if cli_path is not None and config_path is not None:
            raise ConfigError(f"config file given twice: {config_path!r} and --config {cli_path!r}")
        path = cli_path if cli_path is not None else config_path
        values: dict[str, Any] = {}
        if path is not None:
            values.update(_typed(_normalise_keys(_load_yaml(path), path), path))
        values.update(_typed(overrides, "the command line"))
        return cls(**values)

    def resolved(self, cuda_available: bool | None = None) -> ServerConfig:
        """A copy with machine-dependent values filled in; idempotent.

        ``cuda_available`` defaults to ``torch.cuda.is_available()`` (passing it lets callers
        resolve for a machine other than this one). Raises ``ConfigError`` when ``device: cuda``
        is asked for and no GPU is present.
        """
        if cuda_available is None:
            cuda_available = _cuda_available()
        device = self.device
        if device == "auto":
            device = "cuda" if cuda_available else "cpu"
        elif device == "cuda" and not cuda_available:
            raise ConfigError("device: 'cuda' was requested but no CUDA/ROCm device is available (torch.cuda.is_available() is False)")
        changes: dict[str, Any] = {"device": device}
        if self.dtype == "auto":
            changes["dtype"] = "bfloat16" if device == "cuda" else "float32"
        if self.max_total_tokens is None and device == "cpu":
            changes["max_total_tokens"] = CPU_DEFAULT_MAX_TOTAL_TOKENS
        if self.attention_backend == "auto":
            changes["attention_backend"] = (
                "triton" if device == "cuda" and importlib.util.find_spec("triton") is not None else "torch_sdpa")
        if self.load_format == "auto" and self.is_preset:
            changes["load_format"] = "dummy"
        if self.served_model_name is None:
            changes["served_model_name"] = self.model_path if self.is_preset else os.path.basename(os.path.normpath(self.model_path))
        if self.tokenizer_path is None and not self.is_preset and os.path.isdir(self.model_path):
            changes["tokenizer_path"] = self.model_path
        return dataclasses.replace(self, **changes)

    @property
    def is_preset(self) -> bool:
        """Whether ``model_path`` names a built-in preset rather than a directory."""
        return self.model_path in MODEL_PRESETS

    # ----- output ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain ``{key: value}`` (tuples as lists), loadable again with ``from_dict``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def dump_yaml(self) -> str:
        """The configuration as YAML text, loadable again as a config file."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def reference_markdown(cls) -> str:
        """A Markdown table of every key: name, type, default, help."""
        lines = [
            "Each key is a YAML key and a command-line flag (`page_size: 16` or `--page-size 16`);",
            "the command line overrides the file (`--config FILE`).",
            "",
            "| key | type | default | description |",
            "|---|---|---|---|",
        ]
        types_ = _field_types()
        for f in dataclasses.fields(cls):
            cells = [f"`{f.name}`", _describe_type(types_[f.name], _choices(f.name)), f"`{_yaml_scalar(f.default)}`",
                     f.metadata["help"]]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines) + "\n"

    # ----- validation -----------------------------------------------------------------------
    def _validate(self) -> None:
        def need(ok: bool, key: str, problem: str) -> None:
            if not ok:
                raise ConfigError(f"{key}: {problem}, got {getattr(self, key)!r}")

        need(bool(self.host.strip()), "host", "must not be empty")
        need(1 <= self.port <= 65535, "port", "must be in 1..65535")
        need(self.page_size >= 1, "page_size", "must be >= 1")
        need(self.chunked_prefill_size >= self.page_size, "chunked_prefill_size", f"must be >= page_size ({self.page_size})")
        need(self.max_prefill_tokens >= self.page_size, "max_prefill_tokens", f"must be >= page_size ({self.page_size})")
        if self.max_total_tokens is not None:
            need(self.max_total_tokens >= self.page_size, "max_total_tokens", f"must be >= page_size ({self.page_size})")
        for key in ("context_length", "max_running_requests", "max_queued_requests"):
            if getattr(self, key) is not None:
                need(getattr(self, key) >= 1, key, "must be >= 1")
        need(0.0 < self.mem_fraction_static < 1.0, "mem_fraction_static", "must be in (0, 1)")
        need(self.attention_backend in ATTENTION_BACKENDS, "attention_backend", f"must be one of {', '.join(ATTENTION_BACKENDS)}")
        need(self.cuda_graph_max_bs is None or self.cuda_graph_max_bs >= 1, "cuda_graph_max_bs", "must be >= 1 or null")
        need(not (self.disable_radix_cache and self.enable_hierarchical_cache), "enable_hierarchical_cache", "needs the radix cache (disable_radix_cache is true)")
        if self.enable_hierarchical_cache and self.hicache_size == 0:
            need(self.hicache_ratio > 1.0, "hicache_ratio", "must be > 1 with enable_hierarchical_cache (the host pool must be larger than the device pool)")
        need(self.hicache_ratio > 0.0, "hicache_ratio", "must be > 0")
        need(self.hicache_size >= 0.0, "hicache_size", "must be >= 0 (GB; 0 = use hicache_ratio)")
        need(self.load_ahead_step >= 0, "load_ahead_step", "must be >= 0")
        need(self.evict_pri_level >= self.load_ahead_step, "evict_pri_level", f"must be >= load_ahead_step ({self.load_ahead_step}) so prefetched agents are not in the evict-first tier")
        need(0.0 <= self.blend_weight <= 1.0, "blend_weight", "must be in [0, 1]")
        need(0.0 <= self.prefetch_budget <= 1.0, "prefetch_budget", "must be in [0, 1]")
        need(self.predictor_smoothing > 0.0, "predictor_smoothing", "must be > 0")
        need(self.stream_interval >= 1, "stream_interval", "must be >= 1")
        need(self.max_request_bytes >= 1024, "max_request_bytes", "must be >= 1024")
        try:
            check_thresholds(self.pressure_thresholds, self.pressure_hysteresis)
        except ValueError as exc:
            key = "pressure_hysteresis" if str(exc).startswith("hysteresis") else "pressure_thresholds"
            raise ConfigError(f"{key}: {exc}") from None
        for key in ("served_model_name", "api_key"):
            if getattr(self, key) is not None:
                need(bool(getattr(self, key).strip()), key, "must not be empty (use null to unset)")
        if self.predictor_path is not None:
            need(os.path.isfile(self.predictor_path), "predictor_path", "is not an existing file")
        if self.backend == "native":
            self._validate_model_paths()

    def _validate_model_paths(self) -> None:
        if self.is_preset:
            if self.load_format == "safetensors":
                raise ConfigError(f"load_format: preset {self.model_path!r} has no weights; use dummy or auto, got 'safetensors'")
        elif not os.path.isdir(self.model_path):
            raise ConfigError(f"model_path: {self.model_path!r} is neither a preset ({', '.join(MODEL_PRESETS)}) nor an existing directory")
        elif not os.path.isfile(os.path.join(self.model_path, "config.json")):
            raise ConfigError(f"model_path: directory {self.model_path!r} has no config.json")
        if self.tokenizer_path is not None and not os.path.exists(self.tokenizer_path):
            raise ConfigError(f"tokenizer_path: {self.tokenizer_path!r} does not exist")


# ----- type handling -----------------------------------------------------------------------
_TYPES: dict[str, Any] = {}
_FIELDS = {f.name: f for f in dataclasses.fields(ServerConfig)}


def _field_types() -> dict[str, Any]:
    if not _TYPES:
        _TYPES.update(get_type_hints(ServerConfig))
    return _TYPES


def _split_optional(annotation: Any) -> tuple[bool, Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return True, args[0]
    return False, annotation


def _choices(key: str) -> tuple[str, ...]:
    """The allowed values of a key: its ``Literal`` arguments or its registry's names."""
    f = _FIELDS[key]
    optional, inner = _split_optional(_field_types()[key])
    if get_origin(inner) is Literal:
        return get_args(inner)
    registry = f.metadata.get("choices")
    return tuple(registry()) if registry is not None else ()


def _describe_type(annotation: Any, choices: tuple[str, ...] = ()) -> str:
    optional, inner = _split_optional(annotation)
    if choices:
        text = "one of " + ", ".join(f"`{c}`" for c in choices)
    elif get_origin(inner) is tuple:
        text = "list of floats"
    else:
        text = {bool: "bool", int: "int", float: "float", str: "string"}[inner]
    return text + " or null" if optional else text


def _coerce(key: str, value: Any, annotation: Any, origin: str | None = None) -> Any:
    """Check ``value`` against the field's type, parsing strings (command line) as needed."""
    optional, inner = _split_optional(annotation)
    where = f" (from {origin})" if origin else ""

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{key}{where}: expected {expected}, got {value!r}")

    choices = _choices(key) if key in _FIELDS else ()
    text = value.strip().lower() if isinstance(value, str) else None
    if text in choices:
        return text
    if value is None or (text in _NULL and (optional or inner is not str)):
        if optional:
            return None
        raise bad("a value (this key cannot be null)")
    if choices:
        hint = _offline_only_hint(key, text or "")
        if hint:
            raise ConfigError(f"{key}{where}: {value!r} is not allowed: {hint}")
        raise bad("one of " + ", ".join(choices))
    if get_origin(inner) is tuple:
        items = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise bad("a list of numbers")
        return tuple(_coerce(key, v, float, origin) for v in items)
    if inner is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower() if isinstance(value, (str, int)) else ""
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise bad("true or false")
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise bad("an integer")
    if inner is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            raise bad("a finite number")
        return number
    if not isinstance(value, str):
        raise bad("a string")
    return value


def _typed(values: dict[str, Any], origin: str) -> dict[str, Any]:
    types_ = _field_types()
    return {k: _coerce(k, v, types_[k], origin) for k, v in values.items()}


def _normalise_keys(values: Any, origin: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: expected a mapping of keys to values, got {type(values).__name__}")
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in _field_types():
            raise ConfigError(f"unknown key {raw_key!r} in {origin}{_suggest(key, '')}")
        if key in out:
            raise ConfigError(f"key {key!r} appears twice in {origin}")
        out[key] = value
    return out


def _suggest(key: str, prefix: str) -> str:
    names = list(_field_types())
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if not close:
        return ""
    shown = prefix + close[0].replace("_", "-") if prefix else close[0]
    return f"; did you mean {shown!r}?"


def _load_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path!r} is not valid YAML: {exc}") from None
    return {} if data is None else data


def _parse_argv(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Split ``argv`` into (``--config`` path, {key: raw value}); raw values are strings."""
    types_ = _field_types()
    config_path: str | None = None
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument {token!r}; options look like --key value")
        name, eq, inline = token[2:].partition("=")
        key = name.replace("-", "_")
        negated = key.startswith("no_") and key not in types_ and types_.get(key[3:]) is bool
        if negated:
            key = key[3:]
        if key != "config" and key not in types_:
            raise ConfigError(f"unknown option {token.split('=')[0]!r} (from the command line){_suggest(key, '--')}")
        is_bool = types_.get(key) is bool
        is_list = get_origin(types_.get(key)) is tuple
        following: list[str] = []
        while i < len(argv) and not argv[i].startswith("--"):
            following.append(argv[i])
            i += 1
        if eq:
            following.insert(0, inline)
        if negated:
            if following:
                raise ConfigError(f"--no-{name[3:]} takes no value, got {following!r}")
            values[key] = False
            continue
        if is_bool and not following:
            values[key] = True
            continue
        if not following:
            raise ConfigError(f"option --{name} needs a value")
        if len(following) > 1 and not is_list:
            raise ConfigError(f"option --{name} takes one value, got {following!r}")
        if key == "config":
            config_path = following[0]
        else:
            values[key] = " ".join(following) if is_list else following[0]
    return config_path, values


def _yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True)
    return text.strip().removesuffix("...").strip()


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
