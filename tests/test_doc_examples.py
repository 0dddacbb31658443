"""The README's and docs/api.md's request examples, run in order against a real server: every
curl command and Python snippet succeeds, and every workflow event they send is applied (none
repeats what the server already saw)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import httpx
import pytest

from context_forge.server.testing import Server

ROOT = Path(__file__).resolve().parent.parent
DOC_URL = "http://127.0.0.1:30000"
_CURL = re.compile(r"curl -s (\S+)(?:.*?-d '(.*?)')?$", re.S)


def section(path: str, heading: str) -> str:
    text = (ROOT / path).read_text()
    body = text.split(heading + "\n", 1)[1]
    return body.split("\n## ", 1)[0]


def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block, in order."""
    return re.findall(r"```(\w+)\n(.*?)```", markdown, re.S)


def curl_commands(code: str) -> list[tuple[str, str | None]]:
    """(url, JSON body or None) of each curl command of a bash block."""
    joined = code.replace("\\\n", " ")
    commands = [c for c in re.split(r"\n(?=curl )", joined) if c.startswith("curl ")]
    out = []
    for command in commands:
        command = "\n".join(line for line in command.splitlines() if not line.lstrip().startswith("#"))
        m = _CURL.match(command.strip())
        assert m, command
        out.append((m.group(1), m.group(2)))
    return out


def run_examples(server: Server, markdown: str) -> list[dict]:
    """Runs every block; returns the JSON answers of the event posts."""
    events = []
    blocks = code_blocks(markdown)
    assert blocks
    for lang, code in blocks:
        if lang == "python":
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(code.replace(DOC_URL, server.url), "<doc example>", "exec"), {})
            continue
        assert lang == "bash", lang
        for url, body in curl_commands(code):
            assert url.startswith(DOC_URL), url
            url = url.replace(DOC_URL, server.url)
            if body is None:
                r = httpx.get(url, timeout=60)
            else:
                json.loads(body)  # the example's body is valid JSON as written
                r = httpx.post(url, content=body.encode(), timeout=60, headers={"content-type": "application/json"})
            assert r.status_code < 400, (url, body, r.text)
            if url.endswith("/events"):
                events.append(r.json())
    return events


@pytest.mark.parametrize("path, heading", [("README.md", "## Talking to the server"), ("docs/api.md", "## Examples")])
def test_workflow_examples_run_and_every_event_applies(server: Server, path: str, heading: str) -> None:
    events = run_examples(server, section(path, heading))
    assert [e["event"] for e in events] == ["agent_finished", "workflow_finished"]
    assert all(e["applied"] for e in events), events
    assert "run-42" not in httpx.get(server.base_url + "/workflows").json()["data"]
