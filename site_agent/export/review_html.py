"""``site-agent review BUNDLE --html``: one self-contained page for a data-protection officer.

What the bundle is, whether its signature and hashes hold, the PHI scan (every DICOM attribute
kept, by level, with the allowlist rule that kept it; findings highlighted), the memorisation
screen (histogram against the calibrated threshold and the held-out reference, flagged and
replaced counts, the uniqueness rule) or, for weights, the membership-inference AUC against
what a no-signal attack scores, a montage of the synthetic images that leave, the reviewers'
signed decisions on it (valid or not), and this bundle's entries in the site's audit log.
Only what the verified bundle and the audit log hold is shown: no real image, no case id of a
real patient.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import shared
from shared.bundle.approval import ApprovalCheck
from shared.html_page import (
    Html,
    brief,
    fact,
    figure,
    flatten,
    join,
    kv_table,
    page,
    table,
    tag,
)
from site_agent.export.review_approvals import approvals_section
from site_agent.export.review_audit import AuditView, audit_section, bundle_audit
from site_agent.privacy.phi_scan import PhiReport


@dataclass
class ReviewPage:
    manifest: dict[str, Any]
    key_fingerprint: str
    manifest_sha256: str
    key_description: str
    phi: PhiReport
    audit: AuditView
    histogram: bytes | None = None
    montage: dict[str, bytes] = field(default_factory=dict)
    approvals: list[ApprovalCheck] = field(default_factory=list)
    required_approvals: int = 0


# --- small formatting helpers ------------------------------------------------------------------
def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# --- sections ----------------------------------------------------------------------------------
def _verdict(p: ReviewPage) -> tuple[bool, Html]:
    m = p.manifest
    reasons = []
    if not p.phi.passed:
        reasons.append(f"{len(p.phi.findings)} PHI finding(s) in the bundle as it stands now")
    mia = _mia(m)
    if mia and mia[0] > mia[1]:
        reasons.append(f"membership-inference AUC {mia[0]:.2f} above the bound {mia[1]:.2f}")
    ok = not reasons
    head = (
        "PASS — every automated check passed"
        if ok
        else "FAIL — do not release: " + "; ".join(reasons)
    )
    lines = [
        f"Signature valid and all {len(m['files'])} file hashes match the signed manifest.",
        f"PHI scan now: {'no finding' if p.phi.passed else f'{len(p.phi.findings)} finding(s)'} "
        f"in {p.phi.files} files ({p.phi.elements} DICOM elements checked).",
    ]
    memo = m.get("privacy", {}).get("memorisation")
    if memo:
        lines.append(
            f"Memorisation screen at export: {memo['flagged']} of {memo['screened']} samples "
            f"flagged and replaced; none of the {m.get('counts', {}).get('cases')} exported "
            "cases is flagged."
        )
    if mia:
        lines.append(
            f"Membership inference on the weights: worst AUC {mia[0]:.2f} (bound {mia[1]:.2f}; "
            "0.5 = nothing revealed)."
        )
    if p.audit.problems:
        lines.append(f"Attention: the site's audit log does not verify ({len(p.audit.problems)}).")
    lines.append("Automated checks support a decision; a person still makes it.")
    body = join([tag("strong", head, data_fact="verdict"), *(tag("div", s) for s in lines)])
    return ok, tag("div", body, class_="verdict " + ("pass" if ok else "fail"))


def _identity(m: dict[str, Any]) -> Html:
    counts = m.get("counts", {})
    rows: list[tuple[object, object]] = [
        ("kind", tag("span", m["kind"], data_fact="kind")),
        ("site", tag("span", m["site"], data_fact="site")),
        ("profile", m.get("profile")),
        ("created", m.get("created")),
        ("written by", f"{m['tool']['name']} {m['tool']['version']}"),
        ("bundle id", tag("span", m["bundle_id"], class_="mono")),
    ]
    if "cases" in counts:
        pos, neg = int(counts.get("positive", 0)), int(counts.get("negative", 0))
        share = pos / max(pos + neg, 1)
        rows += [
            ("synthetic cases", tag("span", counts["cases"], data_fact="cases")),
            ("label balance", f"{pos} csPCa positive, {neg} negative ({share:.0%} positive)"),
            (
                "per case",
                f"{counts.get('series_per_case')} series (t2w, hbv, adc) of "
                f"{counts.get('slices_per_series')} slices, as DICOM and NIfTI, plus labels.csv",
            ),
        ]
    else:
        rows.append(("contents", brief(counts)))
    rows += [(f"provenance: {k}", v) for k, v in flatten(m.get("provenance", {}))]
    return tag(
        "section",
        join(
            [
                tag("h2", "What this bundle is"),
                kv_table(rows),
                tag(
                    "p",
                    "Provenance names models by their SHA-256 and counts cases; it carries no "
                    "case id, patient identifier or date of a patient.",
                    class_="sub",
                ),
            ]
        ),
        id="bundle",
    )


def _integrity(p: ReviewPage) -> Html:
    files = p.manifest["files"]
    total = sum(int(f["size"]) for f in files)
    text = [
        tag(
            "p",
            f"The signature is valid: manifest.json was signed by the key with fingerprint "
            f"{p.key_fingerprint}, checked against {p.key_description}.",
            data_fact="signature",
        ),
        tag(
            "p",
            f"Every one of the {len(files)} files ({_bytes(total)}) has the size and SHA-256 the "
            "signed manifest lists, and the bundle holds no other file: nothing was added, "
            "removed or altered after signing.",
            data_fact="hashes",
        ),
        tag("p", f"SHA-256 of the signed manifest: {p.manifest_sha256}", class_="mono"),
        tag(
            "details",
            join(
                [
                    tag("summary", f"all {len(files)} files"),
                    table(
                        ["file", "size"],
                        [
                            (tag("span", f["path"], class_="mono"), _bytes(f["size"]))
                            for f in files[:2000]
                        ],
                        numeric=[1],
                    ),
                ]
            ),
        ),
    ]
    return tag("section", join([tag("h2", "Signature and file hashes"), *text]), id="integrity")


def _phi(p: ReviewPage) -> Html:
    phi, m = p.phi, p.manifest
    deny = m.get("privacy", {}).get("deny_list", {})
    parts = [
        tag("h2", "PHI scan (re-run now, default deny)"),
        tag(
            "div",
            join(
                [
                    fact("files scanned", phi.files, "phi-files"),
                    fact("DICOM elements checked", phi.elements, "phi-elements"),
                    fact("findings", len(phi.findings), "phi-findings"),
                    fact("site identifiers searched", phi.deny_list_entries, "deny-list"),
                ]
            ),
            class_="facts",
        ),
        tag(
            "p",
            "Every file must be of a known type at a known path. Every DICOM attribute, in the "
            "file meta, the data set and each nested sequence, must be on the allowlist of its "
            "level with an allowed value; private tags, overlays and curves are refused; every UID "
            "is standard or minted by this export; every file, file name and manifest string is "
            "searched for the site's own names, IDs, dates and UIDs (kept as salted hashes: "
            f"{brief(deny.get('sources', [])) or 'sources not recorded'}). "
            f"Files by type: {brief(phi.by_type)}.",
        ),
    ]
    if phi.findings:
        parts += [
            tag("h3", f"Findings ({len(phi.findings)})"),
            tag(
                "p",
                f"By kind: {brief(phi.summary()['findings_by_kind'])}. Each names the file and "
                "the place, never the offending value.",
                class_="sub",
            ),
            table(
                ["file", "kind", "where", "what"],
                [(f.path, f.kind, f.where, f.message) for f in phi.findings[:500]],
                row_classes=["bad"] * min(len(phi.findings), 500),
            ),
        ]
    else:
        parts.append(tag("p", "No finding.", class_="sub", data_fact="phi-result"))
    if phi.kept:
        levels: dict[str, list[Any]] = {}
        for item in phi.kept.values():
            levels.setdefault(item.level, []).append(item)
        parts.append(
            tag("h3", "DICOM attributes that leave, by level, and the rule that kept each")
        )
        for level, items in levels.items():
            parts += [
                tag("h3", level if level in ("file meta", "data set") else f"items of {level}"),
                table(
                    ["attribute", "allowlist rule (value must match)", "occurrences"],
                    [(i.keyword, i.rule, i.count) for i in sorted(items, key=lambda i: i.keyword)],
                    numeric=[2],
                ),
            ]
    elif m["kind"] != "synthetic":
        parts.append(tag("p", "This bundle holds no DICOM file.", class_="sub"))
    return tag("section", join(parts), id="phi")


def _memorisation(p: ReviewPage, memo: dict[str, Any]) -> Html:
    exported = int(p.manifest.get("counts", {}).get("cases", 0))
    screened, flagged = int(memo["screened"]), int(memo["flagged"])
    lat = memo.get("latent_threshold")
    q = float(memo.get("quantile", 0.05))
    alpha, k = memo.get("alpha", 0.5), memo.get("k_nearest", 5)
    facts = [
        fact("samples screened", screened, "screened"),
        fact("flagged", flagged, "flagged"),
        fact("replacement samples drawn", max(screened - exported, 0), "replaced"),
        fact("exported", exported, "exported"),
        fact("image threshold", f"{float(memo['image_threshold']):.4f}", "threshold"),
    ]
    if lat is not None:
        facts.append(fact("latent threshold", f"{float(lat):.4f}", "latent-threshold"))
    parts = [
        tag("h2", "Memorisation screen (at export)"),
        tag("div", join(facts), class_="facts"),
        tag(
            "p",
            f"A synthetic sample is flagged when it is nearer to its nearest training case than "
            f"{1 - q:.0%} of held-out real patients are to theirs (the calibrated threshold) and, "
            f"at the same time, distinctly nearer to that one patient than to the others: its "
            f"nearest distance is below {alpha} × the mean distance to its {k} nearest training "
            "cases (the uniqueness rule, after Carlini et al. 2023), so a blurry average of many "
            "patients is not taken for a copy of one. Flagged samples are replaced by new ones "
            f"(here {memo.get('replacement_rounds', 0)} replacement round(s) of at most "
            f"{memo.get('max_replacement_rounds', '?')}); when the bound is reached the export "
            "is refused.",
            data_fact="rule",
        ),
    ]
    png = p.histogram
    if png is not None:
        parts.append(
            figure(
                png,
                "Each screened sample's distance to its nearest training case (bars, by outcome) "
                "and the held-out real cases' distances (outline); dashed: the threshold.",
            )
        )
    else:
        parts.append(
            tag(
                "p",
                "This bundle was exported before per-sample distances were recorded: summary "
                "statistics only.",
                class_="warn",
            )
        )
    calib = [
        ("calibration", memo.get("method")),
        ("training set", f"{memo.get('training_cases')} cases ({memo.get('training_set')})"),
        ("held-out reference", f"{memo.get('held_out_cases')} real cases the model never saw"),
        ("image measure", memo.get("image_measure")),
        ("latent measure", memo.get("latent_measure")),
        ("flagged by measure", brief(memo.get("flagged_by", {}))),
        ("held-out image distance", brief(memo.get("held_out_image_distance", {}))),
        ("exported image distance", brief(memo.get("exported_image_distance", {}))),
    ]
    if memo.get("held_out_latent_distance"):
        calib.append(("held-out latent distance", brief(memo["held_out_latent_distance"])))
    parts.append(kv_table(calib))
    return tag("section", join(parts), id="memorisation")


def _mia(m: dict[str, Any]) -> tuple[float, float] | None:
    w = m.get("privacy", {}).get("weights") or {}
    mia = w.get("membership_inference")
    if not mia:
        return None
    worst = max(float(mia["autoencoder_reconstruction_auc"]), float(mia["diffusion_denoising_auc"]))
    return worst, float(w.get("max_auc", 1.0))


def _weights(m: dict[str, Any]) -> Html:
    from site_agent.privacy.chance import chance_auc

    w = m.get("privacy", {}).get("weights") or {}
    parts = [tag("h2", "Model weights: what they may reveal")]
    mia = w.get("membership_inference")
    if not mia:
        parts.append(
            tag(
                "p",
                w.get("note", "no membership-inference check recorded"),
                data_fact="weights-note",
            )
        )
        return tag("section", join(parts), id="weights")
    members, others = int(mia["training_cases"]), int(mia["held_out_cases"])
    control = chance_auc(members, others)
    rows = []
    for key, label in (
        ("autoencoder_reconstruction_auc", "autoencoder reconstruction loss"),
        ("diffusion_denoising_auc", "diffusion denoising loss"),
    ):
        auc = float(mia[key])
        rows.append(
            (
                label,
                f"{auc:.3f}",
                f"{control.low:.3f} – {control.high:.3f}",
                f"{control.p_at_least(auc):.3g}",
            )
        )
    parts += [
        tag(
            "div",
            join(
                [
                    fact("worst AUC", f"{_mia(m)[0]:.3f}", "mia-auc"),
                    fact("bound", f"{float(w.get('max_auc', 1)):.2f}", "mia-bound"),
                ]
            ),
            class_="facts",
        ),
        tag(
            "p",
            f"Attack: {mia.get('attack')}. 0.5 means the weights reveal nothing about which "
            f"patients trained the model; 1.0 means every training patient is recognisable. "
            f"{members} training and {others} held-out real cases.",
        ),
        table(
            ["attack on", "AUC", "no-signal attack, 95 % range (control)", "chance of ≥ this AUC"],
            rows,
            numeric=[1, 3],
        ),
        tag(
            "p",
            f"The control is what an attack that knows nothing scores on the same {members} and "
            f"{others} cases ({control.method}): an AUC inside that range is indistinguishable "
            "from luck at these sizes.",
            class_="sub",
        ),
    ]
    return tag("section", join(parts), id="weights")


def _montage(p: ReviewPage) -> Html:
    parts = [
        tag("h2", "What leaves: synthetic images"),
        tag(
            "p",
            "Middle axial slice of up to six csPCa-positive and six negative synthetic cases per "
            "sequence, read from this bundle's own payload. Real images never appear in a review "
            "of an outbound bundle.",
        ),
    ]
    names = {
        "t2w": "T2-weighted",
        "hbv": "high-b diffusion",
        "adc": "apparent diffusion coefficient",
    }
    figures = [
        figure(png, f"{names.get(seq, seq)} ({seq}): positives (top), negatives (bottom)")
        for seq, png in p.montage.items()
    ]
    parts.append(tag("div", join(figures), class_="gallery"))
    return tag("section", join(parts), id="montage")


def render_review_html(p: ReviewPage) -> str:
    m = p.manifest
    ok, verdict = _verdict(p)
    memo = m.get("privacy", {}).get("memorisation")
    sections = [
        tag("h1", f"Privacy review: {m['kind']} bundle from {m['site']}"),
        tag(
            "p",
            f"Bundle {m['bundle_id']}, created {m.get('created')}. This page was written from the "
            "verified bundle and the site's audit log and loads nothing from anywhere.",
            class_="sub",
        ),
        verdict,
        _identity(m),
        _integrity(p),
        _phi(p),
        _memorisation(p, memo) if memo else _weights(m),
    ]
    if p.montage:
        sections.append(_montage(p))
    sections.append(approvals_section(p.approvals, p.required_approvals))
    sections.append(audit_section(p.audit, m["bundle_id"], p.manifest_sha256))
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return page(
        f"Privacy review {m['site']} {m['kind']} {m['bundle_id'][:8]} ({'pass' if ok else 'FAIL'})",
        tag("div", join(sections), class_="numbered"),
        footer=f"Written {stamp} by site-agent review {shared.__version__}. Self-contained: "
        "no scripts, no external resources.",
    )


__all__ = ["AuditView", "ReviewPage", "bundle_audit", "render_review_html"]
