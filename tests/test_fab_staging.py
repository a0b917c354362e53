"""The staged Flower app (coordinator/federation/fab.py) packs into the same FAB as Flower's own
build of the source folder, while Flower's walk of the staged folder skips the .venv and every
other file the FAB never holds. The reference is Flower's ``build_fab_from_disk``."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from coordinator.federation.fab import staged_app
from coordinator.federation.runner import app_dir

PYPROJECT = """[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "mini-app"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "tests"
fab-include = ["pkg/**/*.py"]

[tool.flwr.app.components]
serverapp = "pkg.server:app"
clientapp = "pkg.client:app"

[tool.flwr.app.config]
rounds = 1
"""


def _names(fab: bytes) -> list[str]:
    return sorted(zipfile.ZipFile(BytesIO(fab)).namelist())


def test_the_staged_project_packs_into_flowers_own_fab_byte_for_byte(tmp_path: Path) -> None:
    staged = staged_app(app_dir(), tmp_path / "app")
    assert staged != app_dir()
    reference = build_fab_from_disk(app_dir())
    assert build_fab_from_disk(staged) == reference
    assert "coordinator/federation/server_app.py" in _names(reference)


def test_hidden_ignored_and_unpacked_files_stay_behind(tmp_path: Path) -> None:
    app = tmp_path / "src"
    for rel, text in {
        "pyproject.toml": PYPROJECT,
        ".gitignore": "build/\n*.log\n",
        "pkg/__init__.py": "",
        "pkg/server.py": "app = None\n",
        "pkg/client.py": "app = None\n",
        "pkg/sub/deep.py": "X = 1\n",
        "pkg/notes.md": "not in fab-include\n",
        "pkg/__pycache__/server.cpython-311.pyc": "bytecode",
        ".venv/lib/site.py": "a virtual environment\n",
        "build/lib/pkg/server.py": "a build output (git-ignored)\n",
        "tools/helper.py": "outside fab-include\n",
    }.items():
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        (app / rel).write_text(text)
    (app / "pkg" / "link.py").symlink_to(app / "tools" / "helper.py")
    staged = staged_app(app, tmp_path / "staged")
    on_disk = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert on_disk == [
        ".gitignore",
        "pkg/__init__.py",
        "pkg/client.py",
        "pkg/server.py",
        "pkg/sub/deep.py",
        "pyproject.toml",
    ]
    assert build_fab_from_disk(staged) == build_fab_from_disk(app)
