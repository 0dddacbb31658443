"""Plugin settings, passed from the launcher to every SGLang process through one environment variable.

SGLang starts its scheduler processes with ``spawn``; they inherit the environment, so
``CONTEXT_FORGE_SGLANG`` (a JSON object of the fields below) reaches the process that builds the
radix cache. Unset, the defaults apply (useful when starting SGLang by hand).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ENV_VAR", "PRIORITY_SOURCES", "PluginSettings", "SettingsError"]

ENV_VAR = "CONTEXT_FORGE_SGLANG"
PRIORITY_SOURCES = ("steps", "blended")


class SettingsError(ValueError):
    """A plugin setting is invalid; the message names it."""


@dataclass(frozen=True)
class PluginSettings:
    """What the SGLang-side plugin needs from the Context Forge configuration.

    ``priority``: ``steps`` ranks agents by the steps clients declare (``custom_params.upcoming``,
    running agents 0); ``blended`` blends those with the next-agent predictor's expected steps
    (weight ``blend_weight`` on the declared steps).
    """

    load_ahead_step: int = 2
    evict_pri_level: int = 4
    priority: Literal["steps", "blended"] = "blended"
    blend_weight: float = 0.6
    predictor_smoothing: float = 0.1
    predictor_path: str | None = None
    enable_prefetch: bool = True
    prefetch_max_tokens: int = 65536
    max_live_workflows: int = 4096
    nodes_per_agent: int = 16

    def __post_init__(self) -> None:
        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise SettingsError(f"{name} must be an integer >= {minimum}, got {value!r}")

        for name, minimum in (("load_ahead_step", 0), ("evict_pri_level", 0), ("prefetch_max_tokens", 1),
                              ("max_live_workflows", 1), ("nodes_per_agent", 1)):
            integer(name, minimum)
        if self.evict_pri_level < self.load_ahead_step:
            raise SettingsError(
                f"evict_pri_level must be >= load_ahead_step ({self.load_ahead_step}), got {self.evict_pri_level!r}"
            )
        if self.priority not in PRIORITY_SOURCES:
            raise SettingsError(f"priority must be one of {', '.join(PRIORITY_SOURCES)}, got {self.priority!r}")
        for name, low, high in (("blend_weight", 0.0, 1.0), ("predictor_smoothing", 0.0, math.inf)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise SettingsError(f"{name} must be a number in [{low}, {high}], got {value!r}")
        if self.predictor_smoothing <= 0:
            raise SettingsError(f"predictor_smoothing must be > 0, got {self.predictor_smoothing!r}")
        if not isinstance(self.enable_prefetch, bool):
            raise SettingsError(f"enable_prefetch must be true or false, got {self.enable_prefetch!r}")
        if self.predictor_path is not None and not isinstance(self.predictor_path, str):
            raise SettingsError(f"predictor_path must be a string or null, got {self.predictor_path!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PluginSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(f"unknown plugin setting(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> PluginSettings:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{ENV_VAR} is not valid JSON: {exc}") from None
        if not isinstance(values, dict):
            raise SettingsError(f"{ENV_VAR} must hold a JSON object, got {type(values).__name__}")
        return cls.from_mapping(values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PluginSettings:
        """Settings from ``CONTEXT_FORGE_SGLANG``; the defaults when it is unset or empty."""
        text = (os.environ if environ is None else environ).get(ENV_VAR, "")
        return cls.from_json(text) if text.strip() else cls()
