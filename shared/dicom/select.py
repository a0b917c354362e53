"""Choose what to retrieve from a PACS, per study, from query metadata alone (no pixels).

The rules are the scan's own (``shared.dicom.scan``): every instance the query describes becomes
a frame record (``frames_from_dataset``), frames are grouped into volumes, classified and the
axial T2, highest b-value and ADC are chosen. Only the chosen volumes' instances are fetched, so
a scan of what was fetched chooses exactly what a scan of the whole study would.

Where the metadata cannot decide, the plan widens instead of guessing:

* a series the query says nothing usable about (no instance-level answer, a PACS that hides
  geometry, an enhanced file whose functional groups are not returned) is fetched whole, since
  it might hold the best candidate;
* a diffusion series whose b-value is not in the metadata (GE and Siemens keep it in private
  tags, which DIMSE queries and many DICOMweb servers do not return) is fetched whole;
* when no series of a study has usable metadata the whole study is fetched, with the reason.

A study whose metadata is complete but lacks a role is skipped with the scan's reason (fetching
it would not make it usable).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from shared.dicom.headers import FrameHeader, Skipped, frames_from_dataset
from shared.dicom.scan import check_geometry, choose, description_hint, group_volumes

ROLES = ("t2w", "hbv", "adc")
# Skip reasons that a fetched file would get too: such instances are never worth fetching.
_NEVER_USED = ("not MR", "DICOMDIR", "unsupported SOP class", "unsupported: colour")
_NO_B = "diffusion series without a readable b-value"
MULTIFRAME_CLASSES = {"1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4"}


@dataclass
class SeriesMeta:
    """What a PACS query returned about one series (instances: instance-level metadata)."""

    series_uid: str
    number: int
    description: str
    modality: str
    n_instances: int | None
    instances: list[Dataset] = field(default_factory=list)

    def sop_uids(self) -> list[str]:
        return [str(ds.get("SOPInstanceUID", "")) for ds in self.instances]


@dataclass
class StudyPlan:
    """What to fetch for one study and why.

    ``fetch`` maps a series UID to the SOP Instance UIDs to fetch (all of the series' MR
    instances when it is fetched whole). ``mode``: "selected" (chosen volumes only, maybe plus
    series the metadata could not judge), "whole-study" or "skipped".
    """

    study_uid: str
    mode: str
    reason: str
    fetch: dict[str, list[str]] = field(default_factory=dict)
    roles: dict[str, set[str]] = field(default_factory=dict)  # role → SOP UIDs chosen for it
    notes: list[str] = field(default_factory=list)
    exact: bool = False  # the metadata judged every series: a scan of the fetch must agree
    whole_series: set[str] = field(default_factory=set)  # fetched whole: one request may do
    total_series: int = 0
    total_instances: int = 0
    estimated_bytes: int = 0  # pixel bytes of what is planned (uncompressed estimate)
    whole_estimated_bytes: int = 0  # the same for the whole study

    @property
    def n_fetch(self) -> int:
        return sum(len(v) for v in self.fetch.values())

    def summary(self) -> dict[str, object]:
        return {
            "study_uid": self.study_uid,
            "mode": self.mode,
            "reason": self.reason,
            "series": len(self.fetch),
            "instances": self.n_fetch,
            "study_series": self.total_series,
            "study_instances": self.total_instances,
            "exact": self.exact,
            "estimated_bytes": self.estimated_bytes,
            "study_estimated_bytes": self.whole_estimated_bytes,
            "notes": list(self.notes),
        }


def pixel_bytes(ds: Dataset) -> int:
    """Uncompressed pixel bytes of one instance from its metadata (0 if unknown)."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
        return int(ds.Rows) * int(ds.Columns) * frames * bits // 8
    except (AttributeError, TypeError, ValueError):
        return 0


def _series_frames(s: SeriesMeta) -> tuple[list[FrameHeader], set[str], str | None]:
    """(frames, SOP UIDs never worth fetching, why the series cannot be judged or None)."""
    if s.modality and s.modality != "MR":
        return [], set(s.sop_uids()), None
    if not s.instances:
        return [], set(), "no instance-level metadata"
    if s.n_instances is not None and len(s.instances) < s.n_instances:
        return [], set(), f"metadata for {len(s.instances)} of {s.n_instances} instances"
    frames: list[FrameHeader] = []
    useless: set[str] = set()
    for i, ds in enumerate(s.instances):
        sop = str(ds.get("SOPInstanceUID", ""))
        if str(ds.get("SOPClassUID", "")) in MULTIFRAME_CLASSES and (
            "PerFrameFunctionalGroupsSequence" not in ds
        ):
            # A query answer may show the first frame's geometry as if it were the only one.
            return [], set(), "multi-frame instances without their functional groups"
        r = frames_from_dataset(ds, path=f"{s.series_uid}#{i}", require_pixels=False)
        if isinstance(r, Skipped):
            if r.reason.startswith(_NEVER_USED):
                useless.add(sop)
                continue
            return [], set(), r.reason
        frames.extend(r)
    return frames, useless, None


def plan_study(
    study_uid: str, series: list[SeriesMeta], mapping: dict[str, str] | None = None
) -> StudyPlan:
    """The retrieval plan of one study from its series' query metadata (see module doc)."""
    plan = StudyPlan(study_uid, "selected", "")
    plan.total_series = len(series)
    plan.total_instances = sum(
        s.n_instances if s.n_instances is not None else len(s.instances) for s in series
    )
    plan.whole_estimated_bytes = sum(pixel_bytes(ds) for s in series for ds in s.instances)
    by_uid = {s.series_uid: s for s in series}
    frames: list[FrameHeader] = []
    unjudged: dict[str, str] = {}
    useless: set[str] = set()
    for s in series:
        fr, never, why = _series_frames(s)
        useless |= never
        if why is not None:
            unjudged[s.series_uid] = why
        frames.extend(f for f in fr if f.study_uid == study_uid)
    volumes = group_volumes(frames).get(study_uid, [])
    check_geometry(volumes)
    for v in volumes:
        if v.reason.startswith(_NO_B):
            unjudged.setdefault(v.series_uid, "b-value not in the query metadata")
        hint = description_hint(v.description)
        if hint is not None and v.kind != "other" and hint != v.kind:
            plan.notes.append(
                f"series {v.series_number}: its description suggests {hint} but the headers say "
                f"{v.kind} ({v.reason}); classified {v.kind}"
            )
    chosen, problems = choose(volumes, mapping)
    mr_series = [s for s in series if not s.modality or s.modality == "MR"]
    if unjudged and len(unjudged) >= len(mr_series):
        plan.mode = "whole-study"
        plan.reason = f"the query metadata cannot decide ({next(iter(unjudged.values()))})"
        for s in mr_series:
            plan.fetch[s.series_uid] = [u for u in s.sop_uids() if u not in useless]
    elif not unjudged and len(chosen) < len(ROLES):
        plan.mode = "skipped"
        plan.reason = "; ".join(problems)
        return plan
    else:
        for role, vol in chosen.items():
            sops = sorted({f.sop_uid for f in vol.frames})
            plan.roles[role] = set(sops)
            have = plan.fetch.setdefault(vol.series_uid, [])
            have.extend(u for u in sops if u not in have)
        for uid, why in unjudged.items():
            plan.fetch[uid] = [u for u in by_uid[uid].sop_uids() if u not in useless]
            plan.notes.append(f"series {by_uid[uid].number} fetched whole: {why}")
        plan.exact = not unjudged
        plan.reason = (
            "chosen volumes only" if plan.exact else "chosen volumes and series it cannot judge"
        )
    wanted = {u for v in plan.fetch.values() for u in v}
    plan.estimated_bytes = sum(
        pixel_bytes(ds)
        for s in series
        for ds in s.instances
        if str(ds.get("SOPInstanceUID", "")) in wanted
    )
    # An empty list stays only for a series with no instance-level answer: "fetch it whole".
    plan.fetch = {k: v for k, v in plan.fetch.items() if v or not by_uid[k].instances}
    plan.whole_series = {
        k for k, v in plan.fetch.items() if set(v) == set(by_uid[k].sop_uids()) - useless
    }
    return plan


def verify_choice(plan: StudyPlan, chosen_sops: dict[str, set[str]]) -> str | None:
    """Compare what a scan of the fetched files chose with what the plan chose from metadata;
    None when they agree, else the first disagreement in words."""
    for role in ROLES:
        planned = plan.roles.get(role)
        if planned is None:
            continue
        got = chosen_sops.get(role)
        if got is None:
            return f"{role}: the fetched instances hold no usable {role}"
        if got != planned:
            return f"{role}: the fetched instances chose another volume than the query metadata"
    return None
