"""`python -m context_forge.server [--config FILE] [--key value ...]`: run the HTTP server."""

from __future__ import annotations

import logging
import sys

from context_forge.config import ConfigError, ServerConfig
from context_forge.server.app import serve


def main(argv: list[str] | None = None) -> int:
    try:
        config = ServerConfig.from_sources(None, list(sys.argv[1:] if argv is None else argv))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        serve(config)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
