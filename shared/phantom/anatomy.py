"""A continuous pelvis phantom in patient space (LPS, mm), sampled by any acquisition grid.

Every structure is defined analytically in millimetres, so each series samples the *same*
object through its own geometry: the truth for co-registration is exact, and angulated or
coarser series see what a scanner would. Tissues carry T2 and T1 weights, proton density (S0)
and an apparent diffusion coefficient in µm²/s (= 10⁻⁶ mm²/s); values follow the literature
ranges for 3 T prostate MRI (normal PZ ADC 1500-1800, csPCa 700-1000, TZ ~1200, urine ~3000).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Per tissue: T2 weight, T1 weight, proton density S0, ADC (µm²/s).
TISSUES: dict[str, tuple[float, float, float, float]] = {
    "air": (0.0, 0.0, 0.0, 0.0),
    "fat": (0.75, 0.95, 0.08, 300.0),
    "muscle": (0.22, 0.35, 0.30, 1400.0),
    "marrow": (0.55, 0.80, 0.06, 400.0),
    "cortex": (0.03, 0.03, 0.02, 200.0),
    "urine": (1.00, 0.10, 1.00, 3000.0),
    "rectal_wall": (0.35, 0.40, 0.50, 1200.0),
    "rectal_air": (0.02, 0.02, 0.02, 0.0),
    "pz": (0.70, 0.35, 0.75, 1650.0),
    "tz": (0.42, 0.35, 0.65, 1250.0),
    "afms": (0.18, 0.35, 0.40, 1100.0),
    "urethra": (0.60, 0.30, 0.70, 1800.0),
    "sv": (0.90, 0.30, 0.90, 2000.0),
    "bph_glandular": (0.66, 0.35, 0.70, 1450.0),
    "bph_stromal": (0.26, 0.35, 0.60, 1050.0),
    "prostatitis": (0.50, 0.35, 0.70, 1300.0),
    "lesion": (0.25, 0.35, 0.75, 850.0),
}
PROPS = ("t2", "t1", "s0", "adc")
_MARGIN = 1e-6  # relative radius (or mm along S) kept clear of the full-weight core's edge


@dataclass
class Ellipsoid:
    """Ellipsoid with centre (LPS mm), semi-axes (mm) and a rotation about the S axis (rad)."""

    center: np.ndarray
    radii: np.ndarray
    yaw: float = 0.0
    irregularity: float = 0.0  # amplitude of a smooth angular perturbation of the radius
    phase: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def radius_norm(self, p: np.ndarray) -> np.ndarray:
        """Normalised radius at the (n, 3) points ``p``: < 1 inside, 1 on the surface."""
        d = p - self.center
        return self._radius(d[:, 0], d[:, 1], d[:, 2])

    def _radius(self, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> np.ndarray:
        """Normalised radius at the offsets (dx, dy, dz) from the centre (arrays of one
        shape)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        x = (c * dx + s * dy) / self.radii[0]
        y = (-s * dx + c * dy) / self.radii[1]
        z = dz / self.radii[2]
        r = np.sqrt(x * x + y * y + z * z)
        if self.irregularity > 0:
            rr = np.maximum(r, 1e-6)
            wobble = (
                np.sin(3 * (x / rr) + self.phase[0])
                + np.sin(2 * (y / rr) + self.phase[1])
                + np.sin(3 * (z / rr) + self.phase[2])
            )
            r = r / (1.0 + self.irregularity * wobble / 3.0)
        return r

    def reach(self, edge_mm: float) -> float:
        """Radius of the sphere outside which the weight is 0."""
        return float(np.max(self.radii)) * (1.0 + self.irregularity) + edge_mm

    def bounds(self, edge_mm: float) -> tuple[np.ndarray, np.ndarray]:
        """The tightest LPS box (lo, hi) outside which the weight is 0.

        The weight vanishes where the normalised radius reaches 1 + edge / (2 min radius); the
        irregularity divides that radius by at most 1 + irregularity. So the weight is 0
        outside the ellipsoid with the radii scaled by both, whose box after the yaw is below,
        and (``weight``) outside the sphere of ``reach``. That sphere alone would be up to 5x
        wider than the long, thin muscles.
        """
        e = max(edge_mm, 1e-3)
        a, b, c = self.radii * (1.0 + self.irregularity) * (1.0 + 0.5 * e / np.min(self.radii))
        cy, sy = abs(np.cos(self.yaw)), abs(np.sin(self.yaw))
        half = np.array([np.hypot(a * cy, b * sy), np.hypot(a * sy, b * cy), c])
        half = np.minimum(half, self.reach(edge_mm))
        return self.center - half, self.center + half

    def weight(self, p: np.ndarray, edge_mm: float) -> np.ndarray:
        """Soft membership in [0, 1] at the (n, 3) points ``p`` (see ``weight_at``)."""
        return self.weight_at(p[:, 0], p[:, 1], p[:, 2], edge_mm)

    def weight_at(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, edge_mm: float) -> np.ndarray:
        """Soft membership in [0, 1] at the points with LPS coordinates ``x``, ``y``, ``z``
        (arrays of one shape); the edge is ``edge_mm`` wide (partial volume)."""
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        reach = self.reach(edge_mm)
        near = dx * dx + dy * dy + dz * dz < reach * reach  # outside it the weight is 0
        scale = float(np.min(self.radii))
        w = np.clip(0.5 + (1.0 - self._radius(dx, dy, dz)) * scale / max(edge_mm, 1e-3), 0.0, 1.0)
        return np.where(near, w, 0.0)

    def solid_at(self, corners: np.ndarray, edge_mm: float) -> bool:
        """Whether the weight is exactly 1 in the whole box spanned by ``corners``: a regular
        ellipsoid's full-weight core is convex, so its corners decide (with a margin, so that
        rounding inside cannot give less than 1). An irregular one is not convex."""
        if self.irregularity > 0:
            return False
        full = 1.0 - 0.5 * max(edge_mm, 1e-3) / float(np.min(self.radii))
        return bool(np.all(self.radius_norm(corners) < full - _MARGIN))


@dataclass
class Cylinder:
    """Elliptic cylinder along S, from ``z0`` to ``z1`` (mm)."""

    center_xy: np.ndarray
    radii_xy: np.ndarray
    z0: float = -1e9
    z1: float = 1e9

    def bounds(self, edge_mm: float) -> tuple[np.ndarray, np.ndarray]:
        """An LPS box (lo, hi) outside which the weight is 0: in-plane the weight vanishes
        beyond r = 1 + edge / (2 min radius), along S half an edge beyond z0 and z1."""
        e = max(edge_mm, 1e-3)
        xy = self.radii_xy * (1.0 + e / float(np.min(self.radii_xy)))
        lo = np.array([*(self.center_xy - xy), self.z0 - e])
        hi = np.array([*(self.center_xy + xy), self.z1 + e])
        return lo, hi

    def weight(self, p: np.ndarray, edge_mm: float) -> np.ndarray:
        """Soft membership in [0, 1] at the (n, 3) points ``p`` (see ``weight_at``)."""
        return self.weight_at(p[:, 0], p[:, 1], p[:, 2], edge_mm)

    def weight_at(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, edge_mm: float) -> np.ndarray:
        """Soft membership in [0, 1] at the points with LPS coordinates ``x``, ``y``, ``z``
        (arrays of one shape); the edges are ``edge_mm`` wide (partial volume)."""
        qx = (x - self.center_xy[0]) / self.radii_xy[0]
        qy = (y - self.center_xy[1]) / self.radii_xy[1]
        r = np.sqrt(qx * qx + qy * qy)
        w = np.clip(0.5 + (1.0 - r) * float(np.min(self.radii_xy)) / max(edge_mm, 1e-3), 0, 1)
        wz = np.clip(0.5 + np.minimum(z - self.z0, self.z1 - z) / edge_mm, 0, 1)
        return w * wz

    def solid_at(self, corners: np.ndarray, edge_mm: float) -> bool:
        """Whether the weight is exactly 1 in the whole box spanned by ``corners`` (the body
        fills every field of view): in-plane and along S the full-weight core is convex, so
        the corners decide, with a margin against rounding inside."""
        e = max(edge_mm, 1e-3)
        q = (corners[:, :2] - self.center_xy) / self.radii_xy
        inplane = np.sqrt(np.sum(q * q, axis=1)) < 1.0 - 0.5 * e / float(np.min(self.radii_xy))
        z = corners[:, 2]
        along = (z - self.z0 > 0.5 * e + _MARGIN) & (self.z1 - z > 0.5 * e + _MARGIN)
        return bool(np.all(inplane & along))


@dataclass
class SmoothField:
    """A smooth random field (sum of random plane waves), identical for every series."""

    k: np.ndarray  # (n, 3) wave vectors, rad/mm
    phase: np.ndarray  # (n,)
    amp: np.ndarray  # (n,)

    @classmethod
    def random(cls, rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float]):
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        wl = rng.uniform(*wavelength_mm, size=n)
        return cls(
            direction * (2 * np.pi / wl)[:, None],
            rng.uniform(0, 2 * np.pi, n),
            rng.normal(size=n) / np.sqrt(n),
        )

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """The field at the (n, 3) points ``p``."""
        return np.cos(p @ self.k.T + self.phase) @ self.amp

    def on_lattice(
        self, lattice: Lattice, box: tuple[slice, slice, slice] | None = None
    ) -> np.ndarray:
        """The field at the points of ``lattice`` in ``box`` (default: all), shaped like the
        box: ``self(lattice.points(box))`` to rounding, without a cosine per point and wave.

        On a lattice a plane wave factorises by axis, cos(k.p + phase) = Re(e^{i(k.o + phase)}
        e^{i i k.a_i} e^{i j k.a_j} e^{i l k.a_l}), so the sum over waves is one complex matrix
        product of per-axis factors.
        """
        si, sj, sk = box or tuple(slice(0, n) for n in lattice.shape)
        if len(self.amp) == 0:  # no waves: the field is 0, as ``__call__`` gives
            return np.zeros((si.stop - si.start, sj.stop - sj.start, sk.stop - sk.start))
        along = self.k @ lattice.axes  # (waves, 3): k . (step along i, j, k)
        start = self.amp * np.exp(1j * (self.phase + self.k @ lattice.origin))
        fi = np.exp(1j * np.outer(np.arange(si.start, si.stop), along[:, 0])) * start
        fj = np.exp(1j * np.outer(np.arange(sj.start, sj.stop), along[:, 1]))
        fk = np.exp(1j * np.outer(np.arange(sk.start, sk.stop) + lattice.k_offset, along[:, 2]))
        plane = (fi[:, None, :] * fj[None, :, :]).reshape(-1, len(self.amp))
        return (plane @ fk.T).real.reshape(len(fi), len(fj), len(fk))


@dataclass
class Lesion:
    shape: Ellipsoid
    zone: str  # "pz" or "tz"
    strength: float  # 0..1, conspicuity
    adc: float  # µm²/s at full strength
    significant: bool


@dataclass
class Patient:
    """One randomly drawn pelvis with its findings (all geometry in LPS mm)."""

    prostate_center: np.ndarray
    structures: list[tuple[str, object]]  # painter's order: (tissue, shape)
    prostate: Ellipsoid
    tz: Ellipsoid
    lesions: list[Lesion]
    mimics: list[tuple[str, object]]
    texture: SmoothField
    pz_adc: float
    tz_adc: float
    isup: int
    pirads: int

    @property
    def cspca(self) -> int:
        return int(self.isup >= 2)


def draw_patient(rng: np.random.Generator, positive: bool) -> Patient:
    """Draw a patient; ``positive`` decides whether a clinically significant cancer is present."""
    c = np.array([rng.normal(0, 4), rng.normal(0, 4), rng.normal(0, 4)])
    gland_scale = rng.uniform(0.85, 1.25)  # gland volume roughly 25-75 ml
    bph = rng.uniform(0.0, 1.0)  # transition-zone enlargement
    prostate = Ellipsoid(
        c, np.array([22.0, 16.0, 19.0]) * gland_scale * (1 + 0.15 * bph), yaw=rng.normal(0, 0.08)
    )
    tz_r = prostate.radii * np.array([0.55, 0.55, 0.7]) * (1.0 + 0.45 * bph)
    tz_r = np.minimum(tz_r, prostate.radii * 0.85)
    tz = Ellipsoid(c + np.array([0.0, -0.18 * prostate.radii[1], 0.12 * prostate.radii[2]]), tz_r)
    afms = Ellipsoid(
        c + np.array([0, -0.85 * prostate.radii[1], 0.1 * prostate.radii[2]]),
        np.array([0.6 * prostate.radii[0], 4.0, 0.7 * prostate.radii[2]]),
    )
    urethra = Cylinder(
        c[:2] + np.array([0, -0.15 * prostate.radii[1]]),
        np.array([2.5, 2.5]),
        c[2] - prostate.radii[2],
        c[2] + prostate.radii[2],
    )
    bladder_fill = rng.uniform(0.7, 1.3)
    bladder = Ellipsoid(
        c + np.array([0, -8.0, prostate.radii[2] + 22 * bladder_fill]),
        np.array([38.0, 30.0, 26.0]) * bladder_fill,
    )
    rect_y = c[1] + prostate.radii[1] + 13.0
    rectum = Cylinder(np.array([c[0], rect_y]), np.array([19.0, 13.0]))
    rect_air = Cylinder(
        np.array([c[0] + rng.normal(0, 2), rect_y + 1]),
        np.array([9.0, 5.0]) * rng.uniform(0.3, 1.2),
    )
    sv = [
        Ellipsoid(
            c + np.array([s * 16.0, prostate.radii[1] * 0.7, prostate.radii[2] + 6]),
            np.array([14.0, 5.0, 6.0]),
            yaw=s * 0.5,
        )
        for s in (-1, 1)
    ]
    body = Cylinder(np.array([0.0, -15.0]), np.array([175.0, 125.0]))
    muscles = [
        Ellipsoid(
            np.array([s * (prostate.radii[0] + 24), c[1] - 5, c[2]]),
            np.array([11.0, 32.0, 60.0]),
            yaw=s * 0.25,
        )
        for s in (-1, 1)
    ]
    levator = [
        Ellipsoid(
            np.array([s * (prostate.radii[0] + 8), c[1] + 10, c[2] - 15]),
            np.array([5.0, 22.0, 30.0]),
            yaw=-s * 0.5,
        )
        for s in (-1, 1)
    ]
    femur_c = [np.array([s * 92.0, c[1] - 5, c[2] + 25]) for s in (-1, 1)]
    femurs_cortex = [Ellipsoid(fc, np.array([27.0, 27.0, 27.0])) for fc in femur_c]
    femurs = [Ellipsoid(fc, np.array([24.0, 24.0, 24.0])) for fc in femur_c]
    pubis = [
        Ellipsoid(np.array([s * 14.0, c[1] - 45, c[2] + 10]), np.array([12.0, 9.0, 22.0]))
        for s in (-1, 1)
    ]

    structures: list[tuple[str, object]] = [("fat", body)]
    structures += [("muscle", m) for m in muscles + levator]
    structures += [("cortex", f) for f in femurs_cortex] + [("marrow", f) for f in femurs]
    structures += [("marrow", p) for p in pubis]
    structures += [("urine", bladder), ("rectal_wall", rectum), ("rectal_air", rect_air)]
    structures += [("sv", s) for s in sv]
    structures += [("pz", prostate), ("tz", tz), ("afms", afms), ("urethra", urethra)]

    # Benign mimics, independent of the label: BPH nodules in the TZ, prostatitis in the PZ.
    mimics: list[tuple[str, object]] = []
    for _ in range(rng.poisson(1.0 + 2.5 * bph)):
        kind = "bph_stromal" if rng.random() < 0.5 else "bph_glandular"
        mimics.append((kind, Ellipsoid(_point_in(rng, tz, 0.7), rng.uniform(3.5, 8.0, 3))))
    if rng.random() < 0.3:
        mimics.append(
            (
                "prostatitis",
                Ellipsoid(
                    _point_in_pz(rng, prostate, tz),
                    rng.uniform([8, 5, 8], [16, 9, 14]),
                    yaw=rng.uniform(0, np.pi),
                ),
            )
        )

    lesions: list[Lesion] = []
    if positive:
        isup = int(rng.choice([2, 3, 4, 5], p=[0.4, 0.3, 0.15, 0.15]))
        n = 1 if rng.random() < 0.8 else 2
        for _ in range(n):
            lesions.append(_draw_lesion(rng, prostate, tz, significant=True, isup=isup))
    else:
        isup = 1 if rng.random() < 0.25 else 0
        if isup == 1:  # ISUP 1: a small, faint, clinically insignificant focus
            lesions.append(_draw_lesion(rng, prostate, tz, significant=False, isup=1))

    pirads = _draw_pirads(rng, positive, lesions, mimics)
    return Patient(
        prostate_center=c,
        structures=structures,
        prostate=prostate,
        tz=tz,
        lesions=lesions,
        mimics=mimics,
        texture=SmoothField.random(rng, 24, (6.0, 20.0)),
        pz_adc=float(rng.uniform(1500, 1800)),
        tz_adc=float(rng.uniform(1150, 1350)),
        isup=isup,
        pirads=pirads,
    )


def _point_in(rng: np.random.Generator, e: Ellipsoid, frac: float) -> np.ndarray:
    while True:
        u = rng.uniform(-1, 1, 3)
        if np.sum(u * u) <= 1:
            return e.center + u * e.radii * frac


def _point_in_pz(rng: np.random.Generator, prostate: Ellipsoid, tz: Ellipsoid) -> np.ndarray:
    for _ in range(1000):
        p = _point_in(rng, prostate, 0.85)
        if tz.radius_norm(p[None])[0] > 1.15 and p[1] > prostate.center[1] - 4:
            return p
    return prostate.center + np.array([0.0, 0.7 * prostate.radii[1], 0.0])


def _draw_lesion(
    rng: np.random.Generator, prostate: Ellipsoid, tz: Ellipsoid, significant: bool, isup: int
) -> Lesion:
    zone = "pz" if rng.random() < 0.75 else "tz"
    center = _point_in_pz(rng, prostate, tz) if zone == "pz" else _point_in(rng, tz, 0.6)
    if significant:
        # csPCa lesions are mostly >= 0.5 ml (radius >= ~5 mm).
        size = rng.uniform(4.5, 9.5) * (1 + 0.08 * (isup - 2))
        strength = float(np.clip(rng.uniform(0.4, 1.0) + 0.05 * (isup - 2), 0.4, 1.0))
        adc = float(rng.uniform(950, 1050) - 60 * (isup - 2))  # 700-1000 at ISUP 2-5
    else:
        size = rng.uniform(2.5, 4.5)
        strength = float(rng.uniform(0.15, 0.35))
        adc = float(rng.uniform(1050, 1250))
    shape = Ellipsoid(
        center,
        size * rng.uniform(0.75, 1.25, 3),
        yaw=rng.uniform(0, np.pi),
        irregularity=rng.uniform(0.05, 0.25),
        phase=rng.uniform(0, 2 * np.pi, 3),
    )
    return Lesion(shape, zone, strength, adc, significant)


def _draw_pirads(
    rng: np.random.Generator,
    positive: bool,
    lesions: list[Lesion],
    mimics: list[tuple[str, object]],
) -> int:
    """A reader's PI-RADS: usually right, sometimes fooled by mimics or subtle cancers."""
    if positive:
        s = max(les.strength for les in lesions)
        base = 5 if s > 0.75 else 4 if s > 0.5 else 3
        return int(np.clip(base + rng.choice([-1, 0, 0, 0, 1]), 2, 5))
    suspicious = any(k in ("bph_stromal", "prostatitis") for k, _ in mimics) or bool(lesions)
    if suspicious:
        return int(rng.choice([2, 3, 4], p=[0.45, 0.4, 0.15]))
    return int(rng.choice([1, 2, 3], p=[0.3, 0.6, 0.1]))


@dataclass(frozen=True)
class Lattice:
    """The voxel centres of an acquisition grid, in LPS mm: point (i, j, k) is
    ``(i * axes[:, 0] + j * axes[:, 1]) + ((k + k_offset) * axes[:, 2] + origin)``."""

    origin: np.ndarray  # (3,)
    axes: np.ndarray  # (3, 3): columns are the i, j and k steps (mm)
    shape: tuple[int, int, int]
    k_offset: float = 0.0

    def points(self, box: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """(n, 3) points of ``box`` (default: all), in (i, j, k) C order."""
        si, sj, sk = box or tuple(slice(0, n) for n in self.shape)
        a = self.axes
        plane = (
            np.arange(si.start, si.stop)[:, None, None] * a[:, 0]
            + np.arange(sj.start, sj.stop)[None, :, None] * a[:, 1]
        )
        depth = (np.arange(sk.start, sk.stop) + self.k_offset)[:, None] * a[:, 2] + self.origin
        return (plane[:, :, None, :] + depth[None, None, :, :]).reshape(-1, 3)

    def coords(
        self, box: tuple[slice, slice, slice] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The L, P and S coordinates of the points of ``box`` (default: all), each an array
        shaped like the box: ``points(box)``'s columns, bit for bit (the same sums), without
        its (n, 3) layout, whose columns are strided."""
        si, sj, sk = box or tuple(slice(0, n) for n in self.shape)
        a = self.axes
        i = np.arange(si.start, si.stop)[:, None, None]
        j = np.arange(sj.start, sj.stop)[None, :, None]
        k = (np.arange(sk.start, sk.stop) + self.k_offset)[None, None, :]
        x, y, z = ((i * a[c, 0] + j * a[c, 1]) + (k * a[c, 2] + self.origin[c]) for c in range(3))
        return x, y, z

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """The index box holding every lattice point inside the LPS box [lo, hi]; None if it
        holds none."""
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                            for z in (lo[2], hi[2])])  # fmt: skip
        idx = np.linalg.solve(self.axes, (corners - self.origin).T).T
        idx[:, 2] -= self.k_offset
        first = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
        last = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 2, self.shape)
        if np.any(last <= first):
            return None
        return tuple(slice(int(f), int(t)) for f, t in zip(first, last, strict=True))  # type: ignore[return-value]

    def corners(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """(8, 3) LPS points of the first and last lattice point of ``box`` along each axis."""
        ends = [(s.start, s.stop - 1) for s in box]
        idx = np.array([[i, j, k] for i in ends[0] for j in ends[1] for k in ends[2]], float)
        idx[:, 2] += self.k_offset
        return idx @ self.axes.T + self.origin


def evaluate(patient: Patient, lattice: Lattice, edge_mm: float) -> dict[str, np.ndarray]:
    """Tissue properties (``PROPS``) and truth masks at the points of ``lattice``.

    Returns arrays of the lattice's shape: ``t2``, ``t1``, ``s0``, ``adc`` (µm²/s) and the soft
    masks ``prostate`` and ``lesion`` (significant lesions only). Each structure is evaluated
    only in the index box around it (``bounds``): outside it its weight is 0.
    """
    props = {k: np.zeros(lattice.shape, dtype=np.float32) for k in PROPS}

    def weight(shape: object) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        box = lattice.box(*shape.bounds(edge_mm))  # type: ignore[attr-defined]
        if box is None:
            return None
        size = tuple(s.stop - s.start for s in box)
        if shape.solid_at(lattice.corners(box), edge_mm):  # type: ignore[attr-defined]
            return box, np.ones(size)  # e.g. the body around the field of view
        return box, shape.weight_at(*lattice.coords(box), edge_mm)  # type: ignore[attr-defined]

    def paint(tissue: str, box, w: np.ndarray, override: dict[str, float] | None = None) -> None:
        vals = dict(zip(PROPS, TISSUES[tissue], strict=True))
        if override:
            vals.update(override)
        for k in PROPS:  # where w is 0 this adds exactly 0
            view = props[k][box]
            view += w * (vals[k] - view)

    for tissue, shape in patient.structures:
        got = weight(shape)
        if got is None or not np.any(got[1]):
            continue
        override = {"adc": patient.pz_adc} if tissue == "pz" else None
        if tissue == "tz":
            override = {"adc": patient.tz_adc}
        paint(tissue, *got, override)

    prostate_w = np.zeros(lattice.shape, dtype=np.float64)
    got = weight(patient.prostate)
    if got is not None:
        prostate_w[got[0]] = got[1]
    inside = prostate_w > 0
    if np.any(inside):  # glandular heterogeneity ("organised chaos" of the TZ)
        box = got[0]  # type: ignore[index]
        sub_inside = inside[box]
        tex = patient.texture.on_lattice(lattice, box)[sub_inside].astype(np.float32)
        pw = prostate_w[box][sub_inside]
        props["t2"][box][sub_inside] *= 1.0 + 0.12 * tex * pw
        props["adc"][box][sub_inside] *= 1.0 + 0.05 * tex * pw

    for tissue, shape in patient.mimics:
        got = weight(shape)
        if got is None:
            continue
        w = got[1] * prostate_w[got[0]]
        if np.any(w):
            paint(tissue, got[0], w * (0.6 if tissue == "prostatitis" else 1.0))

    lesion_mask = np.zeros(lattice.shape, dtype=np.float64)
    for les in patient.lesions:
        got = weight(les.shape)
        if got is None:
            continue
        box = got[0]
        w = got[1] * prostate_w[box]
        if not np.any(w):
            continue
        t2, t1, s0, _ = TISSUES["lesion"]
        vals = {"t2": t2, "t1": t1, "s0": s0, "adc": les.adc}
        # Conspicuity (strength) modulates T2 darkening and signal; the ADC of the tumour
        # itself stays restricted (700-1000 µm²/s for csPCa), as in real lesions.
        ws = w * les.strength
        for k in PROPS:
            wk = w if k == "adc" else ws
            view = props[k][box]
            view += wk * (vals[k] - view)
        if les.significant:
            sub = lesion_mask[box]
            np.maximum(sub, w, out=sub)
    props["prostate"] = prostate_w.astype(np.float32)
    props["lesion"] = lesion_mask
    return props
