"""``site-agent receive``: a C-STORE SCP for PACSes that push, writing the same
``WORKSPACE/incoming`` layout as ``pull``.

Only calling AE titles on the allowlist may associate (others are rejected at association), and
only MR image storage is accepted. Each instance is checked and written atomically
(``IncomingStore``); a corrupt instance, a SOP Instance UID repeated with different content or
a full quota is refused with a failure status the sender sees, and nothing is written for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import InputError
from site_agent.ingest.dimse import (
    MR_STORAGE,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OK,
    STATUS_OUT_OF_RESOURCES,
    quiet_pynetdicom,
    transfer_syntaxes,
)
from site_agent.ingest.incoming import IncomingStore, InstanceProblem


@dataclass
class ReceiveStats:
    stored: int = 0
    duplicates: int = 0  # same instance sent again: acknowledged, not rewritten
    refused: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)  # one line per refusal (no identifiers)


@dataclass(frozen=True)
class ReceiveConfig:
    port: int
    ae_title: str = "SITEAGENT"
    allow: tuple[str, ...] = ()  # calling AE titles allowed to send
    bind: str = "0.0.0.0"
    quota_bytes: int | None = None


def start_receiver(
    config: ReceiveConfig,
    workspace: Path,
    on_event: Callable[[str, int], None] | None = None,
) -> tuple[Any, ReceiveStats]:
    """Start the SCP in background threads; returns (server, stats). ``server.shutdown()``
    stops it. ``on_event(kind, bytes)`` sees "stored", "duplicate" and "refused"."""
    from pynetdicom import AE, evt

    if not config.allow:
        raise InputError(
            "receive needs at least one --allow AE title (the PACS that pushes)",
            hint="e.g. --allow PACS_AE; every other sender is rejected",
        )
    quiet_pynetdicom()
    store = IncomingStore(workspace, config.quota_bytes)
    stats = ReceiveStats()
    lock = threading.Lock()
    ae = AE(ae_title=config.ae_title)
    ae.require_calling_aet = list(config.allow)
    for cls in MR_STORAGE:
        ae.add_supported_context(cls, transfer_syntaxes())

    def on_store(event: Any) -> int:
        data = event.encoded_dataset()
        try:
            _ids, written = store.put(data)
        except InstanceProblem as exc:
            with lock:
                stats.refused += 1
                stats.problems.append(exc.message)
            if on_event:
                on_event("refused", 0)
            return STATUS_OUT_OF_RESOURCES if exc.kind == "quota" else STATUS_CANNOT_UNDERSTAND
        except InputError as exc:  # a full disk: refuse, keep serving what still fits
            with lock:
                stats.refused += 1
                stats.problems.append(exc.message)
            return STATUS_OUT_OF_RESOURCES
        with lock:
            if written:
                stats.stored += 1
                stats.bytes += len(data)
            else:
                stats.duplicates += 1
        if on_event:
            on_event("stored" if written else "duplicate", len(data) if written else 0)
        return STATUS_OK

    try:
        server = ae.start_server(
            (config.bind, config.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
    except OSError as exc:
        raise InputError(f"cannot listen on port {config.port}: {exc.strerror or exc}") from None
    return server, stats
