"""Which instances of one DICOM series are segmented, in which order, and whether they form a volume.

Pure functions over headers (pydicom Datasets read with ``stop_before_pixels=True``): no pixels,
no I/O. Positions, spacings and distances are millimetres in the patient coordinate system;
orientations are direction cosines. Refusals are ``AssemblyError`` (HTTP 422) with a stable
``reason``; their messages carry numbers (sizes, mm, counts), never identifiers or UIDs.

- ``exclusion_reason``: is this instance an image to segment at all?
- ``plan_series``: what a 2-D model needs: one grid, slices sorted along the normal; gaps and
  repeated positions are allowed (each slice is segmented on its own).
- ``require_volume``: what a 3-D model needs on top: at least two slices, one per position,
  uniform steps measured from the positions (SpacingBetweenSlices is ignored: often wrong), a
  stack along its normal (no gantry tilt / shear).
- ``require_same_grid``: co-registered channels (BraTS T1/T1ce/T2/FLAIR as four series) share
  one grid and one set of slice positions; nothing is resampled.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydicom.dataset import Dataset

from services.codecs.dicom import element_value, functional_group_item
from services.errors import UnprocessableImage

MEDSEG_MANUFACTURER = "medseg-serve"  # what our own outputs carry: the loop guard looks for it
ORIENTATION_TOLERANCE = 1e-3  # per direction cosine
PIXEL_SPACING_TOLERANCE = 1e-3  # relative
POSITION_TOLERANCE_MM = 0.01  # closer positions are the same position
MAX_SHEAR_PIXELS = 0.5  # in-plane drift of a stack's slice origins a volume may have

_NON_IMAGE_MODALITIES = frozenset(
    {"SR", "SEG", "PR", "KO", "REG", "FID", "DOC", "PLAN", "AU", "ECG", "EPS", "HD", "RESP", "RWV", "M3D"}
)
# SOP class roots (the UID itself or anything below it) that are not images to segment.
_NON_IMAGE_SOP_CLASS_ROOTS = (
    "1.2.840.10008.5.1.4.1.1.9",  # waveforms
    "1.2.840.10008.5.1.4.1.1.11",  # presentation states
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registrations, fiducials, segmentations, surfaces
    "1.2.840.10008.5.1.4.1.1.67",  # real world value mapping
    "1.2.840.10008.5.1.4.1.1.68",  # surface scans
    "1.2.840.10008.5.1.4.1.1.88",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.90",  # content assessment results
    "1.2.840.10008.5.1.4.1.1.104",  # encapsulated documents (PDF, CDA, STL...)
    "1.2.840.10008.5.1.4.1.1.200",  # protocols
    "1.2.840.10008.5.1.4.1.1.481",  # radiotherapy objects (RT image, dose, structure set, plan...)
    "1.2.840.10008.5.1.4.34",  # RT delivery instructions and records
)

Vector = tuple[float, float, float]
_T = TypeVar("_T")


class AssemblyError(UnprocessableImage):
    """A series that cannot be assembled as asked; ``reason`` is stable and machine-readable:
    no_images, mixed_size, mixed_spacing, mixed_orientation, mixed_frame_of_reference,
    missing_geometry, too_few_slices, duplicate_position, gap, sheared, grids_differ."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.detail))


@dataclass(frozen=True)
class Grid:
    """The in-plane sampling shared by every slice of a plan.

    ``pixel_spacing_mm`` is (row spacing, column spacing) in mm as in PixelSpacing;
    ``orientation`` the six ImageOrientationPatient direction cosines (row direction, then column
    direction) rounded to 6 decimals; both None for a series without geometry (e.g. secondary
    captures), and so is ``frame_of_reference_uid``. Compare grids with the module's tolerances,
    not ``==``.
    """

    rows: int
    cols: int
    pixel_spacing_mm: tuple[float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    frame_of_reference_uid: str | None

    @property
    def normal(self) -> Vector | None:
        """Unit slice normal, row direction × column direction; None without geometry."""
        return None if self.orientation is None else _normal(self.orientation)


@dataclass(frozen=True)
class Slice:
    """One 2-D image: ``frame`` (0-based; 0 for single-frame) of ``headers[instance]``.

    ``position_mm`` is the distance along the grid's normal (dot(origin, normal)); ``origin_mm`` the
    patient position of the first pixel's centre (x, y, z). Both None without geometry.
    """

    instance: int
    frame: int
    position_mm: float | None
    origin_mm: Vector | None


@dataclass(frozen=True)
class SeriesPlan:
    """The slices to segment, sorted by position (ascending; InstanceNumber then frame breaks ties;
    InstanceNumber order without geometry), and the instances left out with their reason."""

    grid: Grid
    slices: tuple[Slice, ...]
    excluded: tuple[tuple[int, str], ...]

    @property
    def instances(self) -> tuple[int, ...]:
        """Distinct instance indices (into the headers) in slice order."""
        return tuple(dict.fromkeys(s.instance for s in self.slices))

    @property
    def has_geometry(self) -> bool:
        """True when slices carry patient positions (ImagePositionPatient / PlanePosition)."""
        return self.grid.orientation is not None


def exclusion_reason(ds: Dataset) -> str | None:
    """None for an image to segment; else "derived_by_medseg" (our own output: loop guard),
    "not_an_image" (SR, SEG, KO, PR, RT*, ... by Modality or SOP class, or no Rows/Columns) or
    "localizer" (ImageType contains LOCALIZER)."""
    equipment = element_value(ds, "ContributingEquipmentSequence") or ()
    if _is_medseg(element_value(ds, "Manufacturer")) or any(_is_medseg(element_value(item, "Manufacturer")) for item in equipment):
        return "derived_by_medseg"
    modality = _text(element_value(ds, "Modality")).upper()
    sop_class = _text(element_value(ds, "SOPClassUID"))
    if (
        modality in _NON_IMAGE_MODALITIES
        or modality.startswith("RT")
        or any(sop_class == root or sop_class.startswith(root + ".") for root in _NON_IMAGE_SOP_CLASS_ROOTS)
        or _positive_int(element_value(ds, "Rows")) is None
        or _positive_int(element_value(ds, "Columns")) is None
    ):
        return "not_an_image"
    image_type = element_value(ds, "ImageType")
    values = [image_type] if isinstance(image_type, str) else list(image_type or ())
    if any(_text(value).upper() == "LOCALIZER" for value in values):
        return "localizer"
    return None


def plan_series(headers: Sequence[Dataset]) -> SeriesPlan:
    """The slices of one series a 2-D model segments, in order, on one grid.

    Excluded instances (see ``exclusion_reason``) are listed, not planned. The rest must share
    Rows/Columns ("mixed_size") and PixelSpacing ("mixed_spacing"); when they carry geometry, also
    ImageOrientationPatient ("mixed_orientation") and FrameOfReferenceUID
    ("mixed_frame_of_reference"), and are sorted by position along the normal. A series where no
    slice has geometry (secondary captures) is planned in InstanceNumber order; one mixing slices
    with and without geometry is refused ("missing_geometry"). Nothing left: "no_images".
    Enhanced multi-frame instances give one slice per frame, from their functional groups.
    """
    excluded: list[tuple[int, str]] = []
    frames: list[_Frame] = []
    for index, ds in enumerate(headers):
        reason = exclusion_reason(ds)
        if reason is None:
            frames.extend(_frames(index, ds))
        else:
            excluded.append((index, reason))
    if not frames:
        counts = _count(reason for _, reason in excluded)
        detail = ", ".join(f"{n} {reason}" for reason, n in counts.items()) or "none received"
        raise AssemblyError(
            "no_images", f"no image to segment in the series ({len(excluded)} instances excluded: {detail})"
        )

    _require_one("mixed_size", "image sizes", frames, lambda f: (f.rows, f.cols), _same, lambda v: f"{v[0]}x{v[1]}")
    _require_one("mixed_spacing", "pixel spacings", frames, lambda f: f.spacing, _same_spacing, _format_spacing)
    positioned = sum(f.origin is not None and f.orientation is not None for f in frames)
    if 0 < positioned < len(frames):
        raise AssemblyError(
            "missing_geometry",
            f"{len(frames) - positioned} of {len(frames)} slices have no patient position or orientation "
            "while the others do",
        )
    first = frames[0]
    if not positioned:
        grid = Grid(first.rows, first.cols, first.spacing, None, None)
        order = sorted(frames, key=lambda f: (*_number_key(f.instance_number), f.frame, f.instance))
        slices = tuple(Slice(f.instance, f.frame, None, None) for f in order)
        return SeriesPlan(grid, slices, tuple(excluded))

    _require_one(
        "mixed_orientation", "orientations", frames, lambda f: f.orientation, _same_orientation, _format_cosines
    )
    _require_one("mixed_frame_of_reference", "frames of reference", frames, lambda f: f.frame_of_reference, _same)
    assert first.orientation is not None
    grid = Grid(first.rows, first.cols, first.spacing, first.orientation, first.frame_of_reference)
    normal = _normal(first.orientation)
    assert normal is not None  # _frames drops degenerate orientations
    placed = [(f, _dot(f.origin, normal)) for f in frames if f.origin is not None]
    # Positions within POSITION_TOLERANCE_MM tie; InstanceNumber, frame, then arrival break ties.
    placed.sort(key=lambda p: (round(p[1] / POSITION_TOLERANCE_MM), *_number_key(p[0].instance_number),
                               p[0].frame, p[0].instance))
    slices = tuple(Slice(f.instance, f.frame, position, f.origin) for f, position in placed)
    return SeriesPlan(grid, slices, tuple(excluded))


def require_volume(plan: SeriesPlan, *, tolerance: float = 0.01) -> float:
    """The slice spacing in mm when ``plan`` is a regular volume for a 3-D model; else AssemblyError.

    Needs geometry ("missing_geometry"), two slices or more ("too_few_slices"), one slice per
    position ("duplicate_position"), every step within ``tolerance`` (relative, floored at
    POSITION_TOLERANCE_MM) of the median step ("gap") and slice origins on one line along the
    normal, within MAX_SHEAR_PIXELS ("sheared": gantry tilt). The spacing is measured from the
    positions (first to last over the number of steps); SpacingBetweenSlices is never read.
    """
    grid = plan.grid
    if grid.orientation is None or grid.pixel_spacing_mm is None:
        missing = "patient positions" if grid.orientation is None else "a pixel spacing"
        raise AssemblyError("missing_geometry", f"the series has no {missing}; a volume model needs them")
    if len(plan.slices) < 2:
        raise AssemblyError("too_few_slices", f"a volume needs at least 2 slices, the series has {len(plan.slices)}")
    positions = [s.position_mm for s in plan.slices]
    assert all(p is not None for p in positions)
    steps = [b - a for a, b in zip(positions, positions[1:])]  # type: ignore[operator]
    duplicates = [i for i, step in enumerate(steps) if step < POSITION_TOLERANCE_MM]
    if duplicates:
        at = positions[duplicates[0]]
        raise AssemblyError(
            "duplicate_position",
            f"{len(duplicates)} slices repeat a position (first at {at:.2f} mm: a multi-phase or repeated "
            "acquisition?); a volume needs one slice per position",
        )
    median = statistics.median(steps)
    allowed = max(tolerance * median, POSITION_TOLERANCE_MM)
    for i, step in enumerate(steps):
        if abs(step - median) > allowed:
            lost = round(step / median) - 1
            what = f"about {lost} missing slice{'s' * (lost != 1)}" if lost >= 1 else "an irregular step"
            raise AssemblyError(
                "gap",
                f"the step between the slices at {positions[i]:.2f} mm and {positions[i + 1]:.2f} mm is "
                f"{step:.2f} mm where the series' spacing is {median:.2f} mm ({what})",
            )
    _require_stacked(plan)
    return (positions[-1] - positions[0]) / len(steps)  # type: ignore[operator]


def require_same_grid(plans: Mapping[str, SeriesPlan]) -> None:
    """Co-registered channels (name → plan): the first channel's grid (size, spacing, orientation,
    frame of reference) and slice origins must be every channel's, else "grids_differ" naming each
    differing channel and what differs. Channels without geometry: "missing_geometry"."""
    if not plans:
        return
    missing = [name for name, plan in plans.items() if not plan.has_geometry]
    if missing:
        raise AssemblyError("missing_geometry", f"channel(s) {', '.join(map(repr, missing))} have no patient positions")
    (reference_name, reference), *others = plans.items()
    complaints = [
        f"channel {name!r} differs from {reference_name!r} in {'; '.join(differences)}"
        for name, plan in others
        if (differences := _grid_differences(plan, reference))
    ]
    if complaints:
        raise AssemblyError("grids_differ", "; ".join(complaints) + " (channels are not resampled)")


# --- geometry of one instance ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Frame:
    instance: int
    frame: int
    instance_number: int | None
    rows: int
    cols: int
    spacing: tuple[float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    origin: Vector | None
    frame_of_reference: str | None


def _frames(index: int, ds: Dataset) -> list[_Frame]:
    """One _Frame per frame. Enhanced multi-frame (PerFrameFunctionalGroupsSequence): positions from
    each frame's PlanePositionSequence, orientation and spacing per frame or shared (top level as a
    last resort). Any other instance: every frame takes the top-level geometry."""
    rows, cols = _positive_int(element_value(ds, "Rows")) or 0, _positive_int(element_value(ds, "Columns")) or 0
    count = _positive_int(element_value(ds, "NumberOfFrames")) or 1
    enhanced = element_value(ds, "PerFrameFunctionalGroupsSequence") is not None
    common = dict(
        instance=index,
        instance_number=_int(element_value(ds, "InstanceNumber")),
        rows=rows,
        cols=cols,
        frame_of_reference=_text(element_value(ds, "FrameOfReferenceUID")) or None,
    )
    frames = []
    for frame in range(count):
        if enhanced:
            position = element_value(functional_group_item(ds, "PlanePositionSequence", frame), "ImagePositionPatient")
            orientation = element_value(functional_group_item(ds, "PlaneOrientationSequence", frame), "ImageOrientationPatient")
            spacing = element_value(functional_group_item(ds, "PixelMeasuresSequence", frame), "PixelSpacing")
            orientation = orientation if orientation is not None else element_value(ds, "ImageOrientationPatient")
            spacing = spacing if spacing is not None else element_value(ds, "PixelSpacing")
        else:
            position, orientation = element_value(ds, "ImagePositionPatient"), element_value(ds, "ImageOrientationPatient")
            spacing = element_value(ds, "PixelSpacing")
        frames.append(_Frame(frame=frame, spacing=_spacing(spacing), orientation=_orientation(orientation),
                             origin=_vector(position), **common))  # type: ignore[arg-type]
    return frames


def _require_stacked(plan: SeriesPlan) -> None:
    """Refuse ("sheared") slice origins that drift in plane by more than MAX_SHEAR_PIXELS."""
    grid = plan.grid
    assert grid.orientation is not None and grid.pixel_spacing_mm is not None
    row_dir, col_dir = _unit(grid.orientation[:3]), _unit(grid.orientation[3:])
    first = plan.slices[0].origin_mm
    assert first is not None and row_dir is not None and col_dir is not None
    worst, where = 0.0, 0.0
    for s in plan.slices[1:]:
        assert s.origin_mm is not None and s.position_mm is not None
        offset = tuple(a - b for a, b in zip(s.origin_mm, first))
        # col_dir steps between rows (PixelSpacing[0]); row_dir between columns (PixelSpacing[1]).
        pixels = max(abs(_dot(offset, col_dir)) / grid.pixel_spacing_mm[0],
                     abs(_dot(offset, row_dir)) / grid.pixel_spacing_mm[1])
        if pixels > worst:
            worst, where = pixels, s.position_mm
    if worst > MAX_SHEAR_PIXELS:
        raise AssemblyError(
            "sheared",
            f"the slices are not stacked along their normal (gantry tilt?): the slice at {where:.2f} mm is "
            f"{worst:.1f} pixels off in plane; a volume model needs a resampled series",
        )


def _grid_differences(plan: SeriesPlan, reference: SeriesPlan) -> list[str]:
    """What differs between two plans' grids and slice origins, in words and numbers."""
    a, b = plan.grid, reference.grid
    out = []
    if (a.rows, a.cols) != (b.rows, b.cols):
        out.append(f"size ({a.rows}x{a.cols} vs {b.rows}x{b.cols})")
    if not _same_spacing(a.pixel_spacing_mm, b.pixel_spacing_mm):
        out.append(f"pixel spacing ({_format_spacing(a.pixel_spacing_mm)} vs {_format_spacing(b.pixel_spacing_mm)})")
    if not _same_orientation(a.orientation, b.orientation):
        out.append(f"orientation ({_format_cosines(a.orientation)} vs {_format_cosines(b.orientation)})")
    if a.frame_of_reference_uid != b.frame_of_reference_uid:
        out.append("frame of reference")
    if len(plan.slices) != len(reference.slices):
        out.append(f"slice count ({len(plan.slices)} vs {len(reference.slices)})")
    else:
        apart = max(
            (math.dist(s.origin_mm, r.origin_mm) for s, r in zip(plan.slices, reference.slices)
             if s.origin_mm is not None and r.origin_mm is not None),
            default=0.0,
        )
        if apart > POSITION_TOLERANCE_MM:
            out.append(f"slice positions (up to {apart:.2f} mm apart)")
    return out


def _require_one(
    reason: str, what: str, frames: list[_Frame], value: Callable[[_Frame], _T],
    same: Callable[[_T, _T], bool], show: Callable[[_T], str] | None = None,
) -> None:
    """Refuse with ``reason`` when ``value`` takes more than one value (up to ``same``) over the frames.
    Values are shown by ``show``, or numbered (#1, #2...) when they must not be shown (UIDs)."""
    groups: list[list[Any]] = []  # [representative, count]
    for frame in frames:
        v = value(frame)
        for group in groups:
            if same(group[0], v):
                group[1] += 1
                break
        else:
            groups.append([v, 1])
    if len(groups) > 1:
        listed = ", ".join(
            f"{show(v) if show else f'#{k + 1}'} ({n} slice{'s' * (n != 1)})" for k, (v, n) in enumerate(groups[:4])
        )
        more = f" and {len(groups) - 4} more" if len(groups) > 4 else ""
        raise AssemblyError(reason, f"the series mixes {len(groups)} {what}: {listed}{more}")


# --- comparisons and formatting ------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    return bool(a == b)


def _same_spacing(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    if a is None or b is None:
        return a is b
    return all(math.isclose(x, y, rel_tol=PIXEL_SPACING_TOLERANCE) for x, y in zip(a, b))


def _same_orientation(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    if a is None or b is None:
        return a is b
    return all(abs(x - y) <= ORIENTATION_TOLERANCE for x, y in zip(a, b))


def _format_spacing(v: tuple[float, float] | None) -> str:
    return "none" if v is None else f"{v[0]:g}x{v[1]:g} mm"


def _format_cosines(v: Sequence[float] | None) -> str:
    return "none" if v is None else "[" + ", ".join(f"{c:.3f}" for c in v) + "]"


def _normal(orientation: Sequence[float]) -> Vector | None:
    r, c = orientation[:3], orientation[3:]
    return _unit((r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]))


def _unit(v: Sequence[float]) -> Vector | None:
    norm = math.sqrt(sum(x * x for x in v))
    return None if norm < 1e-6 else (v[0] / norm, v[1] / norm, v[2] / norm)


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _number_key(number: int | None) -> tuple[int, int]:
    """Sort key: instances without InstanceNumber after those with one."""
    return (0, number) if number is not None else (1, 0)


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


# --- tolerant element access -----------------------------------------------------------------------


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _is_medseg(value: Any) -> bool:
    return _text(value).lower() == MEDSEG_MANUFACTURER


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except Exception:  # noqa: BLE001
        return None


def _positive_int(value: Any) -> int | None:
    number = _int(value) if value not in (None, "") else None
    return number if number is not None and number > 0 else None


def _numbers(value: Any, length: int) -> list[float] | None:
    """``length`` finite floats from a DS/FD multi-value, else None."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        numbers = [float(v) for v in value]
    except Exception:  # noqa: BLE001
        return None
    return numbers if len(numbers) == length and all(math.isfinite(n) for n in numbers) else None


def _vector(value: Any) -> Vector | None:
    numbers = _numbers(value, 3)
    return None if numbers is None else (numbers[0], numbers[1], numbers[2])


def _spacing(value: Any) -> tuple[float, float] | None:
    numbers = _numbers(value, 2)
    return (numbers[0], numbers[1]) if numbers is not None and min(numbers) > 0 else None


def _orientation(value: Any) -> tuple[float, float, float, float, float, float] | None:
    """Six direction cosines rounded to 6 decimals; None when absent, malformed or degenerate."""
    numbers = _numbers(value, 6)
    if numbers is None or _unit(numbers[:3]) is None or _unit(numbers[3:]) is None or _normal(numbers) is None:
        return None
    return tuple(round(n, 6) for n in numbers)  # type: ignore[return-value]
