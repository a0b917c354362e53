"""What a fidelity report is computed from, as one digest, and the stored report it matches.

A site reads its fidelity report again (``site-agent fidelity``) after ``generate`` wrote it;
when nothing it is computed from has changed, the stored report is the answer, and recomputing
it would cost an import of the models and an encoding of every case for the same numbers. The
digest covers every input: the case files of both stores (images, masks and labels), the
autoencoder's weights, the latent cache's index (it decides which real cases were training
cases), the report's settings, and the code that computes it (the sources of
``site_agent.generative`` and ``shared.classifier``). No torch here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from shared.bundle.format import sha256_file
from shared.case_format import list_cases
from site_agent.generative.data import real_store
from site_agent.generative.layout import WEIGHTS, model_dir, synthetic_store, work_dir

REPORT_FILES = {"json": "fidelity.json", "markdown": "fidelity.md", "montage": "montage.png"}


def _code_digest() -> str:
    """SHA-256 of the sources that compute the report: a new version recomputes it."""
    import shared.classifier

    h = hashlib.sha256()
    for package in (Path(__file__).parent, Path(shared.classifier.__file__).parent):
        for src in sorted(package.glob("*.py")):
            h.update(src.name.encode() + b"\0" + src.read_bytes())
    return h.hexdigest()


def inputs_digest(workspace: Path, settings: dict[str, Any]) -> str:
    """SHA-256 over the report's settings, its code and the content of every input file."""
    ws = Path(workspace)
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(_code_digest().encode())
    files = [model_dir(ws, "autoencoder") / WEIGHTS, work_dir(ws, "latents") / "index.json"]
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
    its files are there; None otherwise."""
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
