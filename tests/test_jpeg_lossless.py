"""JPEG Lossless SV1 encoder: bit-exact round trips through real DICOM files and pylibjpeg."""

from __future__ import annotations

import heapq
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import JPEGLosslessSV1, MRImageStorage, generate_uid

from shared.phantom.jpeg_lossless import (
    FIXED_HUFFMAN_BITS,
    FIXED_HUFFMAN_VALUES,
    JPEG_LOSSLESS_SV1_UID,
    _code_table,
    _optimal_code_lengths,
    encapsulate_frames,
    encode_jpeg_lossless_sv1,
)

RNG_SEED = 20240611


def _rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


def _precision_for(bits_stored: int, bits_allocated: int) -> int | None:
    """JPEG precision to use: pydicom 3.0 cannot decode P <= 8 with BitsAllocated 16."""
    return 12 if bits_allocated == 16 and bits_stored <= 8 else None


def _write_and_read(
    tmp_path: Path,
    frames: list[np.ndarray],
    bits_stored: int,
    *,
    bits_allocated: int = 16,
    optimize: bool = True,
    precision: int | str | None = "auto",
) -> np.ndarray:
    """Encode ``frames``, save a real DICOM file, read it back and decode it with pydicom."""
    if precision == "auto":
        precision = _precision_for(bits_stored, bits_allocated)
    assert precision is None or isinstance(precision, int)
    rows, cols = frames[0].shape
    signed = frames[0].dtype.kind == "i"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGLosslessSV1

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    encoded = [
        encode_jpeg_lossless_sv1(f, bits_stored, optimize=optimize, precision=precision)
        for f in frames
    ]
    ds.PixelData = encapsulate_frames(encoded)
    ds["PixelData"].VR = "OB"

    path = tmp_path / "frame.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == JPEG_LOSSLESS_SV1_UID
    assert back.file_meta.TransferSyntaxUID.is_compressed
    return back.pixel_array


def _noise(bits: int, shape: tuple[int, int], dtype: type = np.uint16) -> np.ndarray:
    return _rng().integers(0, 1 << bits, shape).astype(dtype)


def _gradient(bits: int, shape: tuple[int, int]) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    top = (1 << bits) - 1
    smooth = 0.5 + 0.25 * np.sin(x / 9.0) + 0.25 * np.cos(y / 13.0)
    return np.round(smooth * top).astype(np.uint16)


def _ramp(bits: int, shape: tuple[int, int]) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    return ((x * 7 + y * 3) % (1 << bits)).astype(np.uint16)


def _checkerboard(bits: int, shape: tuple[int, int]) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    return np.where((x + y) % 2 == 0, 0, (1 << bits) - 1).astype(np.uint16)


def _all_categories_row() -> np.ndarray:
    """One 16-bit row whose left-neighbour differences hit every category 0..16.

    Category ``c`` (1..15) is a difference of magnitude ``2**(c - 1)``, category 16 the
    difference 32768, both signs. The category counts are the Fibonacci numbers, which makes the
    unrestricted Huffman tree deeper than 16 levels and so exercises the K.3 length limiting.
    """
    counts = [1, 1]
    while len(counts) < 17:
        counts.append(counts[-1] + counts[-2])
    magnitudes = [0] + [1 << (c - 1) for c in range(1, 16)] + [32768]
    rng = _rng()
    diffs = np.repeat(np.array(magnitudes, np.int64), counts)
    diffs *= rng.choice(np.array([-1, 1]), diffs.size)
    rng.shuffle(diffs)
    # The first pixel is predicted by 2**15, every later one by its left neighbour.
    return ((32768 + np.cumsum(diffs)) % 65536).astype(np.uint16)[None, :]


# name, frame factory, bits_stored
UNSIGNED_CASES: list[tuple[str, Callable[[], np.ndarray], int]] = [
    ("noise12", lambda: _noise(12, (64, 80)), 12),
    ("noise12_384", lambda: _noise(12, (384, 384)), 12),
    ("noise16_full_range", lambda: _noise(16, (48, 40)), 16),
    ("noise8_uint8", lambda: _noise(8, (40, 48), np.uint8), 8),
    ("noise8_uint16", lambda: _noise(8, (33, 21)), 8),
    ("noise2", lambda: _noise(2, (16, 16)), 2),
    ("noise15", lambda: _noise(15, (20, 30)), 15),
    ("gradient8", lambda: _gradient(8, (96, 128)), 8),
    ("gradient12", lambda: _gradient(12, (128, 96)), 12),
    ("gradient16", lambda: _gradient(16, (64, 64)), 16),
    ("ramp16_wraps", lambda: _ramp(16, (50, 70)), 16),
    ("constant_zero", lambda: np.zeros((32, 32), np.uint16), 12),
    ("constant_mid", lambda: np.full((31, 17), 1234, np.uint16), 12),
    ("constant_max16", lambda: np.full((8, 9), 65535, np.uint16), 16),
    ("max_range_checker16", lambda: _checkerboard(16, (16, 18)), 16),
    ("max_range_checker12", lambda: _checkerboard(12, (15, 13)), 12),
    ("max_range_columns16", lambda: np.tile(np.array([0, 65535], np.uint16), (9, 6)), 16),
    ("max_range_rows16", lambda: np.repeat(np.array([[0], [65535]], np.uint16), 7, axis=1), 16),
    ("all_categories", _all_categories_row, 16),
    ("size_1x1", lambda: np.array([[3000]], np.uint16), 12),
    ("size_1x1_zero", lambda: np.array([[0]], np.uint16), 16),
    ("size_1x7", lambda: _noise(12, (1, 7)), 12),
    ("size_7x1", lambda: _noise(12, (7, 1)), 12),
    ("size_17x33", lambda: _noise(12, (17, 33)), 12),
    ("size_17x33_16bit", lambda: _noise(16, (17, 33)), 16),
]

SIGNED_CASES: list[tuple[str, Callable[[], np.ndarray], int]] = [
    (
        "int16_full_range",
        lambda: _rng().integers(-32768, 32768, (40, 50)).astype(np.int16),
        16,
    ),
    ("int16_12bit", lambda: _rng().integers(-2048, 2048, (33, 17)).astype(np.int16), 12),
    ("int16_ct_like", lambda: _gradient(12, (64, 64)).astype(np.int16) - 1024, 13),
    (
        "int16_extremes",
        lambda: np.array([[-32768, 32767, -1, 0], [0, -1, 32767, -32768]], np.int16),
        16,
    ),
    ("int16_all_negative", lambda: np.full((5, 6), -7, np.int16), 12),
    ("int8_in_16_bits", lambda: _rng().integers(-128, 128, (9, 11)).astype(np.int8), 8),
    ("int16_8bit", lambda: _rng().integers(-128, 128, (12, 11)).astype(np.int16), 8),
    ("int16_2bit", lambda: _rng().integers(-2, 2, (12, 11)).astype(np.int16), 2),
]


@pytest.mark.parametrize("optimize", [True, False], ids=["optimal", "fixed"])
@pytest.mark.parametrize(
    ("make_frame", "bits_stored"),
    [case[1:] for case in UNSIGNED_CASES],
    ids=[case[0] for case in UNSIGNED_CASES],
)
def test_unsigned_round_trip(
    tmp_path: Path, make_frame: Callable[[], np.ndarray], bits_stored: int, optimize: bool
) -> None:
    frame = make_frame()
    decoded = _write_and_read(tmp_path, [frame], bits_stored, optimize=optimize)
    assert decoded.shape == frame.shape
    assert decoded.dtype.kind == "u"
    np.testing.assert_array_equal(decoded, frame)


@pytest.mark.parametrize("optimize", [True, False], ids=["optimal", "fixed"])
@pytest.mark.parametrize(
    ("make_frame", "bits_stored"),
    [case[1:] for case in SIGNED_CASES],
    ids=[case[0] for case in SIGNED_CASES],
)
def test_signed_round_trip(
    tmp_path: Path, make_frame: Callable[[], np.ndarray], bits_stored: int, optimize: bool
) -> None:
    frame = make_frame()
    assert frame.min() < 0
    decoded = _write_and_read(tmp_path, [frame], bits_stored, optimize=optimize)
    assert decoded.shape == frame.shape
    assert decoded.dtype.kind == "i", "pydicom should return signed values for PixelRep 1"
    np.testing.assert_array_equal(decoded, frame)


@pytest.mark.parametrize(
    ("frames", "bits_stored"),
    [
        ([_noise(12, (24, 20)), _gradient(12, (24, 20)), np.zeros((24, 20), np.uint16)], 12),
        ([_checkerboard(16, (9, 7)), _noise(16, (9, 7)), _ramp(16, (9, 7))], 16),
        ([np.full((5, 5), v, np.int16) - np.eye(5, dtype=np.int16) * 900 for v in (-3, 0, 99)], 12),
    ],
    ids=["unsigned12", "unsigned16", "signed12"],
)
def test_multi_frame_round_trip(tmp_path: Path, frames: list[np.ndarray], bits_stored: int) -> None:
    decoded = _write_and_read(tmp_path, frames, bits_stored)
    assert decoded.shape == (3, *frames[0].shape)
    np.testing.assert_array_equal(decoded, np.stack(frames))


# name, frames, bits_stored: BitsAllocated 8 keeps the JPEG precision at bits_stored.
BITS_ALLOCATED_8_CASES: list[tuple[str, list[np.ndarray], int]] = [
    ("noise8", [_noise(8, (40, 48), np.uint8)], 8),
    ("gradient8", [_gradient(8, (64, 80)).astype(np.uint8)], 8),
    ("checker8", [_checkerboard(8, (9, 10)).astype(np.uint8)], 8),
    ("noise2", [_noise(2, (16, 17), np.uint8)], 2),
    ("noise6_17x33", [_noise(6, (17, 33), np.uint8)], 6),
    ("size_1x1", [np.array([[255]], np.uint8)], 8),
    ("int8_signed", [_rng().integers(-128, 128, (9, 11)).astype(np.int8)], 8),
    ("int8_signed5", [_rng().integers(-16, 16, (7, 13)).astype(np.int8)], 5),
    (
        "three_frames",
        [_noise(8, (6, 5), np.uint8), np.zeros((6, 5), np.uint8), np.full((6, 5), 255, np.uint8)],
        8,
    ),
]


@pytest.mark.parametrize(
    ("frames", "bits_stored"),
    [case[1:] for case in BITS_ALLOCATED_8_CASES],
    ids=[case[0] for case in BITS_ALLOCATED_8_CASES],
)
def test_bits_allocated_8_round_trip(
    tmp_path: Path, frames: list[np.ndarray], bits_stored: int
) -> None:
    decoded = _write_and_read(tmp_path, frames, bits_stored, bits_allocated=8)
    assert decoded.dtype == frames[0].dtype
    expected = frames[0] if len(frames) == 1 else np.stack(frames)
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("precision", [9, 12, 16])
@pytest.mark.parametrize(
    ("frame", "bits_stored"),
    [
        (_noise(8, (20, 30)), 8),
        (_noise(4, (20, 30)), 4),
        (_rng().integers(-128, 128, (20, 30)).astype(np.int16), 8),
        (_noise(9, (20, 30)), 9),
    ],
    ids=["unsigned8", "unsigned4", "signed8", "unsigned9"],
)
def test_precision_above_bits_stored(
    tmp_path: Path, frame: np.ndarray, bits_stored: int, precision: int
) -> None:
    decoded = _write_and_read(tmp_path, [frame], bits_stored, precision=precision)
    np.testing.assert_array_equal(decoded, frame)


@pytest.mark.xfail(
    raises=ValueError,
    strict=False,
    reason="pydicom 3.0 sizes libjpeg's JPEG Lossless output by BitsAllocated; libjpeg returns "
    "8-bit samples for precision <= 8, so BitsAllocated 16 needs precision >= 9",
)
def test_pydicom_cannot_decode_precision_8_in_16_bits(tmp_path: Path) -> None:
    frame = _noise(8, (8, 8))
    decoded = _write_and_read(tmp_path, [frame], 8, precision=None)
    np.testing.assert_array_equal(decoded, frame)


def _split_markers(stream: bytes) -> dict[int, bytes]:
    """Marker segments before the scan, by marker code; plus the entropy data under 0xDA + 1."""
    assert stream[:2] == b"\xff\xd8" and stream[-2:] == b"\xff\xd9"
    segments: dict[int, bytes] = {}
    pos = 2
    while True:
        assert stream[pos] == 0xFF
        marker = stream[pos + 1]
        length = int.from_bytes(stream[pos + 2 : pos + 4], "big")
        segments[marker] = stream[pos + 4 : pos + 2 + length]
        pos += 2 + length
        if marker == 0xDA:
            segments[0xDA + 1] = stream[pos:-2]
            return segments


@pytest.mark.parametrize(
    ("frame", "bits_stored", "precision"),
    [
        (_noise(12, (37, 29)), 12, None),
        (_noise(16, (31, 40)), 16, None),
        (_noise(8, (40, 40), np.uint8), 8, None),
        (_noise(8, (40, 40), np.uint8), 8, 12),
    ],
    ids=["noise12", "noise16", "noise8", "noise8_precision12"],
)
def test_bitstream_structure(frame: np.ndarray, bits_stored: int, precision: int | None) -> None:
    stream = encode_jpeg_lossless_sv1(frame, bits_stored, precision=precision)
    seg = _split_markers(stream)
    sof = seg[0xC3]
    assert sof[0] == (precision or bits_stored)
    assert int.from_bytes(sof[1:3], "big") == frame.shape[0]
    assert int.from_bytes(sof[3:5], "big") == frame.shape[1]
    assert sof[5:] == bytes([1, 1, 0x11, 0])
    assert seg[0xDA] == bytes([1, 1, 0x00, 1, 0, 0])  # predictor 1, Se 0, Ah/Al 0
    dht = seg[0xC4]
    assert dht[0] == 0x00
    bits = list(dht[1:17])
    values = list(dht[17:])
    assert len(values) == sum(bits)
    assert set(values) <= set(range(17))
    # Byte stuffing: every 0xFF in the entropy-coded data is followed by a stuffed 0x00.
    data = np.frombuffer(seg[0xDA + 1], np.uint8)
    ff = np.flatnonzero(data == 0xFF)
    assert ff.size > 0, "random data should produce at least one 0xFF byte to stuff"
    assert np.all(ff + 1 < data.size)
    assert np.all(data[ff + 1] == 0x00)


def _reference_decode(stream: bytes) -> tuple[np.ndarray, str]:
    """Decode an SV1 stream bit by bit in plain Python (independent of libjpeg).

    Returns the unsigned sample values and the bits left after the last pixel (the padding).
    """
    seg = _split_markers(stream)
    precision = seg[0xC3][0]
    rows = int.from_bytes(seg[0xC3][1:3], "big")
    cols = int.from_bytes(seg[0xC3][3:5], "big")
    bits, values = list(seg[0xC4][1:17]), list(seg[0xC4][17:])
    table: dict[str, int] = {}
    code, k = 0, 0
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            table[format(code, f"0{length}b")] = values[k]
            code, k = code + 1, k + 1
        code <<= 1
    data = seg[0xDA + 1].replace(b"\xff\x00", b"\xff")
    bitstring = "".join(format(byte, "08b") for byte in data)
    out = np.zeros((rows, cols), np.int64)
    pos = 0
    for r in range(rows):
        for c in range(cols):
            prefix = ""
            while prefix not in table:
                prefix += bitstring[pos]
                pos += 1
                assert len(prefix) <= 16
            ssss = table[prefix]
            if ssss == 16:
                diff = 32768
            elif ssss == 0:
                diff = 0
            else:
                extra = int(bitstring[pos : pos + ssss], 2)
                pos += ssss
                diff = extra if extra >= 1 << (ssss - 1) else extra - (1 << ssss) + 1
            if r == 0 and c == 0:
                pred = 1 << (precision - 1)
            elif c == 0:
                pred = int(out[r - 1, 0])
            else:
                pred = int(out[r, c - 1])
            out[r, c] = (pred + diff) % 65536
    return out, bitstring[pos:]


@pytest.mark.parametrize(
    ("frame", "bits_stored"),
    [
        (np.array([[2048]], np.uint16), 12),  # one 1-bit code, 7 padding bits
        (np.full((1, 3), 2048, np.uint16), 12),
        (_noise(12, (13, 11)), 12),
        (_checkerboard(16, (5, 6)), 16),
        (_all_categories_row()[:, :300], 16),
        (_gradient(8, (9, 31)), 8),
        (_noise(16, (1, 1)), 16),
    ],
    ids=["1x1_pred", "1x3_pred", "noise12", "checker16", "categories16", "gradient8", "1x1_16"],
)
@pytest.mark.parametrize("optimize", [True, False], ids=["optimal", "fixed"])
def test_reference_decoder_and_padding(frame: np.ndarray, bits_stored: int, optimize: bool) -> None:
    decoded, padding = _reference_decode(
        encode_jpeg_lossless_sv1(frame, bits_stored, optimize=optimize)
    )
    np.testing.assert_array_equal(decoded, frame)
    assert len(padding) < 8
    assert set(padding) <= {"1"}, "the last byte is padded with 1-bits"


def test_padding_bits_exact() -> None:
    # 2048 is predicted exactly: one symbol (category 0) with code "0", then seven 1-bits.
    seg = _split_markers(encode_jpeg_lossless_sv1(np.array([[2048]], np.uint16), 12))
    assert seg[0xDA + 1] == b"\x7f"
    seg = _split_markers(encode_jpeg_lossless_sv1(np.full((1, 3), 2048, np.uint16), 12))
    assert seg[0xDA + 1] == b"\x1f"


def _check_table(bits: list[int] | tuple[int, ...], values: list[int] | tuple[int, ...]) -> None:
    assert len(bits) == 16
    assert len(values) == sum(bits) == len(set(values))
    kraft = sum(n / 2**length for length, n in enumerate(bits, start=1))
    assert kraft < 1, "the all-ones code must stay unused"
    codes, lengths = _code_table(bits, values)
    for value in values:
        assert 1 <= lengths[value] <= 16
        assert codes[value] != (1 << int(lengths[value])) - 1, "no all-ones code"


def test_fixed_table_covers_all_categories() -> None:
    _check_table(FIXED_HUFFMAN_BITS, FIXED_HUFFMAN_VALUES)
    assert sorted(FIXED_HUFFMAN_VALUES) == list(range(17))


@pytest.mark.parametrize(
    "frequencies",
    [
        [1] * 17,
        [1000] + [0] * 16,
        [0] * 16 + [5],
        [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597],
        [2**c for c in range(17)],
        [0, 0, 0, 40, 30, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 1],
    ],
    ids=["flat", "one_symbol", "only_16", "fibonacci", "powers_of_two", "sparse"],
)
def test_optimal_table_is_valid_and_limited(frequencies: list[int]) -> None:
    bits, values = _optimal_code_lengths(np.array(frequencies))
    _check_table(bits, values)
    assert sorted(values) == [c for c, f in enumerate(frequencies) if f > 0]
    _, lengths = _code_table(bits, values)
    # More frequent categories never get longer codes.
    used = [c for c, f in enumerate(frequencies) if f > 0]
    for a in used:
        for b in used:
            if frequencies[a] > frequencies[b]:
                assert lengths[a] <= lengths[b]


def _huffman_cost(frequencies: list[int]) -> int:
    """Total bits of a plain (unlimited) Huffman code for ``frequencies``."""
    heap = [f for f in frequencies if f]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


@pytest.mark.parametrize(
    "frequencies",
    [
        [50, 120, 300, 220, 90, 40, 10, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [5, 9000, 7000, 4000, 2500, 1200, 600, 300, 100, 40, 20, 8, 3, 0, 0, 0, 0],
        [1] * 17,
    ],
    ids=["skewed", "mr_like", "flat"],
)
def test_optimal_table_is_huffman_optimal_when_not_limited(frequencies: list[int]) -> None:
    """Without length limiting, K.2 is a Huffman code over the categories plus the reserved
    count-1 symbol, which sits at the deepest level: its cost plus that depth is optimal."""
    bits, values = _optimal_code_lengths(np.array(frequencies))
    _, lengths = _code_table(bits, values)
    cost = sum(f * int(lengths[c]) for c, f in enumerate(frequencies))
    assert cost + int(lengths.max()) == _huffman_cost([*frequencies, 1])
    assert cost >= _huffman_cost(frequencies)


def test_optimal_beats_fixed_on_noise() -> None:
    frame = _noise(12, (128, 128))
    assert len(encode_jpeg_lossless_sv1(frame, 12)) < len(
        encode_jpeg_lossless_sv1(frame, 12, optimize=False)
    )


def test_encoding_384_is_fast() -> None:
    frame = _noise(12, (384, 384))
    encode_jpeg_lossless_sv1(frame, 12)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        encode_jpeg_lossless_sv1(frame, 12)
        best = min(best, time.perf_counter() - start)
    # About 0.01 s on a 2-core machine; the bound only catches a per-pixel Python loop.
    assert best < 0.25


_U16 = np.zeros((2, 2), np.uint16)

# id, frame, bits_stored, precision, pattern of the ValueError message
BAD_INPUT_CASES: list[tuple[str, object, object, object, str]] = [
    (
        "3d",
        np.zeros((2, 3, 4), np.uint16),
        12,
        None,
        r"frame: expected a 2D array \(rows, cols\), received 3D with shape \(2, 3, 4\)",
    ),
    ("1d", np.zeros(5, np.uint16), 12, None, r"frame: expected a 2D array .*received 1D"),
    (
        "float64",
        np.zeros((4, 4), np.float64),
        12,
        None,
        r"frame: expected dtype uint8, uint16, int8 or int16, received dtype float64",
    ),
    (
        "float32",
        np.zeros((4, 4), np.float32),
        12,
        None,
        r"frame: expected dtype .*received dtype float32",
    ),
    (
        "int32",
        np.zeros((4, 4), np.int32),
        12,
        None,
        r"frame: expected dtype .*received dtype int32",
    ),
    ("bool", np.zeros((4, 4), bool), 12, None, r"frame: expected dtype .*received dtype bool"),
    (
        "empty",
        np.zeros((0, 4), np.uint16),
        12,
        None,
        r"frame: expected 1\.\.65535 rows and columns, received shape \(0, 4\)",
    ),
    ("not_array", [[1, 2]], 12, None, r"frame: expected a numpy\.ndarray, received list"),
    (
        "over_12_bits",
        np.full((3, 3), 4096, np.uint16),
        12,
        None,
        r"frame: expected unsigned values in \[0, 4095\] for bits_stored=12, "
        r"received values in \[4096, 4096\]",
    ),
    (
        "over_8_bits",
        np.array([[0, 256]], np.uint16),
        8,
        None,
        r"frame: expected unsigned values in \[0, 255\] .*received values in \[0, 256\]",
    ),
    (
        "over_8_bits_with_precision",
        np.array([[0, 256]], np.uint16),
        8,
        12,
        r"frame: expected unsigned values in \[0, 255\] for bits_stored=8",
    ),
    (
        "signed_under",
        np.array([[-2049, 0]], np.int16),
        12,
        None,
        r"frame: expected signed values in \[-2048, 2047\] .*received values in \[-2049, 0\]",
    ),
    (
        "signed_over",
        np.array([[2048]], np.int16),
        12,
        None,
        r"frame: expected signed values in \[-2048, 2047\] .*received values in \[2048, 2048\]",
    ),
    ("bits_1", _U16, 1, None, r"bits_stored: expected an int in 2\.\.16, received 1$"),
    ("bits_17", _U16, 17, None, r"bits_stored: expected an int in 2\.\.16, received 17$"),
    (
        "bits_float",
        _U16,
        12.0,
        None,
        r"bits_stored: expected an int in 2\.\.16, received float 12\.0",
    ),
    ("bits_bool", _U16, True, None, r"bits_stored: expected an int .*received bool True"),
    (
        "precision_below_bits",
        _U16,
        12,
        11,
        r"precision: expected an int in 12\.\.16 \(at least bits_stored\), received 11$",
    ),
    ("precision_17", _U16, 12, 17, r"precision: expected an int in 12\.\.16 .*received 17$"),
    ("precision_str", _U16, 8, "12", r"precision: expected an int in 8\.\.16 .*received str '12'"),
]


@pytest.mark.parametrize(
    ("frame", "bits_stored", "precision", "pattern"),
    [case[1:] for case in BAD_INPUT_CASES],
    ids=[case[0] for case in BAD_INPUT_CASES],
)
def test_rejects_bad_input(
    frame: object, bits_stored: object, precision: object, pattern: str
) -> None:
    with pytest.raises(ValueError, match=pattern):
        encode_jpeg_lossless_sv1(frame, bits_stored, precision=precision)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("frame", "bits_stored", "precision"),
    [case[1:4] for case in BAD_INPUT_CASES],
    ids=[case[0] for case in BAD_INPUT_CASES],
)
def test_error_messages_name_argument_expected_and_received(
    frame: object, bits_stored: object, precision: object
) -> None:
    with pytest.raises(ValueError) as info:
        encode_jpeg_lossless_sv1(frame, bits_stored, precision=precision)  # type: ignore[arg-type]
    assert re.fullmatch(r"(frame|bits_stored|precision): expected .+, received .+", str(info.value))
