"""The README's configuration reference matches the code, and its quick-start commands exist."""

from pathlib import Path

from context_forge.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent


def test_readme_config_reference_is_current():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- config-reference:start -->")[1].split("<!-- config-reference:end -->")[0]
    assert block.strip() == ServerConfig.reference_markdown().strip(), (
        "README configuration reference is stale: run python scripts/update_readme_reference.py")


def test_quick_start_commands_point_at_real_files():
    readme = (ROOT / "README.md").read_text()
    assert "python -m context_forge.launch_server --config configs/tiny-cpu.yaml" in readme
    assert "bash scripts/test.sh" in readme
    assert (ROOT / "configs/tiny-cpu.yaml").is_file()
    ci = (ROOT / ".ci/run").read_text()
    assert "bash scripts/test.sh" in ci


def _first_command(markdown: str, prefix: str) -> str:
    """The first line of a fenced bash block that contains `prefix`, from `prefix` on."""
    for block in markdown.split("```bash\n")[1:]:
        for line in block.split("```")[0].splitlines():
            if prefix in line:
                return line[line.index(prefix):].strip()
    raise AssertionError(f"no bash block runs {prefix!r}")


def test_api_doc_starts_the_server_exactly_as_the_readme_does():
    readme = (ROOT / "README.md").read_text()
    api = (ROOT / "docs/api.md").read_text()
    start = "python -m context_forge."
    assert _first_command(api, start) == _first_command(readme, start)
    assert _first_command(readme, start) == "python -m context_forge.launch_server --config configs/tiny-cpu.yaml"


def test_api_doc_lists_every_metric():
    import re

    from context_forge.metrics import Metrics

    api = (ROOT / "docs/api.md").read_text()
    table = api.split("## Metrics", 1)[1]
    documented = {name.split("{")[0] for name in re.findall(r"`([a-z0-9_]+(?:\{[^}`]*\})?)`", table)}
    exported = {name.removeprefix("context_forge_") for name in Metrics().registry.names()}
    assert exported <= documented, f"metrics missing from docs/api.md: {sorted(exported - documented)}"


def test_layout_table_names_every_package_folder():
    """Every folder of ``python/context_forge`` has a row in the README's layout table, and every
    path the table names exists."""
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    named: set[str] = set()
    for row in rows:
        first_cell = row.split("|")[1]
        paths = [p for p in first_cell.split("`") if p.strip(", ")]
        for path in paths:
            if "/" in path:
                named.add(path.rstrip("/"))
    for path in named:
        assert (ROOT / path).exists(), f"README layout table names {path}, which does not exist"
    pkg = ROOT / "python" / "context_forge"
    folders = sorted(p.name for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    missing = [f for f in folders if f"python/context_forge/{f}" not in named]
    assert not missing, f"README layout table has no row for {missing}"
