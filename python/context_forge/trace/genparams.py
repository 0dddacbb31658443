"""Registry and parameter plumbing of the trace generators.

A generator is a function ``build(params, builder)`` registered under a kind with a
parameter dataclass. Each parameter field carries its help text, minimum and optional maximum
in its metadata;
the same fields become the keyword arguments of ``generate`` and the CLI flags.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from context_forge.trace.builder import TraceBuilder
from context_forge.trace.records import DEFAULT_VOCAB_SIZE

__all__ = [
    "CommonParams",
    "SizeParams",
    "GeneratorSpec",
    "GENERATORS",
    "param",
    "register_generator",
    "make_params",
    "build_cli_parser",
]

_TYPES: dict[str, Any] = {"int": int, "float": (int, float), "str": str, "bool": bool}


def _type_name(f: dataclasses.Field[Any]) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def param(default: Any, help: str, minimum: float | None = None, maximum: float | None = None) -> Any:
    """A parameter field: default, help text for the CLI and an optional minimum and maximum."""
    return field(default=default, metadata={"help": help, "min": minimum, "max": maximum})


@dataclass
class CommonParams:
    seed: int = param(0, "random seed")
    vocab_size: int = param(DEFAULT_VOCAB_SIZE, "vocabulary bounding token ids", 1)
    name: str = param("", "meta name (default <kind>-s<seed>)")


@dataclass
class SizeParams(CommonParams):
    system_tokens: int = param(2048, "tokens of each agent's system prompt", 1)
    input_tokens: int = param(256, "mean new input tokens per request", 1)
    output_tokens: int = param(256, "mean output tokens per request", 1)
    think_s: float = param(0.5, "mean think time between dependent requests (s)", 0)
    history_limit: int = param(8192, "compact a history past this many tokens (0: never)", 0)


Build = Callable[[Any, TraceBuilder], None]


@dataclass(frozen=True)
class GeneratorSpec:
    kind: str
    params: type[CommonParams]
    build: Build
    summary: str


GENERATORS: dict[str, GeneratorSpec] = {}


def register_generator(kind: str, params: type[CommonParams], summary: str) -> Callable[[Build], Build]:
    """Decorator registering ``build`` as the generator of ``kind``."""

    def wrap(build: Build) -> Build:
        if kind in GENERATORS:
            raise ValueError(f"generator kind {kind!r} registered twice")
        GENERATORS[kind] = GeneratorSpec(kind, params, build, summary)
        return build

    return wrap


def make_params(kind: str, values: Mapping[str, Any]) -> CommonParams:
    """The parameter dataclass of ``kind`` from keyword values, checked by type and minimum."""
    spec = GENERATORS.get(kind)
    if spec is None:
        raise ValueError(f"unknown generator kind {kind!r} (known: {', '.join(GENERATORS)})")
    fields = {f.name: f for f in dataclasses.fields(spec.params)}
    for key, value in values.items():
        f = fields.get(key)
        if f is None:
            raise ValueError(f"{kind}: unknown parameter {key!r} (known: {', '.join(fields)})")
        type_name = _type_name(f)
        if not isinstance(value, _TYPES[type_name]) or (
            isinstance(value, bool) and type_name != "bool"
        ):
            raise ValueError(f"{kind}: parameter {key!r} must be {type_name}, got {value!r}")
        low = f.metadata.get("min")
        if low is not None and value < low:
            raise ValueError(f"{kind}: parameter {key!r} must be >= {low}, got {value!r}")
        high = f.metadata.get("max")
        if high is not None and value > high:
            raise ValueError(f"{kind}: parameter {key!r} must be <= {high}, got {value!r}")
    return spec.params(**values)


def build_cli_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """One subcommand per generator; ``--out`` plus one flag per parameter field."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="kind", required=True)
    for spec in GENERATORS.values():
        cmd = sub.add_parser(spec.kind, help=spec.summary, description=spec.summary)
        cmd.add_argument("--out", required=True, help="trace file to write ('-' for stdout)")
        for f in dataclasses.fields(spec.params):
            flag = "--" + f.name.replace("_", "-")
            if _type_name(f) == "bool":
                cmd.add_argument(flag, action="store_true", help=f.metadata["help"])
            else:
                convert = {"int": int, "float": float, "str": str}[_type_name(f)]
                text = f.metadata["help"]
                if "default" not in text:
                    text += f" (default {f.default!r})"
                cmd.add_argument(flag, type=convert, default=f.default, help=text)
    return parser
