"""Figures of merit from each benchmark's result JSON, each with its named peer and ratio.

A benchmark JSON with a top-level ``"figures"`` list of ``{"name", "value", "unit"}`` objects
(optionally ``peer``, ``peer_value``, ``ratio``, ``target``, ``met``) is read as it is: that is
how a new benchmark plugs into ``python -m benchmarks``. The older benchmarks predate that
convention and have an extractor each here.

Ratios of times are the peer's over ours, so a ratio above 1 means ours is faster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NO_PEER = "no peer"
SPEEDUP_TARGET = 50.0  # issue 15: default sampler >= 50x faster than DDPM-1000 end to end
INGEST_TARGET = 2.0  # issue 15: full ingest >= 2x picai_prep dcm2mha
AUC_BAND = (0.80, 0.92)  # issue 5: phantom calibration
SEED_SD_MAX = 0.05
SEQUENCES = ("t2w", "hbv", "adc")

Record = dict[str, Any]


@dataclass
class Figure:
    name: str
    value: float | int | str | None
    unit: str = ""
    peer: str = NO_PEER
    peer_value: float | int | str | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None

    @classmethod
    def from_dict(cls, d: Record) -> Figure:
        """One entry of a benchmark's generic ``figures`` list."""
        if "name" not in d or "value" not in d:
            raise ValueError(f"a figure needs 'name' and 'value', got keys {sorted(d)}")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def fmt(x: float | int | str | bool | None) -> str:
    """Three significant digits, but never scientific notation for large numbers."""
    if x is None:
        return ""
    if isinstance(x, bool) or not isinstance(x, float):
        return str(x)
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _at_least(ratio: float | None, target: float) -> bool | None:
    return None if ratio is None else ratio >= target


# --- one extractor per benchmark that predates the "figures" convention --------------------
def ingest_figures(rec: Record) -> list[Figure]:
    picai = rec["picai_prep"]
    peer = f"picai_prep dcm2mha {picai.get('version', '?')}"
    cfg = rec["config"]
    size = f"{cfg['cases']} studies, {cfg['profile']}, median of {cfg['repeat']}"
    scan_s = rec["scan"]["seconds"]
    figs = []
    for label, step, key in (
        ("conversion s (scan + MHA)", "ours_conversion", "picai_over_ours_conversion"),
        ("full ingest s (scan + ingest)", "ours_full_ingest", "picai_over_ours_full_ingest"),
    ):
        ratio = rec["ratios"][key]
        figs.append(
            Figure(
                f"{label}, {size}",
                scan_s + rec[step]["seconds"],
                "s",
                peer,
                picai.get("seconds"),
                ratio,
                f"≥ {INGEST_TARGET:g}×",
                _at_least(ratio, INGEST_TARGET),
            )
        )
    agree = rec["agreement"]
    same, compared = agree["geometry_and_voxels_agree"], agree["compared_volumes"]
    figs.append(
        Figure(
            "volumes identical to the peer's (geometry and voxels)",
            same,
            "volumes",
            peer,
            compared,
            target="all compared",
            met=compared > 0 and same == compared,
        )
    )
    if picai.get("error"):
        figs.append(Figure(f"peer failed: {picai['error']}", None, peer=peer))
    return figs


def generative_figures(rec: Record) -> list[Figure]:
    figs: list[Figure] = []
    for row in rec["rows"]:
        if isinstance(row, str):  # a profile's child process failed; the string says why
            figs.append(Figure(f"a profile failed: {row}", None))
        elif "latent_volumes_per_s" not in row:  # paper profile: no batch fitted
            tried = ", ".join(f"batch {t['batch']}: {t['result']}" for t in row["batches_tried"])
            figs.append(Figure(f"{row['profile']}: no batch fitted ({tried})", None))
        else:
            figs.extend(_training_row(row))
    return figs


def _training_row(row: Record) -> list[Figure]:
    p = f"{row['profile']} profile on {row['device']}"
    figs = [
        Figure(f"latent volumes/s ({p})", row["latent_volumes_per_s"], "volumes/s"),
        Figure(
            f"diffusion s/step ({p}, batch {row['diffusion_batch']})",
            row["diffusion_s_per_step"],
            "s",
        ),
        Figure(
            f"autoencoder s/step ({p}, {row['autoencoder_batch_cases']} cases)",
            row["autoencoder_s_per_step"],
            "s",
        ),
        Figure(f"peak resident memory ({p})", row["peak_rss_gib"], "GiB"),
    ]
    for net in ("autoencoder", "diffusion"):  # only on a GPU
        if f"{net}_peak_gpu_gib" in row:
            figs.append(Figure(f"{net} peak GPU memory ({p})", row[f"{net}_peak_gpu_gib"], "GiB"))
    return figs


def _sampler_row(rows: list[Record], sampler: str, steps: int) -> Record:
    return next(r for r in rows if r["sampler"] == sampler and r["steps"] == steps)


def sampling_cost_figures(rec: Record) -> list[Figure]:
    rows = rec["rows"]
    base = _sampler_row(rows, "ddpm", 1000)
    fast = next(r for r in rows if r is not base)
    where = f"{rec['profile']} profile, {fast['cases']} cases per batch"
    peer = "DDPM-1000, same network"
    speedup = rec["speedup_end_to_end"]
    return [
        Figure(
            f"end-to-end s/case, {fast['sampler']}-{fast['steps']} ({where})",
            fast["seconds_per_case"],
            "s",
            peer,
            base["seconds_per_case"],
            speedup,
            f"≥ {SPEEDUP_TARGET:g}×",
            _at_least(speedup, SPEEDUP_TARGET),
        ),
        Figure(
            f"denoising-only s/case, {fast['sampler']}-{fast['steps']} ({where})",
            fast["denoise_s_per_case"],
            "s",
            peer,
            base["denoise_s_per_case"],
            rec["speedup_denoising_only"],
        ),
    ]


def _default_row(rec: Record) -> Record:
    """The row of the profile's default sampler as it is now (a record measured before the
    default changed still holds the new default's row), else the one marked default then."""
    from shared.profiles import get_profile

    rows = rec["rows"]
    spec = get_profile(rec["profile"]).diffusion
    now = [r for r in rows if (r["sampler"], r["steps"]) == (spec.sampler, spec.sampling_steps)]
    return now[0] if now else next(r for r in rows if r["role"] == "default")


def sampling_speed_figures(rec: Record) -> list[Figure]:
    rows = rec["rows"]
    default = _default_row(rec)
    base = _sampler_row(rows, "ddpm", 1000)
    peer = "DDPM-1000, DDPM network"
    ratio = default["speedup_vs_ddpm1000"]
    label = f"{default['sampler']}-{default['steps']} default, {rec['profile']} profile"
    figs = [
        Figure(
            f"end-to-end s/case ({label}, {default['cases']} cases)",
            default["seconds_per_case"],
            "s",
            peer,
            base["seconds_per_case"],
            ratio,
            f"≥ {SPEEDUP_TARGET:g}×",
            _at_least(ratio, SPEEDUP_TARGET),
        )
    ]
    # the DDPM-1000 gate as the benchmark judged it (its own flags)
    figs += gate_figures(
        default,
        base,
        peer,
        label,
        kid_met=default["kid_within_ddpm1000_interval"],
        lf_met=default.get("label_fidelity_within_ddpm1000_interval"),
    )
    return figs + same_network_gate(rows, default, label)


def gate_figures(
    row: Record,
    ref: Record,
    peer: str,
    label: str,
    name_note: str = "",
    kid_met: dict[str, bool] | None = None,
    lf_met: bool | None = None,
) -> list[Figure]:
    """``row``'s KID per sequence (at most ``ref``'s 95 % upper bound) and label-fidelity AUC
    (at least ``ref``'s lower bound); ``kid_met``/``lf_met``: verdicts recorded by the
    benchmark, else judged here."""
    figs = []
    for seq in SEQUENCES:  # KID is lower-better; no ratio, the peer's interval is the target
        upper = ref["kid"][seq]["ci"][1]
        value = row["kid"][seq]["kid"]
        figs.append(
            Figure(
                f"KID {seq}{name_note} ({label})",
                value,
                "",
                peer,
                ref["kid"][seq]["kid"],
                target=f"≤ peer's 95 % upper bound {fmt(upper)}",
                met=bool(kid_met[seq] if kid_met is not None else value <= upper),
            )
        )
    if "label_fidelity" in row and "label_fidelity" in ref:
        low = ref["label_fidelity"]["ci"][0]
        value = row["label_fidelity"]["auc"]
        figs.append(
            Figure(
                f"label-fidelity AUC{name_note} ({label})",
                value,
                "",
                peer,
                ref["label_fidelity"]["auc"],
                target=f"≥ peer's 95 % lower bound {fmt(low)}",
                met=bool(lf_met if lf_met is not None else value >= low),
            )
        )
    return figs


def same_network_gate(rows: list[Record], default: Record, label: str) -> list[Figure]:
    """The stricter fidelity gate: the default's few steps against the same rflow network's
    25 Euler steps (a DDPM peer trained on a small site can be poor enough to pass anything)."""
    ref = next(
        (
            r
            for r in rows
            if (r["sampler"], r["steps"]) == ("rflow", 25)
            and r.get("network", "rflow") == "rflow"
            and r is not default
        ),
        None,
    )
    if ref is None:
        return []
    note = " against its own network's 25 steps"
    return gate_figures(default, ref, "rflow-25, same network", label, note)


def calibration_figures(rec: Record) -> list[Figure]:
    lo, hi = AUC_BAND
    auc, sd = rec["auc_mean"], rec["auc_seed_sd_within_split"]
    size = f"{rec['cases']} cases, {rec['splits']} splits × {rec['seeds']} seeds"
    return [
        Figure(f"AUC mean ({size})", auc, "", target=f"{lo:.2f}–{hi:.2f}", met=lo <= auc <= hi),
        Figure(
            "AUC seed sd within a split", sd, "", target=f"≤ {SEED_SD_MAX}", met=sd <= SEED_SD_MAX
        ),
    ]


def generic_figures(rec: Record) -> list[Figure]:
    return [Figure.from_dict(d) for d in rec["figures"]]


EXTRACTORS: dict[str, Callable[[Record], list[Figure]]] = {
    "ingest_vs_picai_prep": ingest_figures,
    "generative_training": generative_figures,
    "sampling_cost": sampling_cost_figures,
    "sampling_speed": sampling_speed_figures,
    "phantom_calibration": calibration_figures,
}


def extract(name: str, rec: Record) -> list[Figure]:
    """A benchmark's own ``figures`` list wins, so a benchmark can take over its reporting."""
    if "figures" in rec:
        return generic_figures(rec)
    extractor = EXTRACTORS.get(name)
    return extractor(rec) if extractor else []
