"""Context Forge as a plugin for real SGLang (``pip install 'sglang>=0.5.23,<0.5.24'`` on GPU machines).

- `plugin.register`: the ``sglang.srt.plugins`` entry point (``workflow`` radix-cache backend and
  eviction policy); `cache.WorkflowRadixCache` and `strategy.WorkflowStrategy` implement them.
- `metadata`: the ``custom_params`` format clients send (``to_custom_params`` builds it).
- `launch`: ``build_sglang_args(config)`` and ``launch(config)`` for ``backend: sglang``.

Importing this package does not import SGLang; `cache`, `strategy` and `plugin.register` do.
"""
from context_forge.sglang.metadata import MetadataError, WorkflowMeta, parse_custom_params, to_custom_params
from context_forge.sglang.version import SUPPORTED_SGLANG, UnsupportedSGLangVersion, check_sglang_version

__all__ = [
    "SUPPORTED_SGLANG",
    "MetadataError",
    "UnsupportedSGLangVersion",
    "WorkflowMeta",
    "check_sglang_version",
    "parse_custom_params",
    "to_custom_params",
]
