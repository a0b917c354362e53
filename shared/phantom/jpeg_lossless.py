"""Pure-numpy encoder for DICOM JPEG Lossless, Non-Hierarchical, First-Order Prediction.

Transfer syntax 1.2.840.10008.1.2.4.70 ("JPEG Lossless SV1"): ITU-T T.81 Process 14, one
component, selection value (predictor) 1 (``Ra``, the left neighbour), point transform 0.
pydicom 3 can decode this syntax (through pylibjpeg-libjpeg) but cannot encode it, and the
phantom DICOM generator needs to write files the way GE and Philips PACS exports do.

Conventions
-----------
- A frame is a 2D array ``(rows, cols)``; rows run top to bottom, columns left to right, as in
  DICOM ``PixelData``. Values are the stored pixel values, not rescaled (no slope/intercept).
- Unsigned dtypes (``uint8``, ``uint16``) hold values in ``[0, 2**bits_stored - 1]``.
- Signed dtypes (``int8``, ``int16``; DICOM ``PixelRepresentation`` 1) hold values in
  ``[-2**(bits_stored - 1), 2**(bits_stored - 1) - 1]``; the encoder stores their two's-complement
  bit pattern truncated to ``bits_stored`` bits, as DICOM does, and the decoder (pydicom) turns it
  back into signed values.
- The JPEG sample precision ``P`` equals ``bits_stored`` (2..16) unless ``precision`` asks for
  more. Use ``precision >= 9`` when the dataset has ``BitsAllocated`` 16 but ``BitsStored`` <= 8:
  pydicom 3.0 sizes pylibjpeg-libjpeg's output by ``BitsAllocated`` for this syntax, while libjpeg
  returns 8-bit samples for ``P`` <= 8, so such a file fails to decode ("buffer size must be a
  multiple of element size"); dcm4che encodes such images as 12-bit for the same reason. With
  ``BitsAllocated`` 8 keep the default.

Prediction follows T.81 H.1.2: the first pixel of the frame is predicted by ``2**(P - 1)``, the
rest of the first row by ``Ra``, the first pixel of every other row by ``Rb`` (the pixel above),
every other pixel by ``Ra``. Differences are taken modulo 2**16 and mapped to [-32768, 32767];
category (SSSS) 16 stands for the difference 32768 and carries no extra bits.

The Huffman table is, by default, the optimal length-limited table for the frame's histogram of
categories, built with the T.81 Annex K.2 procedure exactly as libjpeg's ``optimize_coding`` does
(including the reserved code point that keeps an all-ones code out of the table). It therefore
only lists the categories that occur. With ``optimize=False`` a fixed table that covers all
categories 0..16 is used instead (see :data:`FIXED_HUFFMAN_BITS`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.encaps import encapsulate

__all__ = [
    "FIXED_HUFFMAN_BITS",
    "FIXED_HUFFMAN_VALUES",
    "JPEG_LOSSLESS_SV1_UID",
    "encapsulate_frames",
    "encode_jpeg_lossless_sv1",
]

JPEG_LOSSLESS_SV1_UID = "1.2.840.10008.1.2.4.70"
"""DICOM transfer syntax UID for JPEG Lossless, Non-Hierarchical, First-Order Prediction."""

_N_CATEGORIES = 17  # SSSS 0..16
_MAX_CODE_LENGTH = 16

_ALLOWED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int8), np.dtype(np.int16))

# Markers (T.81 Table B.1).
_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
_SOF3 = b"\xff\xc3"  # lossless, Huffman, sequential
_DHT = b"\xff\xc4"
_SOS = b"\xff\xda"


def _optimal_code_lengths(frequencies: np.ndarray) -> tuple[list[int], list[int]]:
    """Build a length-limited Huffman table (T.81 Annex K.2, Figures K.1 to K.3).

    Parameters
    ----------
    frequencies : np.ndarray
        Counts of each category, shape ``(17,)``; zero means the category is not in the table.

    Returns
    -------
    bits : list of int
        ``BITS``: ``bits[i]`` is the number of codes of length ``i + 1``, ``i`` in 0..15.
    values : list of int
        ``HUFFVAL``: the categories in order of increasing code length, then category.
    """
    n = len(frequencies)
    # One extra symbol with count 1 reserves the all-ones code point (as libjpeg does); it has
    # the largest symbol number, so it sorts last and is the code that K.2 removes at the end.
    freq = [int(f) for f in frequencies] + [1]
    codesize = [0] * (n + 1)
    others = [-1] * (n + 1)
    while True:
        # Smallest nonzero frequency; on ties the larger symbol number (libjpeg's rule).
        c1 = -1
        for i, f in enumerate(freq):
            if f and (c1 < 0 or f <= freq[c1]):
                c1 = i
        c2 = -1
        for i, f in enumerate(freq):
            if f and i != c1 and (c2 < 0 or f <= freq[c2]):
                c2 = i
        if c2 < 0:
            break
        freq[c1] += freq[c2]
        freq[c2] = 0
        codesize[c1] += 1
        while others[c1] >= 0:
            c1 = others[c1]
            codesize[c1] += 1
        others[c1] = c2
        codesize[c2] += 1
        while others[c2] >= 0:
            c2 = others[c2]
            codesize[c2] += 1

    max_len = max(max(codesize), _MAX_CODE_LENGTH)
    bits = [0] * (max_len + 1)
    for size in codesize:
        if size:
            bits[size] += 1
    # Figure K.3: limit the code lengths to 16 bits.
    for i in range(max_len, _MAX_CODE_LENGTH, -1):
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
    # Remove the reserved code point (the longest code).
    i = _MAX_CODE_LENGTH
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1

    values = [s for size in range(1, max_len + 1) for s in range(n) if codesize[s] == size]
    return bits[1 : _MAX_CODE_LENGTH + 1], values


def _code_table(bits: Sequence[int], values: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Turn ``BITS``/``HUFFVAL`` into per-category codes and lengths (T.81 Annex C).

    Returns
    -------
    codes, lengths : np.ndarray
        int64 arrays of shape ``(17,)``; categories not in the table have length 0.
    """
    codes = np.zeros(_N_CATEGORIES, dtype=np.int64)
    lengths = np.zeros(_N_CATEGORIES, dtype=np.int64)
    code = 0
    k = 0
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            codes[values[k]] = code
            lengths[values[k]] = length
            code += 1
            k += 1
        code <<= 1
    return codes, lengths


# Fixed table for ``optimize=False``, in the form of T.81 Table K.3: the Annex K.2 table of a
# bell-shaped nominal histogram over categories 0..16 (peak at 6, round(1000 * exp(-((c - 6) / 4)
# ** 2)) + 1), which suits 8- to 16-bit MR data; code lengths 3 (categories 4..8) to 10 (16).
FIXED_HUFFMAN_BITS: tuple[int, ...] = (0, 0, 5, 4, 3, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0)
"""``BITS`` of the fixed table: the number of codes of length 1..16."""
FIXED_HUFFMAN_VALUES: tuple[int, ...] = (4, 5, 6, 7, 8, 2, 3, 9, 10, 0, 1, 11, 12, 13, 14, 15, 16)
"""``HUFFVAL`` of the fixed table: categories 0..16 in order of code length."""


def _check_int(name: str, value: object, low: int, high: int, what: str) -> int:
    """Return ``value`` as an int if it is an integer in ``low..high``, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(
            f"{name}: expected an int in {low}..{high}{what}, "
            f"received {type(value).__name__} {value!r}"
        )
    if not low <= int(value) <= high:
        raise ValueError(f"{name}: expected an int in {low}..{high}{what}, received {value}")
    return int(value)


def _validate(frame: np.ndarray, bits_stored: int, precision: int | None) -> tuple[np.ndarray, int]:
    """Check the arguments; return the frame as an int32 bit pattern, and the JPEG precision."""
    bits_stored = _check_int("bits_stored", bits_stored, 2, 16, "")
    if precision is None:
        precision = bits_stored
    else:
        precision = _check_int("precision", precision, bits_stored, 16, " (at least bits_stored)")
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame: expected a numpy.ndarray, received {type(frame).__name__}")
    if frame.ndim != 2:
        raise ValueError(
            f"frame: expected a 2D array (rows, cols), received {frame.ndim}D with shape "
            f"{frame.shape}"
        )
    rows, cols = frame.shape
    if not (1 <= rows <= 65535 and 1 <= cols <= 65535):
        raise ValueError(f"frame: expected 1..65535 rows and columns, received shape {frame.shape}")
    if frame.dtype not in _ALLOWED_DTYPES:
        raise ValueError(
            f"frame: expected dtype uint8, uint16, int8 or int16, received dtype {frame.dtype}"
        )
    signed = frame.dtype.kind == "i"
    if signed:
        lo, hi = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    else:
        lo, hi = 0, (1 << bits_stored) - 1
    fmin, fmax = int(frame.min()), int(frame.max())
    if fmin < lo or fmax > hi:
        kind = "signed" if signed else "unsigned"
        raise ValueError(
            f"frame: expected {kind} values in [{lo}, {hi}] for bits_stored={bits_stored}, "
            f"received values in [{fmin}, {fmax}]"
        )
    pixels = frame.astype(np.int32)
    if signed:
        pixels &= (1 << bits_stored) - 1  # two's-complement bit pattern of bits_stored bits
    return pixels, precision


def _pack_bits(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate variable-length big-endian codes into bytes, padding the end with 1-bits.

    Parameters
    ----------
    values : np.ndarray
        int64 code words, each right-aligned in ``lengths`` bits (1 to 63 bits each).
    lengths : np.ndarray
        int64 number of bits of each code word, at least 1.

    Returns
    -------
    np.ndarray
        uint8 bytes, before byte stuffing.
    """
    ends = np.cumsum(lengths)
    total = int(ends[-1])
    starts = ends - lengths
    word = starts >> 6
    # Left-align each code at its bit offset in its 64-bit word; a code that does not fit
    # leaves its low bits for the next word ("spill"). Codes that start in the same word are
    # consecutive, so one OR-reduction per word assembles it.
    shift = 64 - (starts & 63) - lengths
    code = values.astype(np.uint64)
    fits = shift >= 0
    head = np.where(
        fits,
        code << np.maximum(shift, 0).astype(np.uint64),
        code >> np.maximum(-shift, 0).astype(np.uint64),
    )
    words = np.zeros((total + 63) // 64 + 1, dtype=np.uint64)
    first = np.flatnonzero(np.diff(word, prepend=-1))
    words[word[first]] = np.bitwise_or.reduceat(head, first)
    spill = np.flatnonzero(~fits)  # at most one per word, so the fancy-index OR is safe
    words[word[spill] + 1] |= code[spill] << (64 + shift[spill]).astype(np.uint64)
    packed = words.astype(">u8").view(np.uint8)[: (total + 7) // 8].copy()
    if total % 8:
        packed[-1] |= 0xFF >> (total % 8)
    return packed


def _segment(marker: bytes, payload: bytes) -> bytes:
    return marker + (len(payload) + 2).to_bytes(2, "big") + payload


def encode_jpeg_lossless_sv1(
    frame: np.ndarray, bits_stored: int, *, optimize: bool = True, precision: int | None = None
) -> bytes:
    """Encode one 2D frame as a complete JPEG Lossless SV1 bitstream (SOI ... EOI).

    Parameters
    ----------
    frame : np.ndarray
        Stored pixel values, shape ``(rows, cols)`` with 1..65535 of each, dtype ``uint8`` or
        ``uint16`` (``PixelRepresentation`` 0) or ``int8`` or ``int16`` (``PixelRepresentation``
        1, stored as the two's-complement pattern of ``bits_stored`` bits).
    bits_stored : int
        DICOM ``BitsStored``, 2..16. Every value must fit in it.
    optimize : bool, optional
        True (default): an optimal Huffman table for this frame (T.81 Annex K.2). False: the fixed
        table :data:`FIXED_HUFFMAN_BITS` / :data:`FIXED_HUFFMAN_VALUES` covering categories 0..16.
    precision : int, optional
        JPEG sample precision ``P``, ``bits_stored``..16; default ``bits_stored``. Pass 9 or more
        (dcm4che uses 12) for ``BitsAllocated`` 16 with ``BitsStored`` <= 8, which pydicom 3.0
        cannot decode at ``P`` <= 8 (see the module notes). The samples keep their
        ``bits_stored``-bit values, so the decoded pixels are the same.

    Returns
    -------
    bytes
        SOI, DHT, SOF3, SOS (predictor 1, point transform 0), the byte-stuffed entropy-coded
        data and EOI; one JPEG image, ready for :func:`encapsulate_frames`.

    Raises
    ------
    ValueError
        If ``frame`` is not a 2D array of an allowed dtype and size, if ``bits_stored`` is not in
        2..16 or ``precision`` not in ``bits_stored``..16, or if a value does not fit in
        ``bits_stored`` bits; the message names the argument, what was expected and what was
        received.
    """
    pixels, precision = _validate(frame, bits_stored, precision)
    rows, cols = pixels.shape

    prediction = np.empty_like(pixels)
    prediction[:, 1:] = pixels[:, :-1]  # Ra
    prediction[1:, 0] = pixels[:-1, 0]  # Rb for the first column
    prediction[0, 0] = 1 << (precision - 1)
    diff = pixels - prediction
    diff = ((diff + 32768) & 0xFFFF) - 32768  # modulo 2**16, in [-32768, 32767]
    diff = diff.ravel().astype(np.int64)

    # SSSS: number of bits of |diff|; frexp's exponent is exactly that (0 for 0).
    category = np.frexp(np.abs(diff).astype(np.float32))[1].astype(np.int64)

    if optimize:
        bits, values = _optimal_code_lengths(np.bincount(category, minlength=_N_CATEGORIES))
    else:
        bits, values = FIXED_HUFFMAN_BITS, FIXED_HUFFMAN_VALUES
    codes, code_lengths = _code_table(bits, values)

    n_extra = np.where(category == 16, 0, category)  # SSSS 16 (diff 32768) has no extra bits
    extra = (diff - (diff < 0)) & ((np.int64(1) << n_extra) - 1)  # negative: diff - 1
    words = (codes[category] << n_extra) | extra
    entropy = _pack_bits(words, code_lengths[category] + n_extra)
    stuff_at = np.flatnonzero(entropy == 0xFF)
    if stuff_at.size:
        entropy = np.insert(entropy, stuff_at + 1, 0)

    dht = _segment(_DHT, bytes([0x00, *bits, *values]))  # class 0 (DC/lossless), table 0
    sof3 = _segment(
        _SOF3,
        bytes([precision])
        + rows.to_bytes(2, "big")
        + cols.to_bytes(2, "big")
        + bytes([1, 1, 0x11, 0]),  # one component: id 1, H=V=1, Tq 0
    )
    sos = _segment(_SOS, bytes([1, 1, 0x00, 1, 0, 0x00]))  # Ns 1; Cs 1, Td 0; Ss=1, Se 0, Al 0
    return b"".join((_SOI, dht, sof3, sos, entropy.tobytes(), _EOI))


def encapsulate_frames(frames: Sequence[bytes]) -> bytes:
    """Encapsulate JPEG frames for DICOM ``PixelData``, one fragment per frame.

    Parameters
    ----------
    frames : Sequence of bytes
        One complete JPEG bitstream per frame, as from :func:`encode_jpeg_lossless_sv1`.

    Returns
    -------
    bytes
        The encapsulated value with a Basic Offset Table (``pydicom.encaps.encapsulate``); odd
        length fragments are padded to even length.
    """
    return encapsulate(list(frames), fragments_per_frame=1, has_bot=True)
