"""Rewrite the configuration reference in README.md from ServerConfig (run after changing config keys)."""

from __future__ import annotations

import sys
from pathlib import Path

from context_forge.config import ServerConfig

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def render(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{ServerConfig.reference_markdown().strip()}\n{END}{tail}"


def main() -> int:
    path = Path(__file__).resolve().parent.parent / "README.md"
    path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
