"""Start a Context Forge server: ``python -m context_forge.launch_server [--config FILE] [--key value ...]``.

Reads ``--config FILE`` (YAML) plus command-line overrides into a ``ServerConfig``, resolves it
for this machine, and hands it to the chosen backend. A bad configuration prints one
``error: ...`` line to stderr and exits with status 2, before anything heavy is imported.
"""
from __future__ import annotations

import logging
import sys

from context_forge.config import ConfigError, ServerConfig

__all__ = ["main"]

USAGE = "usage: python -m context_forge.launch_server [--config FILE] [--KEY VALUE ...]"


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the server until it stops."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(USAGE + "\n\n" + ServerConfig.reference_markdown())
        return
    try:
        config = ServerConfig.from_sources(None, args).resolved()
    except ConfigError as exc:
        print(f"error: {exc}\n{USAGE}", file=sys.stderr)
        raise SystemExit(2) from None

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).info("configuration:\n%s", config.dump_yaml())

    if config.backend == "sglang":
        from context_forge.sglang.launch import launch
        from context_forge.sglang.version import UnsupportedSGLangVersion

        try:
            launch(config)
        except (ConfigError, UnsupportedSGLangVersion) as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    else:
        from context_forge.server.app import serve

        serve(config)


if __name__ == "__main__":
    main()
