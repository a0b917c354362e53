"""The bundle both sides use: what a site exports and the coordinator imports.

A bundle is a folder (optionally one tar file) holding::

    manifest.json   canonical JSON (sorted keys, no spaces, ASCII): format version, site, tool
                    version, profile, counts, every payload file (path, size, SHA-256),
                    provenance, the privacy-screen summary
    manifest.sig    64 raw bytes: Ed25519 over the exact bytes of manifest.json
    payload/...     synthetic cases (DICOM + NIfTI + labels.csv) or weights (safetensors + config)
    approvals/      reviewers' signed decisions, added after export, outside the manifest
                    (``shared.bundle.approval``)

``verify_bundle`` checks the signature first, then the manifest, then every file's size and
hash, and rejects extra, missing, linked or escaping paths; nothing in the payload is parsed
before that. A reviewer can check a signature without this toolkit::

    openssl pkeyutl -verify -pubin -inkey site.pub -rawin -in manifest.json -sigfile manifest.sig
"""

from shared.bundle.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SIGNATURE,
    UnknownSigner,
    VerifiedBundle,
    canonical_json,
    file_entries,
    open_bundle,
    pack_tar,
    sha256_file,
    unverified_claims,
    verify_bundle,
    write_signed_manifest,
)
from shared.bundle.signing import (
    fingerprint,
    load_public_key,
    public_key_pem,
    verify_signature,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "SIGNATURE",
    "UnknownSigner",
    "VerifiedBundle",
    "canonical_json",
    "file_entries",
    "fingerprint",
    "load_public_key",
    "open_bundle",
    "pack_tar",
    "public_key_pem",
    "sha256_file",
    "unverified_claims",
    "verify_bundle",
    "verify_signature",
    "write_signed_manifest",
]
