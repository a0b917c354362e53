"""PACS pull throughput: ``site-agent pull`` against plain whole-study retrieves, one Orthanc.

Steps, all in one run on one machine, against one Orthanc (own config, loopback ports) loaded
with one phantom site (localizers, sagittal T2, DCE and every DWI series included):

1. ours, DICOMweb: ``pull`` (QIDO-RS queries and metadata, the scan's rules, WADO-RS of the
   chosen instances, verification scan), timed end to end;
2. ours, DIMSE: ``pull`` with C-FIND + C-GET, and with C-MOVE to our own SCP;
3. peers, whole studies: ``dicomweb-client`` ``retrieve_study`` (written to disk), dcmtk
   ``getscu`` and dcmtk ``movescu`` to a dcmtk ``storescp``, one study after another;
4. figures: instances/s and MB/s of each, the time to have what ingest needs (ours: the chosen
   series; peers: the whole studies) with the ratio peer / ours, and the fraction of bytes the
   series selection avoids (1 − our bytes / whole-study bytes).

Run: ``python -m benchmarks.pacs_pull [--studies 12] [--profile cpu] [--out DIR]``.
Needs the Debian packages orthanc, orthanc-dicomweb and dcmtk, and dicomweb-client.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.host import cpu_model
from shared.atomic import atomic_write_json
from shared.phantom.consortium import generate_site
from site_agent.ingest.credentials import Credentials
from site_agent.ingest.dicomweb import DicomWebSource
from site_agent.ingest.dimse import DimseConfig, DimseSource
from site_agent.ingest.pull import pull
from site_agent.ingest.sources import Limits, StudyQuery
from tests.orthanc_support import (
    AGENT_AE,
    PACS_AE,
    PASSWORD,
    USER,
    OrthancServer,
    free_port,
    orthanc_missing,
)

ROOT = Path(__file__).resolve().parents[1]
STORESCP_AE = "STORESCP"


def _tree(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return len(files), sum(p.stat().st_size for p in files)


def _rate(name: str, seconds: float, n: int, nbytes: int) -> dict[str, Any]:
    return {
        "name": name,
        "seconds": seconds,
        "instances": n,
        "bytes": nbytes,
        "instances_per_s": n / seconds if seconds else 0.0,
        "mb_per_s": nbytes / 1e6 / seconds if seconds else 0.0,
    }


def ours(source: Any, ws: Path, limits: Limits, label: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        report = pull(source, ws, [StudyQuery()], limits)
    finally:
        source.close()
    seconds = time.perf_counter() - t0
    n, nbytes = _tree(ws / "incoming")
    out = _rate(label, seconds, n, nbytes)
    out.update(
        query_bytes=report.query_bytes,
        study_instances=report.study_instances,
        modes=[p["mode"] for p in report.plans],
        usable=len(report.usable_studies),
        phase_seconds=report.phase_seconds,
    )
    return out


def dicomweb_client_whole(pacs: OrthancServer, studies: list[str], out: Path) -> dict[str, Any]:
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.auth = (USER, PASSWORD)
    session.trust_env = False
    client = DICOMwebClient(url=pacs.dicomweb, session=session)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    for uid in studies:
        for k, ds in enumerate(client.retrieve_study(uid)):
            ds.save_as(out / f"{uid}_{k}.dcm", enforce_file_format=True)
    return _rate("dicomweb-client retrieve_study", time.perf_counter() - t0, *_tree(out))


def getscu_whole(pacs: OrthancServer, studies: list[str], out: Path) -> dict[str, Any]:
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    for uid in studies:
        subprocess.run(
            ["getscu", "-aet", AGENT_AE, "-aec", PACS_AE, "-S", "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={uid}", "-od", str(out), "127.0.0.1", str(pacs.dicom_port)],
            check=True, capture_output=True,
        )  # fmt: skip
    return _rate("dcmtk getscu (study)", time.perf_counter() - t0, *_tree(out))


def movescu_whole(
    pacs: OrthancServer, studies: list[str], out: Path, store_port: int
) -> dict[str, Any]:
    out.mkdir(parents=True)
    scp = subprocess.Popen(
        ["storescp", "-aet", STORESCP_AE, "-od", str(out), str(store_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.5)  # let it listen
        t0 = time.perf_counter()
        for uid in studies:
            subprocess.run(
                ["movescu", "-aet", AGENT_AE, "-aec", PACS_AE, "-aem", STORESCP_AE, "-S",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}",
                 "127.0.0.1", str(pacs.dicom_port)],
                check=True, capture_output=True,
            )  # fmt: skip
        seconds = time.perf_counter() - t0
    finally:
        scp.terminate()
        scp.wait(10)
    return _rate("dcmtk movescu → storescp (study)", seconds, *_tree(out))


def figures(r: dict[str, Any]) -> list[dict[str, Any]]:
    figs: list[dict[str, Any]] = []
    whole_bytes = r["peers"]["dicomweb_client"]["bytes"]
    pairs = (
        ("dicomweb", "dicomweb_client"),
        ("dimse_get", "getscu"),
        ("dimse_move", "movescu"),
    )
    for mine, peer in pairs:
        a, b = r["ours"][mine], r["peers"][peer]
        size = f"{r['config']['studies']} studies, {r['config']['profile']}"
        figs += [
            {"name": f"{a['name']}: instances/s ({size})", "value": round(a["instances_per_s"], 1),
             "unit": "instances/s", "peer": b["name"], "peer_value": round(b["instances_per_s"], 1),
             "ratio": round(a["instances_per_s"] / b["instances_per_s"], 2)},
            {"name": f"{a['name']}: MB/s", "value": round(a["mb_per_s"], 2), "unit": "MB/s",
             "peer": b["name"], "peer_value": round(b["mb_per_s"], 2),
             "ratio": round(a["mb_per_s"] / b["mb_per_s"], 2)},
            {"name": f"{a['name']}: s to have what ingest needs (whole studies for the peer)",
             "value": round(a["seconds"], 2), "unit": "s", "peer": b["name"],
             "peer_value": round(b["seconds"], 2), "ratio": round(b["seconds"] / a["seconds"], 2),
             "target": "≥ 1×", "met": b["seconds"] >= a["seconds"]},
        ]  # fmt: skip
    avoided = 1.0 - r["ours"]["dicomweb"]["bytes"] / whole_bytes
    figs.append(
        {
            "name": "fraction of study bytes the series selection avoids (DICOMweb)",
            "value": round(avoided, 3),
            "unit": "fraction",
            "peer": "whole-study retrieve",
            "peer_value": 0.0,
        }
    )
    return figs


def measure(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    why = orthanc_missing() or (None if shutil.which("getscu") else "dcmtk is not installed")
    if why:
        raise SystemExit(f"pacs_pull: {why}")
    t0 = time.perf_counter()
    generate_site(work / "site", args.studies, args.institution, 0, args.profile, workers=2)
    phantom_s = time.perf_counter() - t0
    store_port = free_port()
    pacs = OrthancServer(work / "orthanc")
    pacs.extra_modalities = {"storescp": [STORESCP_AE, "127.0.0.1", store_port]}
    pacs.start()
    try:
        n_up = pacs.upload_tree(work / "site" / "dicom")
        limits = Limits(concurrency=args.concurrency)
        creds = Credentials(USER, PASSWORD)
        studies = [h.study_uid for h in DicomWebSource(pacs.dicomweb, creds, limits).find_studies(
            StudyQuery())]  # fmt: skip

        def dimse(mode: str) -> DimseSource:
            cfg = DimseConfig("127.0.0.1", pacs.dicom_port, PACS_AE, AGENT_AE, mode, None,
                              pacs.agent_port, "127.0.0.1")  # fmt: skip
            return DimseSource(cfg, limits)

        result: dict[str, Any] = {
            "config": {"studies": args.studies, "profile": args.profile,
                       "institution": args.institution, "concurrency": args.concurrency,
                       "instances_in_pacs": n_up, "phantom_seconds": phantom_s},
            "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
                        "platform": platform.platform(),
                        "load-average": os.getloadavg()},
            "ours": {}, "peers": {},
        }  # fmt: skip
        print("ours: DICOMweb pull ...", flush=True)
        result["ours"]["dicomweb"] = ours(
            DicomWebSource(pacs.dicomweb, creds, limits), work / "ws-web", limits, "pull DICOMweb"
        )
        print("ours: DIMSE C-GET pull ...", flush=True)
        result["ours"]["dimse_get"] = ours(dimse("get"), work / "ws-get", limits, "pull C-GET")
        print("ours: DIMSE C-MOVE pull ...", flush=True)
        result["ours"]["dimse_move"] = ours(dimse("move"), work / "ws-move", limits, "pull C-MOVE")
        print("peer: dicomweb-client whole studies ...", flush=True)
        result["peers"]["dicomweb_client"] = dicomweb_client_whole(pacs, studies, work / "dwc")
        print("peer: getscu whole studies ...", flush=True)
        result["peers"]["getscu"] = getscu_whole(pacs, studies, work / "getscu")
        print("peer: movescu whole studies ...", flush=True)
        result["peers"]["movescu"] = movescu_whole(pacs, studies, work / "movescu", store_port)
    finally:
        pacs.stop()
    result["machine"]["load-average-after"] = os.getloadavg()
    result["figures"] = figures(result)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=12, help="phantom studies in the PACS")
    ap.add_argument("--profile", default="cpu", help="phantom acquisition size (tiny, cpu)")
    ap.add_argument("--institution", default="aurora")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="pacs-pull-")).resolve()
    try:
        result = measure(work, args)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "pacs_pull.json", result)
    for f in result["figures"]:
        peer = f" | {f['peer']}: {f['peer_value']} (ratio {f.get('ratio')})" if "peer" in f else ""
        print(f"{f['name']}: {f['value']} {f['unit']}{peer}")


if __name__ == "__main__":
    main()
