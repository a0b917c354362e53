"""The Flower app folder that ``flwr run`` packs into a FAB, without the cost of the source tree.

``flwr run APP`` (Flower 1.42) walks, stats and resolves every file under ``APP`` before its
filters keep the app's files: in a source tree with its ``.venv`` inside that is about 180,000
paths, 5-9 s on 2 cores for a FAB of 156 files, paid by every federation run and every test
that starts one. ``staged_app`` copies exactly the files Flower would pack (chosen by Flower's
own publish and ``fab-include`` filters, from a walk that skips hidden, cache and git-ignored
folders) into a fresh folder, so the FAB built from it is the same, byte for byte.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from shared.toml_files import read_toml

FAB_CONFIG = "pyproject.toml"


def _walk(root: Path) -> dict[str, Path]:
    """Relative POSIX path -> file under ``root``, skipping hidden and ``__pycache__``
    folders and the folders ``root/.gitignore`` names (none of them is ever packed)."""
    from flwr.cli.utils import build_pathspec, load_gitignore_patterns

    ignore_file = root / ".gitignore"
    ignored = build_pathspec(
        tuple(load_gitignore_patterns(ignore_file.read_bytes() if ignore_file.is_file() else b""))
    )
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".")
            and d != "__pycache__"
            and not ignored.match_file((rel_dir / d).as_posix() + "/")
        ]
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():  # Flower skips links too
                files[(rel_dir / name).as_posix()] = path
    return files


def staged_app(app: Path, dest: Path) -> Path:
    """Copy the files of the Flower app in ``app`` (its ``pyproject.toml`` is there) that its
    FAB holds into ``dest`` (made here, must not exist) and return ``dest``. Uses Flower
    1.42's own filters (flwr is pinned below 1.43; tests/test_fab_staging.py compares the
    FABs byte for byte, so a change in them fails there, not silently)."""
    from flwr.cli.build import get_filtered_fab_paths
    from flwr.cli.utils import filter_paths_for_publish

    files = _walk(app)
    config = read_toml(files[FAB_CONFIG], "the Flower app's")
    kept = filter_paths_for_publish(files)
    chosen = set(get_filtered_fab_paths(kept, config)) | {FAB_CONFIG}  # type: ignore[arg-type]
    if ".gitignore" in files:
        chosen.add(".gitignore")
    dest.mkdir(parents=True)
    for rel in sorted(chosen):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[rel], target)
    return dest
