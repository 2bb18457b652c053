"""The docs are the user's reference: the settings table lists every setting, the layout map is the tree's."""

from __future__ import annotations

import re

import yaml

from audioset_batch.settings import Settings
from tests.conftest import ROOT


def test_the_settings_table_lists_every_setting() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(AUDIOSET_[A-Z_]+)` \|", page, flags=re.MULTILINE))
    expected = {f"AUDIOSET_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def test_readme_quick_start_commands_exist_in_makefile() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    assert re.search(r"^demo:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_readme_is_read_to_the_end_in_minutes() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme))
    assert linked and all((ROOT / "docs" / page).is_file() for page in linked)


def test_every_docs_page_is_in_the_site_navigation() -> None:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    pages = {page for entry in nav for page in entry.values()}
    assert pages == {p.name for p in (ROOT / "docs").glob("*.md")}


def _layout_map() -> str:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    after = page.split("<!-- layout map: checked by tests/test_docs.py -->", 1)[1]
    return after.split("```", 2)[1]


def test_the_layout_map_names_every_package_and_module_that_exists() -> None:
    layout = _layout_map()
    # Every folder the map names at the top level or one level down exists ...
    named = re.findall(r"^(?:  )?([a-z_]+)/", layout, flags=re.MULTILINE)
    assert len(named) >= 10
    tops = {name for name in re.findall(r"^([a-z_]+)/", layout, flags=re.MULTILINE)}
    for name in named:
        assert (ROOT / name).is_dir() or (ROOT / "audioset_batch" / name).is_dir(), name
    # ... every package of the tree is on it ...
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - tops == set()
    core = {p.parent.name for p in (ROOT / "audioset_batch").glob("*/__init__.py")}
    assert core - set(named) == set()
    # ... and every module file it names is where it says.
    here = {p.name for top in tops | {"."} for p in (ROOT / top).glob("**/*.py" if top != "." else "*.py")}
    assert set(re.findall(r"\b([a-z_0-9]+\.py)\b", layout)) - here == set()
