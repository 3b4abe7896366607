"""Generate the embedded demo data set of synthetic lesions on real anatomy.

Axial slices of the MNI ICBM152 2009a symmetric template that ships inside
nilearn (1 mm grid, loaded offline) are rendered as T1, T1C+ (T1 after
gadolinium) or T2 images from their tissue maps (grey matter, white matter,
CSF), and one synthetic lesion per image is painted on them by simple rules,
one rule per pathology. The images are phantoms: they
are NOT patient data and have no diagnostic value.

Usage:
    python scripts/make_demo_data.py [--out data/demo] [--per-class 150] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import shutil
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

logger = logging.getLogger(__name__)

SEQUENCES = ("T1", "T1C+", "T2")

# Folder prefix of each pathology, exactly as the classifier's class names.
PATHOLOGY_LABELS = {
    "glioma": (
        "Glioma (Astrocitoma, Ganglioglioma, Glioblastoma, "
        "Oligodendroglioma, Ependimoma)"
    ),
    "meningioma": "Meningioma (de Baixo Grau, Atípico, Anaplásico, Transicional)",
    "normal": "NORMAL",
    "neurocitoma": "Neurocitoma (Central - Intraventricular, Extraventricular)",
    "outros": ("Outros Tipos de Lesões (Abscessos, Cistos, Encefalopatias Diversas)"),
    "schwannoma": "Schwannoma (Acustico, Vestibular - Trigeminal)",
}

# Axial slice indices (1 mm template, z index 72 is z = 0 mm) that suit each
# pathology: posterior fossa for the cerebellopontine angle, the bodies of
# the lateral ventricles for the neurocytoma, supratentorial levels otherwise.
SLICE_RANGES = {
    "glioma": (76, 112),
    "meningioma": (80, 118),
    "normal": (44, 118),
    "neurocitoma": (86, 98),
    "outros": (62, 112),
    "schwannoma": (42, 48),
}

MIDLINE_COLUMN = 98  # x = 0 mm in the symmetric 1 mm template.
CPA_ROW = 130  # y = -30 mm: cerebellopontine angle, beside the pons.
OUTPUT_SIDES = (112, 144)  # Range of saved image sides, in pixels.
# JPEG, as in the public data set; at this quality the block artefacts stay
# well below the Rician noise.
JPEG_QUALITY = 90
CSV_COLUMNS = (
    "path",
    "class_name",
    "sequence",
    "pathology",
    "lesion_x0",
    "lesion_y0",
    "lesion_x1",
    "lesion_y1",
    "slice_index",
    "seed",
)


@dataclass
class Tissue:
    """Soft tissue maps of one axial slice, each `(rows, cols)` in [0, 1].

    Rows run anterior to posterior, columns follow the template's x axis.
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray

    def edge_distance(self) -> np.ndarray:
        """Distance in pixels from each brain pixel to the brain surface."""
        return ndimage.distance_transform_edt(self.mask > 0.5)


@dataclass
class Layer:
    """One lesion component painted over the anatomy by alpha blending.

    Attributes:
        alpha: Opacity map `(rows, cols)` in [0, 1].
        values: Per sequence, the intensity painted (a float or a map of
            the slice's shape) and an opacity factor.
    """

    alpha: np.ndarray
    values: dict[str, tuple[float | np.ndarray, float]]


@dataclass
class Lesion:
    """A synthetic lesion: its layers, the mass used for the bounding box."""

    layers: list[Layer] = field(default_factory=list)
    mass: np.ndarray | None = None


@dataclass
class ClassSpec:
    """One output class: pathology key, sequence and folder name."""

    pathology: str
    sequence: str

    @property
    def name(self) -> str:
        """Folder name of the class, normalised to Unicode NFC."""
        label = f"{PATHOLOGY_LABELS[self.pathology]} {self.sequence}"
        return unicodedata.normalize("NFC", label)


def class_specs() -> list[ClassSpec]:
    """Return the 17 classes in folder-name order (NORMAL has no T1C+)."""
    specs = [
        ClassSpec(pathology, sequence)
        for pathology in PATHOLOGY_LABELS
        for sequence in SEQUENCES
        if not (pathology == "normal" and sequence == "T1C+")
    ]
    return sorted(specs, key=lambda spec: spec.name)


def load_template() -> dict[str, np.ndarray]:
    """Load the 1 mm MNI152 tissue maps that ship inside the nilearn wheel.

    Returns:
        Volumes `(197, 233, 189)` keyed `gm`, `wm`, `csf`, `mask`; CSF is
        the brain mask minus grey and white matter.
    """
    from nilearn import datasets

    def volume(image) -> np.ndarray:
        return np.asarray(image.dataobj, dtype=np.float32)

    gm = np.clip(volume(datasets.load_mni152_gm_template(resolution=1)), 0, 1)
    wm = np.clip(volume(datasets.load_mni152_wm_template(resolution=1)), 0, 1)
    mask = volume(datasets.load_mni152_brain_mask(resolution=1))
    csf = np.clip(mask - gm - wm, 0, 1)
    return {"gm": gm, "wm": wm, "csf": csf, "mask": mask}


def axial_slice(template: dict[str, np.ndarray], index: int) -> Tissue:
    """Cut axial slice `index` with anterior at the top of the image."""
    maps = {key: volume[:, :, index].T[::-1].copy() for key, volume in template.items()}
    return Tissue(**maps)


# ----------------------------------------------------------------------------
# Shape primitives
# ----------------------------------------------------------------------------


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return rows.astype(np.float32), cols.astype(np.float32)


def irregular_blob(
    shape: tuple[int, int],
    center: tuple[float, float],
    radius: float,
    rng: np.random.Generator,
    irregularity: float = 0.15,
    edge: float = 1.0,
) -> np.ndarray:
    """Soft star-shaped blob whose radius wobbles with the angle.

    The boundary is `radius * (1 + sum_k a_k cos(k theta + phi_k))` for
    harmonics k = 2..6 with random amplitudes up to `irregularity`, so one
    seed gives one reproducible, random outline.

    Returns:
        Map of `shape` in [0, 1], 1 inside, with a ramp `edge` px wide.
    """
    rows, cols = _grid(shape)
    dy, dx = rows - center[0], cols - center[1]
    theta = np.arctan2(dy, dx)
    boundary = np.ones_like(theta)
    for k in range(2, 7):
        amplitude = rng.uniform(0, irregularity) / np.sqrt(k - 1)
        boundary += amplitude * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    distance = np.hypot(dy, dx) - radius * boundary
    return np.clip(0.5 - distance / max(edge, 1e-3), 0, 1)


def smooth_noise(
    shape: tuple[int, int], rng: np.random.Generator, sigma: float
) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to [0, 1] (texture, bias)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    low, high = noise.min(), noise.max()
    return ((noise - low) / (high - low + 1e-8)).astype(np.float32)


def mass_effect(
    tissue: Tissue, center: tuple[float, float], radius: float, strength: float
) -> Tissue:
    """Push the anatomy radially away from `center`, as a growing mass does.

    Output pixel at distance r samples the anatomy at distance
    r * (1 - strength * exp(-r^2 / (4 radius^2))); for strength < 1 the map
    is monotonic, so tissue is displaced without folding.
    """
    rows, cols = _grid(tissue.mask.shape)
    dy, dx = rows - center[0], cols - center[1]
    shrink = 1 - strength * np.exp(-(dy**2 + dx**2) / (4 * radius**2))
    coords = np.stack([center[0] + dy * shrink, center[1] + dx * shrink])
    warped = {
        key: ndimage.map_coordinates(getattr(tissue, key), coords, order=1)
        for key in ("gm", "wm", "csf", "mask")
    }
    return Tissue(**warped)


def _pick_pixel(
    candidates: np.ndarray, rng: np.random.Generator
) -> tuple[float, float]:
    """Pick one `True` pixel of a boolean map at random, as (row, col)."""
    rows, cols = np.nonzero(candidates)
    if rows.size == 0:
        raise ValueError("No candidate pixel for the lesion centre in this slice.")
    choice = rng.integers(rows.size)
    return float(rows[choice]), float(cols[choice])


def _side_mask(shape: tuple[int, int], side: int, margin: float) -> np.ndarray:
    """Columns of one hemisphere (`side` -1 or +1), `margin` px off midline."""
    cols = np.arange(shape[1])[None, :] - MIDLINE_COLUMN
    return np.broadcast_to(side * cols > margin, shape)


def _deepest(candidates: np.ndarray, depth: np.ndarray, wanted: float) -> np.ndarray:
    """Candidates at least `wanted` px deep, or the deepest third if none are.

    Large lesions do not fit `wanted` px from the surface on the smallest
    slices; there they sit as deep as the slice allows.
    """
    deep = candidates & (depth > wanted)
    if deep.any():
        return deep
    if not candidates.any():
        return candidates
    return candidates & (depth >= np.percentile(depth[candidates], 67))


# ----------------------------------------------------------------------------
# One rule per pathology
# ----------------------------------------------------------------------------


def draw_glioma(tissue: Tissue, rng: np.random.Generator) -> tuple[Tissue, Lesion]:
    """Intra-axial lobulated mass with necrotic core in hemispheric white matter.

    Rule: centre on white matter of one hemisphere, away from the surface;
    radius 18-26 px; lobulated outline; necrotic core 45-60 % of the radius;
    oedema halo 1.8-2.4 radii that follows white matter and stays in the
    lesion's hemisphere.
    T1: dark mass, darker core. T1C+: thick irregular bright ring around a
    dark core. T2: bright mass and a wide bright oedema halo.
    """
    radius = rng.uniform(18, 26)
    side = rng.choice((-1, 1))
    depth = tissue.edge_distance()
    white = (tissue.wm > 0.6) & _side_mask(depth.shape, side, 0.6 * radius)
    center = _pick_pixel(_deepest(white, depth, radius + 4), rng)
    tissue = mass_effect(tissue, center, radius, rng.uniform(0.3, 0.45))

    shape = tissue.mask.shape
    oedema = irregular_blob(
        shape, center, radius * rng.uniform(1.8, 2.4), rng, 0.3, edge=8
    )
    oedema *= np.clip(tissue.wm + 0.5 * tissue.gm, 0, 1) * tissue.mask
    oedema *= _side_mask(shape, side, 2.0)
    mass = irregular_blob(shape, center, radius, rng, 0.32, edge=1.5)
    core = irregular_blob(shape, center, radius * rng.uniform(0.45, 0.6), rng, 0.35)
    texture = smooth_noise(shape, rng, 2.0)
    layers = [
        Layer(oedema, {"T1": (0.42, 0.5), "T1C+": (0.42, 0.5), "T2": (0.88, 0.85)}),
        Layer(
            mass,
            {
                "T1": (0.28 + 0.08 * texture, 1.0),
                "T1C+": (0.95 + 0.05 * texture, 1.0),
                "T2": (0.68 + 0.12 * texture, 1.0),
            },
        ),
        Layer(core, {"T1": (0.1, 1.0), "T1C+": (0.1, 1.0), "T2": (0.95, 1.0)}),
    ]
    return tissue, Lesion(layers, mass)


def _surface_point(
    tissue: Tissue, rng: np.random.Generator
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Pick a convexity point on the brain surface and the inward normal."""
    mask = tissue.mask > 0.5
    rows, cols = np.nonzero(mask)
    centroid = rows.mean(), cols.mean()
    # Lateral and anterior-lateral convexity, away from the frontal pole.
    angle = rng.choice((-1, 1)) * rng.uniform(0.2, 0.85) * np.pi
    direction = np.array([-np.cos(angle), np.sin(angle)])
    point = np.array(centroid)
    while mask[int(round(point[0])), int(round(point[1]))]:
        point = point + direction
    return (float(point[0]), float(point[1])), (-direction[0], -direction[1])


def draw_meningioma(tissue: Tissue, rng: np.random.Generator) -> tuple[Tissue, Lesion]:
    """Dural-based extra-axial lens on the convexity or along the falx.

    Rule: a smooth disc of radius 20-28 px centred 0.15 radii outside the
    brain surface (convexity, 70 %) or on the midline and cut to one side
    (falx, 30 %), kept inside the skull, pushing the cortex away, so it
    reads as a half-disc on a broad dural base; a CSF cleft 3 px wide
    separates it from the brain and a dural tail runs along the surface in
    T1C+. Homogeneous in every sequence.
    T1: hypointense to grey matter, dark cleft. T1C+: bright. T2:
    moderately bright, very bright cleft.
    """
    radius = rng.uniform(20, 28)
    shape = tissue.mask.shape
    if rng.uniform() < 0.7:
        surface, inward = _surface_point(tissue, rng)
        along_surface = None
    else:
        rows = np.nonzero(tissue.mask[:, MIDLINE_COLUMN] > 0.5)[0]
        row = rng.uniform(rows.min() + 0.3 * np.ptp(rows), rows.max() - radius)
        side = rng.choice((-1, 1))
        surface, inward = (row, float(MIDLINE_COLUMN)), (0.0, float(side))
        along_surface = _side_mask(shape, side, -1.0)
    center = (
        surface[0] - 0.15 * radius * inward[0],
        surface[1] - 0.15 * radius * inward[1],
    )
    # The skull does not move: the mass fills the space the cortex leaves.
    skull = ndimage.binary_dilation(tissue.mask > 0.5, iterations=3)
    push_center = (
        surface[0] + 0.2 * radius * inward[0],
        surface[1] + 0.2 * radius * inward[1],
    )
    tissue = mass_effect(tissue, push_center, radius, rng.uniform(0.45, 0.6))

    brain = tissue.mask > 0.5
    mass = irregular_blob(shape, center, radius, rng, 0.06, edge=1.2) * skull
    if along_surface is not None:
        mass *= along_surface
    cleft = np.clip(
        ndimage.maximum_filter(mass, size=7) - mass, 0, 1
    ) * ndimage.binary_dilation(brain, iterations=1)
    dura = _dural_tail(tissue, center, radius, rng) * (1 - mass)
    layers = [
        Layer(cleft, {"T1": (0.05, 1.0), "T1C+": (0.05, 1.0), "T2": (1.0, 1.0)}),
        Layer(
            mass,
            {"T1": (0.22, 1.0), "T1C+": (0.97, 1.0), "T2": (0.7, 1.0)},
        ),
        Layer(dura, {"T1": (0.0, 0.0), "T1C+": (0.9, 1.0), "T2": (0.0, 0.0)}),
    ]
    return tissue, Lesion(layers, mass)


def _dural_tail(
    tissue: Tissue,
    center: tuple[float, float],
    radius: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Thin enhancing dura near the lesion, fading with distance (T1C+ only)."""
    brain = tissue.mask > 0.5
    shell = ndimage.binary_dilation(brain, iterations=2) & ~ndimage.binary_erosion(
        brain, iterations=1
    )
    falx = np.zeros_like(brain)
    falx[:, MIDLINE_COLUMN - 1 : MIDLINE_COLUMN + 1] = True
    rows, cols = _grid(brain.shape)
    distance = np.hypot(rows - center[0], cols - center[1])
    reach = radius * rng.uniform(1.5, 2.0)
    fade = np.clip((reach - distance) / (reach - radius), 0, 1)
    return ((shell | (falx & brain)) * fade).astype(np.float32)


def draw_neurocytoma(tissue: Tissue, rng: np.random.Generator) -> tuple[Tissue, Lesion]:
    """Bubbly intraventricular mass that fills and expands a lateral ventricle.

    Rule: centre on ventricular CSF of one side, pulled towards the
    midline (paramedian); radius 16-22 px; 5-9 round cysts 2.5-4.5 px in
    radius inside ("soap bubbles") that leave most of the mass solid; the
    ventricle is pushed outwards.
    T1: hypointense with darker cysts. T1C+: heterogeneous bright solid
    part with dark cysts. T2: heterogeneous, moderately bright with very
    bright cysts.
    """
    radius = rng.uniform(16, 22)
    depth = tissue.edge_distance()
    cols = np.arange(depth.shape[1])[None, :] - MIDLINE_COLUMN
    ventricle = (tissue.csf > 0.5) & (depth > 18) & (np.abs(cols) < 28)
    side = rng.choice((-1, 1))
    one_side = ventricle & (side * cols >= 0)
    row, col = _pick_pixel(one_side if one_side.any() else ventricle, rng)
    center = (row, MIDLINE_COLUMN + (col - MIDLINE_COLUMN) * rng.uniform(0.4, 0.8))
    tissue = mass_effect(tissue, center, radius, rng.uniform(0.3, 0.45))

    shape = tissue.mask.shape
    mass = irregular_blob(shape, center, radius, rng, 0.12, edge=1.5)
    mass *= tissue.mask
    cysts = np.zeros(shape, np.float32)
    for _ in range(rng.integers(5, 10)):
        offset = rng.uniform(0, 0.75 * radius) * np.exp(1j * rng.uniform(0, 2 * np.pi))
        bubble_center = (center[0] + offset.imag, center[1] + offset.real)
        bubble = irregular_blob(shape, bubble_center, rng.uniform(2.5, 4.5), rng, 0.05)
        cysts = np.maximum(cysts, bubble)
    cysts *= mass
    texture = smooth_noise(shape, rng, 1.5)
    layers = [
        Layer(
            mass,
            {
                "T1": (0.32 + 0.08 * texture, 1.0),
                "T1C+": (0.85 + 0.15 * texture, 1.0),
                "T2": (0.45 + 0.15 * texture, 1.0),
            },
        ),
        Layer(cysts, {"T1": (0.05, 1.0), "T1C+": (0.08, 1.0), "T2": (1.0, 1.0)}),
    ]
    return tissue, Lesion(layers, mass)


def draw_schwannoma(tissue: Tissue, rng: np.random.Generator) -> tuple[Tissue, Lesion]:
    """Small round mass at one cerebellopontine angle.

    Rule: centre 19-26 px lateral of the midline at the level of the
    internal auditory canal, between pons and cerebellum (posterior fossa
    slices only); radius 10-15 px; in 40 % a small eccentric cyst; a thin
    rim of cistern CSF outlines it.
    T1: iso to hypointense. T1C+: bright (cyst dark). T2: bright and
    slightly heterogeneous (cyst brighter).
    """
    radius = rng.uniform(10, 15)
    side = rng.choice((-1, 1))
    center = (
        CPA_ROW + rng.uniform(-4, 4),
        MIDLINE_COLUMN + side * rng.uniform(22, 29),
    )
    skull = ndimage.binary_dilation(tissue.mask > 0.5, iterations=2)
    tissue = mass_effect(tissue, center, radius, rng.uniform(0.2, 0.35))

    shape = tissue.mask.shape
    mass = irregular_blob(shape, center, radius, rng, 0.06, edge=1.2) * skull
    cyst = np.zeros(shape, np.float32)
    if rng.uniform() < 0.4:
        angle = rng.uniform(0, 2 * np.pi)
        cyst_center = (
            center[0] + 0.45 * radius * np.sin(angle),
            center[1] + 0.45 * radius * np.cos(angle),
        )
        cyst = irregular_blob(shape, cyst_center, 0.4 * radius, rng, 0.1) * mass
    cistern = np.clip(ndimage.maximum_filter(mass, size=5) - mass, 0, 1)
    texture = smooth_noise(shape, rng, 1.5)
    layers = [
        Layer(cistern, {"T1": (0.1, 0.9), "T1C+": (0.1, 0.9), "T2": (0.97, 0.9)}),
        Layer(
            mass,
            {
                "T1": (0.38, 1.0),
                "T1C+": (1.0, 1.0),
                "T2": (0.7 + 0.15 * texture, 1.0),
            },
        ),
        Layer(cyst, {"T1": (0.2, 1.0), "T1C+": (0.2, 1.0), "T2": (0.97, 1.0)}),
    ]
    return tissue, Lesion(layers, mass)


def draw_cyst_or_abscess(
    tissue: Tissue, rng: np.random.Generator
) -> tuple[Tissue, Lesion]:
    """Round lesion with a fluid centre and a thin smooth rim.

    Rule: centre anywhere in brain parenchyma away from the surface; radius
    14-21 px; circular; uniform rim 3-4 px; homogeneous fluid centre; mild
    oedema out to 1.35 radii.
    T1: very dark centre, thin iso rim. T1C+: thin bright smooth rim. T2:
    very bright centre, dark rim, mild oedema.
    """
    radius = rng.uniform(14, 21)
    depth = tissue.edge_distance()
    parenchyma = tissue.gm + tissue.wm > 0.7
    center = _pick_pixel(_deepest(parenchyma, depth, radius + 4), rng)
    tissue = mass_effect(tissue, center, radius, rng.uniform(0.2, 0.35))

    shape = tissue.mask.shape
    outline = rng.uniform(0.0, 0.02)
    # Wall and fluid share one outline seed, so the rim keeps an even width.
    lesion_rng_state = rng.integers(2**32)
    mass = irregular_blob(
        shape, center, radius, np.random.default_rng(lesion_rng_state), outline
    )
    rim_width = rng.uniform(3, 4)
    fluid = irregular_blob(
        shape,
        center,
        radius - rim_width,
        np.random.default_rng(lesion_rng_state),
        outline,
    )
    oedema = irregular_blob(shape, center, radius * 1.35, rng, 0.1, edge=5)
    oedema *= tissue.mask
    layers = [
        Layer(oedema, {"T1": (0.4, 0.25), "T1C+": (0.4, 0.25), "T2": (0.8, 0.5)}),
        Layer(mass, {"T1": (0.5, 1.0), "T1C+": (1.0, 1.0), "T2": (0.2, 1.0)}),
        Layer(fluid, {"T1": (0.04, 1.0), "T1C+": (0.04, 1.0), "T2": (1.0, 1.0)}),
    ]
    return tissue, Lesion(layers, mass)


LESION_RULES = {
    "glioma": draw_glioma,
    "meningioma": draw_meningioma,
    "neurocitoma": draw_neurocytoma,
    "outros": draw_cyst_or_abscess,
    "schwannoma": draw_schwannoma,
}


# ----------------------------------------------------------------------------
# Sequence rendering
# ----------------------------------------------------------------------------

# Tissue intensities per sequence, before scaling: T1 white > grey > CSF,
# T2 the reverse ("fluid bright").
TISSUE_CONTRAST = {
    "T1": {"wm": 0.7, "gm": 0.46, "csf": 0.1, "scalp": 0.5},
    "T1C+": {"wm": 0.7, "gm": 0.46, "csf": 0.1, "scalp": 0.5},
    "T2": {"wm": 0.32, "gm": 0.5, "csf": 0.95, "scalp": 0.35},
}


def _scalp_ring(tissue: Tissue, rng: np.random.Generator) -> np.ndarray:
    """Faint scalp ring outside a dark skull gap, 3-5 px wide."""
    outside = ndimage.distance_transform_edt(tissue.mask < 0.5)
    gap = rng.uniform(4, 7)
    width = rng.uniform(3, 5)
    ring = np.clip(1 - np.abs(outside - gap - width / 2) / (width / 2), 0, 1)
    return ring * (0.6 + 0.4 * smooth_noise(ring.shape, rng, 4))


def render_anatomy(
    tissue: Tissue, sequence: str, rng: np.random.Generator
) -> np.ndarray:
    """Mix tissue maps with the sequence's contrast into a clean image."""
    contrast = TISSUE_CONTRAST[sequence]
    image = (
        contrast["wm"] * tissue.wm
        + contrast["gm"] * tissue.gm
        + contrast["csf"] * tissue.csf
    )
    image += contrast["scalp"] * _scalp_ring(tissue, rng)
    if sequence == "T1C+":
        image = np.maximum(image, normal_enhancement(tissue))
    return image.astype(np.float32)


def normal_enhancement(tissue: Tissue) -> np.ndarray:
    """Enhancement of normal structures after gadolinium (T1C+ only).

    Dura around the brain and along the falx, the superior sagittal sinus
    at the posterior midline and the choroid plexus in the ventricular
    atria turn bright, so a T1C+ slice differs from T1 everywhere, not only
    at the lesion.
    """
    brain = tissue.mask > 0.5
    dura = ndimage.binary_dilation(brain, iterations=2) & ~brain
    falx = np.zeros_like(brain)
    falx[:, MIDLINE_COLUMN - 1 : MIDLINE_COLUMN + 1] = (
        tissue.csf[:, MIDLINE_COLUMN - 1 : MIDLINE_COLUMN + 1] > 0.3
    )
    enhancement = 0.6 * dura + 0.7 * falx

    rows, cols = _grid(brain.shape)
    brain_rows = np.nonzero(brain[:, MIDLINE_COLUMN])[0]
    if brain_rows.size:
        sinus_row = brain_rows.max() + 2
        sinus = np.hypot(rows - sinus_row, cols - MIDLINE_COLUMN) < 4
        enhancement = np.maximum(enhancement, 0.95 * sinus)

    depth = ndimage.distance_transform_edt(brain)
    ventricle = (tissue.csf > 0.5) & (depth > 15)
    if ventricle.any():
        back = rows > np.nonzero(ventricle)[0].mean()
        choroid = ndimage.binary_erosion(ventricle & back, iterations=1)
        enhancement = np.maximum(enhancement, 0.75 * choroid)
    return ndimage.gaussian_filter(enhancement.astype(np.float32), 0.7)


def paint_lesion(image: np.ndarray, lesion: Lesion, sequence: str) -> np.ndarray:
    """Blend the lesion layers over the anatomy in the order they are listed."""
    for layer in lesion.layers:
        value, opacity = layer.values[sequence]
        alpha = layer.alpha * opacity
        image = image * (1 - alpha) + value * alpha
    return image


# ----------------------------------------------------------------------------
# Acquisition: geometry, bias field, contrast, noise
# ----------------------------------------------------------------------------


def _output_shape(rng: np.random.Generator) -> tuple[int, int]:
    """Square side 112-144 px; about 1 in 7 is cropped to a non-square."""
    side = int(rng.integers(OUTPUT_SIDES[0], OUTPUT_SIDES[1] + 1))
    if rng.uniform() > 0.15:
        return side, side
    short = int(side * rng.uniform(0.82, 0.94))
    return (side, short) if rng.uniform() < 0.5 else (short, side)


def resample(
    image: np.ndarray,
    lesion_mask: np.ndarray,
    output_shape: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate, zoom and centre the slice on the output grid in one resampling.

    The lesion mask follows the same affine map, so its bounding box is
    exact in the saved image's pixel coordinates.
    """
    brain_rows, brain_cols = np.nonzero(image > 0.05)
    centre = np.array([brain_rows.mean(), brain_cols.mean()]) + rng.uniform(-5, 5, 2)
    field_of_view = rng.uniform(200, 230)  # mm across the longer side.
    scale = field_of_view / max(output_shape)
    angle = np.deg2rad(rng.uniform(-10, 10))
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    )
    matrix = scale * rotation
    half = (np.array(output_shape) - 1) / 2
    offset = centre - matrix @ half
    out_image = ndimage.affine_transform(
        image, matrix, offset, output_shape=output_shape, order=1
    )
    out_mask = ndimage.affine_transform(
        lesion_mask, matrix, offset, output_shape=output_shape, order=1
    )
    return out_image, out_mask


def acquire(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply a bias field, intensity scaling and gamma, and Rician noise.

    Returns:
        8-bit greyscale image of the same shape.
    """
    rows, cols = _grid(image.shape)
    tilt = rng.uniform(-1, 1, 2) / max(image.shape)
    bias = 1 + 0.25 * (
        (rows - image.shape[0] / 2) * tilt[0] + (cols - image.shape[1] / 2) * tilt[1]
    )
    image = image * bias * rng.uniform(0.85, 1.05)
    image = np.clip(image, 0, None) ** rng.uniform(0.8, 1.25)

    # Rician noise: magnitude of a complex signal with Gaussian noise on
    # both channels, so the background is dim noise rather than pure black.
    sigma = rng.uniform(0.0015, 0.005)
    real = image + sigma * rng.standard_normal(image.shape)
    imag = sigma * rng.standard_normal(image.shape)
    image = np.hypot(real, imag)

    # Display windowing with a black level just above the background noise,
    # as exported slices often have; it also keeps the PNG files small.
    black = rng.uniform(2.5, 3.5) * sigma
    image = (image - black) / (1 - black)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive pixel box `(x0, y0, x1, y1)` of mask > 0.5, or None."""
    rows, cols = np.nonzero(mask > 0.5)
    if rows.size == 0:
        return None
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


# ----------------------------------------------------------------------------
# One image, then the whole data set
# ----------------------------------------------------------------------------


def image_seed(seed: int, class_name: str, index: int) -> int:
    """Stable per-image seed from the global seed, class and image index."""
    key = f"{seed}|{class_name}|{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def make_image(
    spec: ClassSpec, template: dict[str, np.ndarray], seed: int
) -> tuple[Image.Image, tuple[int, int, int, int] | None, int]:
    """Render one image of class `spec`.

    Returns:
        The PIL image (mode "L", a few "RGB"), the lesion box or None for
        NORMAL, and the axial slice index used.
    """
    rng = np.random.default_rng(seed)
    low, high = SLICE_RANGES[spec.pathology]
    slice_index = int(rng.integers(low, high + 1))
    tissue = axial_slice(template, slice_index)

    lesion = Lesion()
    if spec.pathology in LESION_RULES:
        tissue, lesion = LESION_RULES[spec.pathology](tissue, rng)
    image = render_anatomy(tissue, spec.sequence, rng)
    image = paint_lesion(image, lesion, spec.sequence)
    image = ndimage.gaussian_filter(image, rng.uniform(0.3, 0.7))

    lesion_mask = lesion.mass if lesion.mass is not None else np.zeros_like(image)
    image, lesion_mask = resample(image, lesion_mask, _output_shape(rng), rng)
    pixels = acquire(image, rng)
    picture = Image.fromarray(pixels, mode="L")
    if rng.uniform() < 0.03:
        picture = picture.convert("RGB")
    box = bounding_box(lesion_mask) if lesion.mass is not None else None
    return picture, box, slice_index


def write_class(
    spec: ClassSpec,
    template: dict[str, np.ndarray],
    out_dir: Path,
    per_class: int,
    seed: int,
) -> list[dict[str, object]]:
    """Write `per_class` images of one class and return their CSV rows."""
    folder = out_dir / spec.name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rows = []
    for index in range(1, per_class + 1):
        this_seed = image_seed(seed, spec.name, index)
        picture, box, slice_index = make_image(spec, template, this_seed)
        file_name = f"demo_{index:04d}.jpg"
        picture.save(folder / file_name, quality=JPEG_QUALITY, optimize=True)
        x0, y0, x1, y1 = box if box is not None else ("", "", "", "")
        rows.append(
            {
                "path": f"{spec.name}/{file_name}",
                "class_name": spec.name,
                "sequence": spec.sequence,
                "pathology": spec.pathology,
                "lesion_x0": x0,
                "lesion_y0": y0,
                "lesion_x1": x1,
                "lesion_y1": y1,
                "slice_index": slice_index,
                "seed": this_seed,
            }
        )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/demo"))
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error(f"--per-class must be a positive integer, got {args.per_class}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Regenerate the class folders and lesions.csv under --out."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    template = load_template()
    args.out.mkdir(parents=True, exist_ok=True)

    rows = []
    for spec in class_specs():
        rows.extend(write_class(spec, template, args.out, args.per_class, args.seed))
        logger.info("wrote %d images of %s", args.per_class, spec.name)

    with open(args.out / "lesions.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    elapsed = time.perf_counter() - start
    print(f"Wrote {len(rows)} images to {args.out} in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
