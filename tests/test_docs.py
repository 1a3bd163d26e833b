"""The docs: generated reference pages match the code, every page is in the nav, links hold."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FIX = "run `make docs` (or .venv/bin/python tools/gen_reference.py) and commit the result"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "tools/gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


def _nav_pages(nav: list) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _mkdocs() -> dict:
    class Loader(yaml.SafeLoader):  # mkdocs.yml names a Python function by a !!python tag
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


def test_generated_reference_pages_are_current() -> None:
    stale = gen.stale(gen.pages())
    assert not stale, f"stale generated docs: {', '.join('docs/' + p for p in stale)}: {FIX}"


def test_a_changed_page_is_reported_stale(tmp_path, monkeypatch) -> None:
    files = gen.pages()
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    monkeypatch.setattr(gen, "DOCS", tmp_path)
    assert gen.stale(files) == []
    (tmp_path / "reference-metrics.md").write_text("hand-edited")
    (tmp_path / "reference-cli.md").unlink()
    assert gen.stale(files) == ["reference-cli.md", "reference-metrics.md"]
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.stale(files) == []


def test_every_setting_is_documented_with_a_description() -> None:
    from worker.settings import Settings

    # Moved from test_deploy's README check: every setting is named in the docs, now in the
    # generated reference, and has a description there.
    text = (DOCS / "reference-settings.md").read_text()
    rows = dict(
        re.findall(r"^\| <a id=\"[a-z0-9_]+\"></a>`FAULTWATCH_([A-Z0-9_]+)` \|(.*)$", text, re.M)
    )
    missing = sorted(f.upper() for f in Settings.model_fields if f.upper() not in rows)
    assert not missing, f"settings missing from docs/reference-settings.md: {missing}: {FIX}"
    bare = sorted(n for n, f in Settings.model_fields.items() if not f.description)
    assert not bare, f"settings without description= in worker/settings.py: {bare}"


def test_every_metric_and_command_has_a_row() -> None:
    from cli.main import _parser

    metrics = (DOCS / "reference-metrics.md").read_text()
    for name in ("faultwatch_windows_scored_total", "faultwatch_score", "faultwatch_ready"):
        assert f"`{name}`" in metrics
    cli = (DOCS / "reference-cli.md").read_text()
    for name, _ in gen._subcommands(_parser()):
        assert f"## faultwatch {name}\n" in cli


def test_the_messages_page_names_every_reason() -> None:
    from model.episodes import CLOSE_REASONS
    from worker.inputs.windows import REASONS

    text = (DOCS / "reference-messages.md").read_text()
    for reason in (*REASONS, *CLOSE_REASONS):
        assert f"`{reason}`" in text, reason
    assert '--8<-- "schemas/window.schema.json"' in text  # the generated schema, included


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    nav = _nav_pages(_mkdocs()["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    unlisted, absent = sorted(set(pages) - set(nav)), sorted(set(nav) - set(pages))
    assert not unlisted, f"pages missing from mkdocs.yml's nav (docs/contributing.md): {unlisted}"
    assert not absent, f"mkdocs.yml's nav names pages docs/ does not have: {absent}"
    assert len(set(nav)) == len(nav), "a page is in the nav twice"


def test_theme_fetches_nothing_at_build_time() -> None:
    config = _mkdocs()
    assert config["theme"]["font"] is False  # Material's Google Fonts: a download
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in config.get("plugins", [])]
    assert set(plugins) <= {"search"}, plugins  # privacy, social... download at build time


def test_readme_is_short_and_its_links_hold() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    quick = text.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in quick.splitlines()] == [["make", "demo"], ["make", "test"]]
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links and all((ROOT / link).exists() for link in links), links
    for page in ("reference-settings.md", "reference-metrics.md", "reference-cli.md"):
        assert f"docs/{page}" in text and f"({page})" in (DOCS / "index.md").read_text()
