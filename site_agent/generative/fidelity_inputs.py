"""What a fidelity report is computed from, as one digest, and the stored report it matches.

A site reads its fidelity report again (``site-agent fidelity``) after ``generate`` wrote it;
when nothing it is computed from has changed, the stored report is the answer, and recomputing
it would cost an import of the models and an encoding of every case for the same numbers. The
digest covers every input: the case files of both stores (images, masks and labels), the
autoencoder's weights, the split of the real cases (``holdout.json``, read by the diagnostics)
and the latent cache's index, the report's settings, and the code that computes it (the
sources of ``site_agent.generative``, ``shared.classifier`` and the shared modules it uses,
and the versions of the numerical libraries). No torch here: the device is not part of it
(``--recompute`` after moving a workspace to a GPU machine).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from shared.bundle.format import sha256_file
from shared.case_format import list_cases
from site_agent.generative.data import real_store
from site_agent.generative.layout import (
    WEIGHTS,
    holdout_path,
    latent_index_path,
    model_dir,
    synthetic_store,
)

REPORT_FILES = {"json": "fidelity.json", "markdown": "fidelity.md", "montage": "montage.png"}
LIBRARIES = ("numpy", "scipy", "scikit-learn", "torch", "monai")
SHARED_MODULES = ("profiles.py", "metrics.py", "case_format.py", "weights.py", "volume.py")


def _code_digest() -> str:
    """SHA-256 of the sources that compute the report and the library versions it runs on: a
    new version of either recomputes it."""
    from importlib.metadata import PackageNotFoundError, version

    import shared
    import shared.classifier

    here, shared_dir = Path(__file__).parent, Path(shared.__file__).parent
    sources = [*here.glob("*.py"), *Path(shared.classifier.__file__).parent.glob("*.py")]
    sources += [shared_dir / name for name in SHARED_MODULES]
    h = hashlib.sha256()
    for src in sorted(sources):
        h.update(src.relative_to(shared_dir.parent).as_posix().encode() + b"\0")
        h.update(src.read_bytes())
    for lib in LIBRARIES:
        try:
            h.update(f"{lib}=={version(lib)};".encode())
        except PackageNotFoundError:
            h.update(f"{lib} absent;".encode())
    return h.hexdigest()


def inputs_digest(workspace: Path, settings: dict[str, Any]) -> str:
    """SHA-256 over the report's settings, its code and the content of every input file."""
    ws = Path(workspace)
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(_code_digest().encode())
    files = [model_dir(ws, "autoencoder") / WEIGHTS, holdout_path(ws), latent_index_path(ws)]
    for store in (real_store(ws), synthetic_store(ws)):
        for case in list_cases(store):
            files += sorted(p for p in case.rglob("*") if p.is_file())
    for path in files:
        h.update(path.relative_to(ws).as_posix().encode() + b"\0")
        h.update((sha256_file(path) if path.is_file() else "absent").encode())
    return h.hexdigest()


def report_paths(out_dir: Path) -> dict[str, Path]:
    return {k: Path(out_dir) / name for k, name in REPORT_FILES.items()}


def stored_report(out_dir: Path, digest: str) -> dict[str, Any] | None:
    """The report stored in ``out_dir`` if it was computed from inputs with ``digest`` and all
    its files are there (``fidelity.json`` is written last); None otherwise."""
    paths = report_paths(out_dir)
    try:
        report = json.loads(paths["json"].read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("inputs_sha256") != digest:
        return None
    if not all(p.is_file() for p in paths.values()):
        return None
    return report
