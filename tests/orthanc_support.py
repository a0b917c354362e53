"""A real Orthanc PACS for tests and benchmarks: own config, storage and free loopback ports.

Never the system service: each ``OrthancServer`` writes its configuration into a temporary
folder, listens on ports picked free at start on 127.0.0.1 only, and is killed (by its own
process id) at ``stop()``. Without the Debian packages ``orthanc`` and ``orthanc-dicomweb``
tests skip with the reason, except under ``CI`` where they fail (CI installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
USER, PASSWORD = "agent", "s3cret-for-tests"
PACS_AE, AGENT_AE = "TESTPACS", "SITEAGENT"


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (None when it can)."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb dcmtk)"
    if dicomweb_plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


def require_orthanc() -> None:
    """Skip the calling test without Orthanc, but fail under CI (where it must be installed)."""
    import pytest

    why = orthanc_missing()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI must install it (.ci/run)")
    pytest.skip(why)


def dicomweb_plugin() -> str | None:
    for p in PLUGIN_CANDIDATES:
        if Path(p).is_file():
            return p
    return None


def make_tls(folder: Path) -> tuple[Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it, for a test HTTPS
    server (Debian's Orthanc 1.10 crashes on HTTPS): (server PEM with certificate and key, CA
    bundle PEM)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (
        x509.CertificateBuilder().subject_name(name("site CA")).issuer_name(name("site CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(san, critical=False).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    server, bundle = folder / "server.pem", folder / "ca.pem"
    pem = serialization.Encoding.PEM
    server.write_bytes(
        cert.public_bytes(pem)
        + key.private_bytes(
            pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    bundle.write_bytes(ca.public_bytes(pem))
    return server, bundle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OrthancServer:
    root: Path
    http_port: int = 0
    dicom_port: int = 0
    agent_port: int = 0  # where Orthanc sends C-MOVE sub-operations (our SCP)
    extra_modalities: dict[str, list[object]] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict[str, object]:
        storage = self.root / "storage"
        modalities: dict[str, object] = {
            "agent": {"AET": AGENT_AE, "Host": "127.0.0.1", "Port": self.agent_port},
            **self.extra_modalities,
        }
        return {
            "Name": "test-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "Plugins": [dicomweb_plugin()],
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": PACS_AE,
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomModalities": modalities,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": "127.0.0.1"},
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "MetricsEnabled": False,
            "SaveJobs": False,
            "StableAge": 1,
            "MaximumStorageCacheSize": 0,  # serve what is on disk (tests damage it)
            "StorageAccessOnFind": "Always",
            "DicomScuTimeout": 10,
            "HttpTimeout": 10,
        }

    def start(self, timeout: float = 30.0) -> OrthancServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        self.agent_port = self.agent_port or free_port()
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=1))
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            ["Orthanc", str(cfg)], cwd=self.root, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start; see {self.root / 'orthanc.log'}")
            try:
                if self._get("/system").status_code == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """Vanish mid-transfer (SIGKILL), the way a crashed PACS does."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    # --- REST helpers -----------------------------------------------------------------------
    def _session(self):  # type: ignore[no-untyped-def]
        import requests

        s = requests.Session()
        s.auth = (USER, PASSWORD)
        s.trust_env = False
        return s

    def _get(self, path: str):  # type: ignore[no-untyped-def]
        import requests

        try:
            return self._session().get(self.url + path, timeout=5)
        except requests.RequestException as exc:
            raise OSError(str(exc)) from None

    def upload(self, files: Iterable[Path]) -> int:
        s = self._session()
        n = 0
        for f in files:
            r = s.post(self.url + "/instances", data=Path(f).read_bytes(), timeout=30)
            r.raise_for_status()
            n += 1
        return n

    def upload_tree(self, root: Path) -> int:
        return self.upload(sorted(p for p in Path(root).rglob("*") if p.is_file()))

    def stored_file(self, sop_uid: str) -> Path:
        """Where Orthanc keeps the DICOM file of ``sop_uid`` (to damage it on purpose)."""
        s = self._session()
        hits = s.post(self.url + "/tools/lookup", data=sop_uid, timeout=10).json()
        oid = next(h["ID"] for h in hits if h["Type"] == "Instance")
        uuid = s.get(f"{self.url}/instances/{oid}/attachments/dicom/info", timeout=10).json()[
            "Uuid"
        ]
        return self.root / "storage" / uuid[:2] / uuid[2:4] / uuid
