"""Phantom realism and determinism, measured on the written DICOM (not on internals)."""

from __future__ import annotations

import hashlib

import numpy as np

from shared.dicom.reader import load_volume
from shared.dicom.scan import scan
from shared.phantom.consortium import generate_study
from shared.phantom.dicom_writer import _pixel_data as dicom_writer_pixel_data
from shared.phantom.institutions import get_institution
from shared.profiles import get_profile
from shared.volume import load_nifti, resample
from tests.dicom_support import save_whole_with_pydicom


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.dcm")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    inst, prof = get_institution("borealis"), get_profile("tiny")
    generate_study(tmp_path / "a", inst, prof, 7, 3)
    generate_study(tmp_path / "b", inst, prof, 7, 3)
    generate_study(tmp_path / "c", inst, prof, 8, 3)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_worker_processes_write_the_bytes_one_process_writes(tmp_path):
    """Two workers, each held to one BLAS/OpenMP thread (shared/worker_threads.py), write
    every DICOM, NIfTI and MHA file byte for byte as one process with the default threads."""
    from shared.phantom.consortium import generate_site

    generate_site(tmp_path / "one", 3, "external", 5, "tiny", workers=1)
    generate_site(tmp_path / "two", 3, "external", 5, "tiny", workers=2)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.*"))
    assert len([f for f in files if f.suffix == ".mha"]) == 9
    for f in files:
        assert (tmp_path / "two" / f).read_bytes() == (tmp_path / "one" / f).read_bytes(), f


def test_lesion_and_gland_adc_are_in_clinical_ranges(phantom_sites):
    """Vendor ADC (fitted from noisy DWI) in the lesion core vs the normal peripheral zone."""
    lesion_adc, gland_adc = [], []
    for site in phantom_sites.values():
        result = scan(site.dicom, workers=1)
        by_uid = {s.study_uid: s for s in result.studies}
        for t in site.truths:
            adc = load_volume(by_uid[t.study_uid].chosen["adc"])
            masks = {
                k: load_nifti(site.root / "masks" / f"{t.study_uid}_{k}.nii.gz")
                for k in ("lesion", "prostate")
            }
            on_adc = {
                k: resample(m, adc.affine, adc.shape, "linear", antialias=False).array
                for k, m in masks.items()
            }
            core = on_adc["lesion"] > 0.9
            gland = (on_adc["prostate"] > 0.9) & (on_adc["lesion"] < 0.01)
            if t.cspca and core.sum() >= 3:
                lesion_adc.append(float(np.median(adc.array[core])))
            gland_adc.append(float(np.median(adc.array[gland])))
    assert len(lesion_adc) >= 2
    assert 650 < np.median(lesion_adc) < 1100, lesion_adc
    assert 1150 < np.median(gland_adc) < 1800, gland_adc  # PZ ~1500-1800 mixed with TZ ~1250
    assert max(lesion_adc) < min(gland_adc)


def test_classic_phantom_files_pass_dciodvfy(phantom_sites):
    """The phantom's single-frame MR files validate (no errors) with Clunie's dciodvfy, so the
    ingest is exercised on conformant exports, as from a scanner."""
    import subprocess
    import sys
    from pathlib import Path

    dciodvfy = Path(sys.executable).parent / "dciodvfy"  # console script of the pip package
    files = []
    for name in ("borealis", "cascade", "external"):  # JPEG-Lossless, JPEG 2000, explicit
        for series in sorted((phantom_sites[name].dicom).glob("*/*/*")):
            files.append(sorted(series.glob("*.dcm"))[0])
    assert len(files) >= 15
    for f in files:
        proc = subprocess.run([str(dciodvfy), str(f)], capture_output=True, text=True)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
        assert errors == [], (f, errors)


def _native_j2k(frames, syntax, header, _ours=dicom_writer_pixel_data):
    """JPEG 2000 frames left native, for ``Dataset.compress`` to encode in the reference."""
    return frames.tobytes() if syntax == "j2k" else _ours(frames, syntax, header)


def test_every_export_syntax_is_deterministic_and_the_element_cache_writes_pydicoms_bytes(
    tmp_path, monkeypatch
):
    """Same seed, same bytes in every transfer syntax (JPEG 2000 too: pydicom's compress()
    would draw a new SOP Instance UID), and the series writer's element cache (each stack's
    shared header encoded once, each slice's own elements on top) lays a file out byte for
    byte as pydicom's own dcmwrite does with the whole data set; its JPEG 2000 frames are
    the bytes pydicom's Dataset.compress() gives."""
    from shared.phantom import dicom_writer

    inst, prof = get_institution("cascade"), get_profile("tiny")
    for syntax in ("explicit", "implicit", "jpeg-lossless", "j2k"):
        force = {"syntax": syntax, "enhanced": False}
        generate_study(tmp_path / syntax / "a", inst, prof, 7, 1, force=force)
        generate_study(tmp_path / syntax / "b", inst, prof, 7, 1, force=force)
        with monkeypatch.context() as m:  # pydicom's compress() and dcmwrite for every file
            m.setattr(
                dicom_writer.ElementCache,
                "write_slice",
                lambda self, *args: save_whole_with_pydicom(*args),
            )
            m.setattr(dicom_writer, "_pixel_data", _native_j2k)
            generate_study(tmp_path / syntax / "pydicom", inst, prof, 7, 1, force=force)
        a = _digest(tmp_path / syntax / "a")
        assert a == _digest(tmp_path / syntax / "b"), syntax
        assert a == _digest(tmp_path / syntax / "pydicom"), syntax


def test_each_structure_is_zero_outside_the_lattice_box_it_is_evaluated_in():
    """The phantom evaluates a structure only inside the index box of its bounds: every
    lattice point outside that box must have weight 0 (checked on the whole lattice)."""
    from shared.phantom.acquire import lattice, make_grid, orientation
    from shared.phantom.anatomy import draw_patient

    rng = np.random.default_rng(0)
    for trial in range(6):
        patient = draw_patient(rng, positive=bool(trial % 2))
        kind = ("axial", "sagittal", "coronal")[trial % 3]
        grid = make_grid(
            patient.prostate_center + rng.normal(0, 3, 3),
            orientation(kind, float(rng.normal(0, 8))),
            2.0,
            90.0,
            3.6,
            14,
        )
        lat = lattice(grid, k_offset=float(rng.uniform(-0.4, 0.4)))
        pts = lat.points()
        shapes = [s for _, s in patient.structures + patient.mimics]
        shapes += [les.shape for les in patient.lesions] + [patient.prostate]
        for shape in shapes:
            edge = 2.0
            w = shape.weight(pts, edge).reshape(lat.shape)
            box = lat.box(*shape.bounds(edge))
            outside = w.copy()
            if box is not None:
                outside[box] = 0
            assert not np.any(outside), type(shape).__name__


def test_ellipsoid_bounds_are_the_tightest_box_and_solid_boxes_have_full_weight():
    """``Ellipsoid.bounds`` is the box of its nonzero weight (the muscles' bounding sphere was
    5x wider than they are); where a shape says a box is solid, every point in it weighs 1."""
    from shared.phantom.anatomy import Cylinder, Ellipsoid

    rng = np.random.default_rng(3)
    edge = 1.5
    for trial in range(40):
        irregular = trial % 2 == 1
        e = Ellipsoid(
            rng.normal(0, 10, 3),
            rng.uniform(3, 60, 3),
            yaw=float(rng.uniform(-np.pi, np.pi)),
            irregularity=float(rng.uniform(0.05, 0.25)) if irregular else 0.0,
            phase=rng.uniform(0, 2 * np.pi, 3),
        )
        lo, hi = e.bounds(edge)
        # nothing outside the box has weight (the box covers the support) ...
        out = hi + rng.random((20_000, 3)) * 5.0 * np.sign(rng.normal(size=3))
        assert not np.any(e.weight(out, edge)), trial
        # ... and a regular ellipsoid's support reaches within 3 % of each face: a plane that
        # deep inside the box cuts it (a dense grid over that plane finds weight)
        if not irregular:
            g = np.linspace(0.0, 1.0, 150)
            for axis in range(3):
                a, b = [k for k in range(3) if k != axis]
                for depth in (lo[axis] + 0.03 * (hi - lo)[axis], hi[axis] - 0.03 * (hi - lo)[axis]):
                    plane = np.zeros((g.size**2, 3))
                    plane[:, a] = lo[a] + np.repeat(g, g.size) * (hi - lo)[a]
                    plane[:, b] = lo[b] + np.tile(g, g.size) * (hi - lo)[b]
                    plane[:, axis] = depth
                    assert np.any(e.weight(plane, edge)), (trial, axis)

    body = Cylinder(np.array([0.0, -15.0]), np.array([175.0, 125.0]))
    rectum = Cylinder(np.array([0.0, 30.0]), np.array([19.0, 13.0]), -40.0, 40.0)
    ball = Ellipsoid(np.zeros(3), np.array([40.0, 30.0, 35.0]), yaw=0.3)
    for shape, half in ((body, 50.0), (rectum, 4.0), (ball, 12.0), (ball, 30.0), (body, 140.0)):
        corners = np.array([[x, y, z] for x in (-half, half) for y in (-half, half)
                            for z in (-half, half)])  # fmt: skip
        pts = -half + rng.random((100_000, 3)) * 2 * half
        w = shape.weight(np.vstack([corners, pts]), edge)
        if shape.solid_at(corners, edge):
            assert np.all(w == 1.0), (type(shape).__name__, half)
        else:  # not solid: some point of the box weighs less than 1
            assert np.any(w < 1.0), (type(shape).__name__, half)
    assert body.solid_at(np.array([[50.0, 50, 50], [-50, -50, -50]]), edge)  # fills a FOV
    irregular = Ellipsoid(np.zeros(3), np.full(3, 50.0), irregularity=0.1)
    assert not irregular.solid_at(np.zeros((1, 3)), edge)  # not convex: never declared solid


def _box_shape(box: tuple[slice, slice, slice]) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in box)


def _random_lattices(rng, n):
    """Lattices of random angulated grids around a drawn patient's gland, with a box inside
    each (and the patient)."""
    from shared.phantom.acquire import lattice, make_grid, orientation
    from shared.phantom.anatomy import draw_patient

    for trial in range(n):
        patient = draw_patient(rng, positive=bool(trial % 2))
        kind = ("axial", "sagittal", "coronal")[trial % 3]
        grid = make_grid(
            patient.prostate_center + rng.normal(0, 3, 3),
            orientation(kind, float(rng.normal(0, 8))),
            float(rng.uniform(0.5, 2.5)),
            float(rng.uniform(40, 100)),
            3.6,
            int(rng.integers(1, 15)),
        )
        lat = lattice(grid, k_offset=float(rng.uniform(-0.4, 0.4)))
        lo = [int(rng.integers(0, n)) for n in lat.shape]
        box = tuple(
            slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(lo, lat.shape, strict=True)
        )
        yield patient, lat, box


def _point_list_weight(shape, p: np.ndarray, edge: float) -> np.ndarray:
    """A structure's weights at the (n, 3) points ``p`` as the phantom computed them before it
    evaluated coordinate arrays (an ellipsoid only at the points within its reach)."""
    from shared.phantom.anatomy import Ellipsoid

    if isinstance(shape, Ellipsoid):
        reach, d = shape.reach(edge), p - shape.center
        near = np.einsum("ij,ij->i", d, d) < reach * reach
        out = np.zeros(p.shape[0])
        if np.any(near):
            r = shape.radius_norm(p[near])
            scale = float(np.min(shape.radii))
            out[near] = np.clip(0.5 + (1.0 - r) * scale / max(edge, 1e-3), 0.0, 1.0)
        return out
    q = (p[:, :2] - shape.center_xy) / shape.radii_xy
    r = np.sqrt(np.sum(q * q, axis=1))
    w = np.clip(0.5 + (1.0 - r) * float(np.min(shape.radii_xy)) / max(edge, 1e-3), 0, 1)
    return w * np.clip(0.5 + np.minimum(p[:, 2] - shape.z0, shape.z1 - p[:, 2]) / edge, 0, 1)


def test_lattice_coordinates_and_structure_weights_are_the_point_lists_bit_for_bit():
    """The phantom evaluates structures on a lattice box's coordinate arrays (``coords``,
    ``weight_at``): the same numbers as the (n, 3) point list and the point-list weights it
    used before, to the bit."""
    rng = np.random.default_rng(11)
    for patient, lat, box in _random_lattices(rng, 9):
        for b in (None, box):
            pts = lat.points(b)
            x, y, z = lat.coords(b)
            shape = tuple(s.stop - s.start for s in b) if b else lat.shape
            assert x.shape == y.shape == z.shape == shape
            assert np.array_equal(np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1), pts)
            shapes = [s for _, s in patient.structures + patient.mimics]
            shapes += [les.shape for les in patient.lesions] + [patient.prostate]
            for s in shapes:
                w = s.weight_at(x, y, z, 1.5)
                ref = _point_list_weight(s, pts, 1.5).reshape(shape)
                assert np.array_equal(w, ref), type(s).__name__


def test_smooth_field_on_a_lattice_is_the_sum_of_cosines_at_its_points():
    """``SmoothField.on_lattice`` (per-axis complex exponentials, one matrix product) against
    the field's definition evaluated at every point: the texture's short waves and the bias
    field's long ones, on angulated lattices with sub-slice offsets and boxes."""
    from shared.phantom.anatomy import SmoothField

    rng = np.random.default_rng(5)
    for patient, lat, box in _random_lattices(rng, 9):
        bias = SmoothField.random(rng, 6, (250.0, 450.0))
        for field in (patient.texture, bias):
            for b in (None, box):
                direct = field(lat.points(b)).reshape(lat.coords(b)[0].shape)
                assert np.allclose(field.on_lattice(lat, b), direct, rtol=0, atol=1e-12)
    flat = SmoothField(np.zeros((0, 3)), np.zeros(0), np.zeros(0))  # no waves: 0 everywhere
    assert np.array_equal(flat.on_lattice(lat, box), flat(lat.points(box)).reshape(_box_shape(box)))
