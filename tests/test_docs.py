"""The README's settings table is the user's reference: it must list every setting."""

from __future__ import annotations

import re

from audioset_batch.settings import Settings
from tests.conftest import ROOT


def test_readme_settings_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(AUDIOSET_[A-Z_]+)` \|", readme, flags=re.MULTILINE))
    expected = {f"AUDIOSET_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def test_readme_quick_start_commands_exist_in_makefile() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    assert re.search(r"^demo:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
