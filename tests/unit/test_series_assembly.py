"""Series assembly over header-only DICOM datasets: exclusions, ordering, refusals with reasons."""

from __future__ import annotations

import math
import pickle
import random

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from services.errors import UnprocessableImage
from services.jobs.series_assembly import (
    AssemblyError,
    SeriesPlan,
    exclusion_reason,
    plan_series,
    require_same_grid,
    require_volume,
)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.8.498.1"
PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-0042-XYZ"
NON_IMAGES = [
    ("SR", "1.2.840.10008.5.1.4.1.1.88.22"),
    ("SEG", "1.2.840.10008.5.1.4.1.1.66.4"),
    ("KO", "1.2.840.10008.5.1.4.1.1.88.59"),
    ("PR", "1.2.840.10008.5.1.4.1.1.11.1"),
    ("RTSTRUCT", "1.2.840.10008.5.1.4.1.1.481.3"),
    ("RTDOSE", "1.2.840.10008.5.1.4.1.1.481.2"),
]


def _ds(values: tuple[float, ...] | list[float]) -> list[str]:
    """Numbers as DS strings of at most 16 characters."""
    return [f"{v:.6f}".rstrip("0").rstrip(".") or "0" for v in values]


def ct_slice(
    position: tuple[float, float, float] | None = (0.0, 0.0, 0.0),
    *,
    instance_number: int = 1,
    orientation: tuple[float, ...] | None = AXIAL,
    rows: int = 64,
    cols: int = 64,
    spacing: tuple[float, float] | None = (0.7, 0.7),
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    modality: str = "CT",
    sop_class: str = CT_IMAGE,
    frame_of_reference: str | None = FRAME_OF_REFERENCE,
    manufacturer: str = "ACME",
) -> Dataset:
    """A single-frame image header (no pixels), with patient identifiers that must never leak."""
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.StudyDate = PATIENT_NAME, PATIENT_ID, "20240102"
    ds.SOPClassUID, ds.Modality, ds.Manufacturer = sop_class, modality, manufacturer
    ds.ImageType = list(image_type)
    ds.InstanceNumber = instance_number
    ds.Rows, ds.Columns = rows, cols
    ds.SpacingBetweenSlices = "3.0"  # deliberately wrong: the positions say otherwise
    if position is not None:
        ds.ImagePositionPatient = _ds(position)
    if orientation is not None:
        ds.ImageOrientationPatient = _ds(orientation)
    if spacing is not None:
        ds.PixelSpacing = _ds(spacing)
    if frame_of_reference is not None:
        ds.FrameOfReferenceUID = frame_of_reference
    return ds


def axial_series(zs: list[float], **kwargs: object) -> list[Dataset]:
    """One axial slice per z (mm), InstanceNumber 1.. in list order."""
    return [ct_slice((-10.0, -20.0, z), instance_number=i + 1, **kwargs)  # type: ignore[arg-type]
            for i, z in enumerate(zs)]


def enhanced_ct(
    positions: list[tuple[float, float, float]],
    *,
    orientation: tuple[float, ...] = AXIAL,
    per_frame_orientations: list[tuple[float, ...]] | None = None,
    spacing: tuple[float, float] = (0.8, 0.8),
) -> Dataset:
    """An Enhanced CT header: positions per frame, orientation and pixel measures shared (or per frame)."""
    ds = ct_slice(None, orientation=None, spacing=None, sop_class=ENHANCED_CT)
    del ds.SpacingBetweenSlices
    ds.NumberOfFrames = len(positions)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = _ds(spacing)
    measures.SpacingBetweenSlices = "9.0"  # wrong on purpose
    shared.PixelMeasuresSequence = Sequence([measures])
    if per_frame_orientations is None:
        plane = Dataset()
        plane.ImageOrientationPatient = _ds(orientation)
        shared.PlaneOrientationSequence = Sequence([plane])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    items = []
    for k, position in enumerate(positions):
        item, plane_position = Dataset(), Dataset()
        plane_position.ImagePositionPatient = _ds(position)
        item.PlanePositionSequence = Sequence([plane_position])
        if per_frame_orientations is not None:
            plane = Dataset()
            plane.ImageOrientationPatient = _ds(per_frame_orientations[k])
            item.PlaneOrientationSequence = Sequence([plane])
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    return ds


def refused(reason: str, call: object, *args: object, **kwargs: object) -> AssemblyError:
    """Call and expect an AssemblyError with ``reason`` whose message leaks no identifier."""
    with pytest.raises(AssemblyError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    error = caught.value
    assert error.reason == reason, error.message
    assert error.message.startswith(f"{reason}: ")
    for secret in (PATIENT_NAME, PATIENT_ID, "Doe", "20240102", FRAME_OF_REFERENCE):
        assert secret not in error.message
    return error


def shuffled(items: list[Dataset], seed: int = 7) -> list[Dataset]:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


# --- ordering ---------------------------------------------------------------------------------------


def test_shuffled_axial_series_is_sorted_by_position_and_spacing_comes_from_positions() -> None:
    zs = [-40.0, -35.0, -30.0, -25.0, -20.0, -15.0]
    headers = shuffled(axial_series(zs))
    plan = plan_series(headers)
    assert [headers[i].ImagePositionPatient[2] for i in plan.instances] == zs
    assert [s.position_mm for s in plan.slices] == pytest.approx(zs)
    assert all(s.frame == 0 for s in plan.slices) and plan.excluded == ()
    assert (plan.grid.rows, plan.grid.cols, plan.grid.pixel_spacing_mm) == (64, 64, (0.7, 0.7))
    assert plan.grid.orientation == AXIAL and plan.grid.normal == pytest.approx((0, 0, 1))
    assert require_volume(plan) == pytest.approx(5.0)  # not the header's SpacingBetweenSlices (3.0)


def test_positions_decreasing_with_instance_number_are_sorted_ascending() -> None:
    headers = axial_series([100.0, 97.5, 95.0, 92.5])  # InstanceNumber 1..4 going down the patient
    plan = plan_series(headers)
    assert plan.instances == (3, 2, 1, 0)
    assert [headers[i].InstanceNumber for i in plan.instances] == [4, 3, 2, 1]
    assert require_volume(plan) == pytest.approx(2.5)


def _oblique(theta_deg: float) -> tuple[tuple[float, ...], tuple[float, float, float], tuple[float, float, float]]:
    """Orientation rotated about x, its column direction and normal."""
    c, s = math.cos(math.radians(theta_deg)), math.sin(math.radians(theta_deg))
    return (1.0, 0.0, 0.0, 0.0, c, -s), (0.0, c, -s), (0.0, s, c)


def test_oblique_series_is_sorted_along_the_normal_not_along_z() -> None:
    orientation, col, normal = _oblique(30.0)
    # Slice k lies 5k mm along the normal, shifted 20k mm in plane: z decreases while k increases.
    origins = [tuple(5 * k * n + 20 * k * d for n, d in zip(normal, col)) for k in range(5)]
    assert origins[4][2] < origins[0][2]
    headers = [ct_slice(o, instance_number=k + 1, orientation=orientation)  # type: ignore[arg-type]
               for k, o in enumerate(origins)]
    plan = plan_series(shuffled(headers))
    assert [s.origin_mm for s in plan.slices] == [pytest.approx(o, abs=1e-4) for o in origins]
    assert [s.position_mm for s in plan.slices] == pytest.approx([0, 5, 10, 15, 20], abs=1e-4)
    # In-plane drift of 20 mm per slice is gantry tilt / shear: no volume without resampling.
    refused("sheared", require_volume, plan)


def test_oblique_stack_along_its_normal_is_a_volume() -> None:
    orientation, _, normal = _oblique(17.0)
    origins = [tuple(3.0 * k * n for n in normal) for k in range(6)]
    headers = [ct_slice(o, instance_number=k + 1, orientation=orientation)  # type: ignore[arg-type]
               for k, o in enumerate(origins)]
    headers = shuffled(headers, seed=3)
    plan = plan_series(headers)
    assert [headers[i].InstanceNumber for i in plan.instances] == [1, 2, 3, 4, 5, 6]
    assert require_volume(plan) == pytest.approx(3.0, abs=1e-4)


# --- exclusions ---------------------------------------------------------------------------------------


def test_localizer_is_excluded_even_with_another_orientation_and_size() -> None:
    headers = axial_series([0.0, 5.0, 10.0])
    headers.insert(1, ct_slice((0.0, 0.0, 0.0), orientation=CORONAL, rows=512, cols=256,
                                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    assert exclusion_reason(headers[1]) == "localizer"
    plan = plan_series(headers)
    assert plan.excluded == ((1, "localizer"),)
    assert plan.instances == (0, 2, 3)


@pytest.mark.parametrize(("modality", "sop_class"), NON_IMAGES, ids=[m for m, _ in NON_IMAGES])
def test_non_images_are_excluded_by_modality_and_by_sop_class(modality: str, sop_class: str) -> None:
    # Rows/Columns present (a SEG or an RT dose has them): only the modality, or the class, tells.
    assert exclusion_reason(ct_slice(modality=modality)) == "not_an_image"
    assert exclusion_reason(ct_slice(modality="OT", sop_class=sop_class)) == "not_an_image"
    headers = axial_series([0.0, 2.0])
    headers.insert(1, ct_slice(modality=modality, sop_class=sop_class, orientation=CORONAL))
    plan = plan_series(headers)
    assert plan.excluded == ((1, "not_an_image"),) and plan.instances == (0, 2)


def test_an_instance_without_rows_is_not_an_image_and_a_plain_ct_slice_is_one() -> None:
    ds = ct_slice()
    assert exclusion_reason(ds) is None
    del ds.Rows
    assert exclusion_reason(ds) == "not_an_image"


def test_medseg_output_is_excluded_by_manufacturer_or_contributing_equipment() -> None:
    assert exclusion_reason(ct_slice(manufacturer="medseg-serve")) == "derived_by_medseg"
    ds = ct_slice()
    equipment = Dataset()
    equipment.Manufacturer = "medseg-serve"
    other = Dataset()
    other.Manufacturer = "ACME"
    ds.ContributingEquipmentSequence = Sequence([other, equipment])
    assert exclusion_reason(ds) == "derived_by_medseg"
    headers = [*axial_series([0.0, 1.0]), ds]
    assert plan_series(headers).excluded == ((2, "derived_by_medseg"),)


def test_nothing_to_segment_is_no_images_with_counts() -> None:
    headers = [ct_slice(modality="SR", sop_class=NON_IMAGES[0][1]),
               ct_slice(image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))]
    error = refused("no_images", plan_series, headers)
    assert "1 not_an_image" in error.message and "1 localizer" in error.message
    assert isinstance(error, UnprocessableImage) and error.status == 422
    refused("no_images", plan_series, [])


# --- refusals of plan_series ------------------------------------------------------------------------------


def test_mixed_orientation_is_refused() -> None:
    headers = [*axial_series([0.0, 5.0]), ct_slice((0.0, 0.0, 10.0), orientation=CORONAL)]
    error = refused("mixed_orientation", plan_series, headers)
    assert "2 slices" in error.message and "1 slice" in error.message


def test_orientation_within_tolerance_is_the_same() -> None:
    nearly = (1.0, 0.0002, 0.0, -0.0002, 1.0, 0.0)
    headers = [*axial_series([0.0, 5.0]), ct_slice((-10.0, -20.0, 10.0), orientation=nearly, instance_number=3)]
    assert plan_series(headers).instances == (0, 1, 2)


def test_mixed_size_is_refused_with_the_sizes() -> None:
    headers = [*axial_series([0.0, 5.0]), ct_slice((0.0, 0.0, 10.0), rows=32, cols=48)]
    error = refused("mixed_size", plan_series, headers)
    assert "64x64" in error.message and "32x48" in error.message


def test_mixed_pixel_spacing_is_refused_with_the_spacings() -> None:
    headers = [*axial_series([0.0, 5.0]), ct_slice((0.0, 0.0, 10.0), spacing=(0.9, 0.9))]
    error = refused("mixed_spacing", plan_series, headers)
    assert "0.7x0.7 mm" in error.message and "0.9x0.9 mm" in error.message


def test_mixed_frame_of_reference_is_refused_without_naming_the_uids() -> None:
    headers = [*axial_series([0.0, 5.0]), ct_slice((0.0, 0.0, 10.0), frame_of_reference="1.2.3.4.5")]
    error = refused("mixed_frame_of_reference", plan_series, headers)
    assert "1.2.3.4.5" not in error.message


def test_slices_without_geometry_alone_go_in_instance_number_order_but_not_mixed_with_positioned() -> None:
    captures = [ct_slice(None, orientation=None, spacing=None, frame_of_reference=None, modality="OT",
                         sop_class=SECONDARY_CAPTURE, instance_number=n) for n in (3, 1, 2)]
    plan = plan_series(captures)
    assert plan.instances == (1, 2, 0) and not plan.has_geometry
    assert plan.grid.orientation is None and plan.slices[0].position_mm is None
    refused("missing_geometry", require_volume, plan)
    positioned = [ct_slice((0.0, 0.0, 0.0), spacing=None, instance_number=4)]
    error = refused("missing_geometry", plan_series, [*captures, positioned[0]])
    assert "3 of 4 slices" in error.message


# --- require_volume ---------------------------------------------------------------------------------------


def test_gaps_are_planned_for_2d_but_refused_for_a_volume() -> None:
    headers = shuffled(axial_series([0.0, 5.0, 10.0, 20.0, 25.0]))
    plan = plan_series(headers)
    assert [s.position_mm for s in plan.slices] == pytest.approx([0, 5, 10, 20, 25])
    error = refused("gap", require_volume, plan)
    assert "10.00 mm and 20.00 mm" in error.message and "spacing is 5.00 mm" in error.message
    assert "1 missing slice" in error.message


def test_steps_within_the_tolerance_are_a_volume() -> None:
    plan = plan_series(axial_series([0.0, 5.02, 10.0, 14.98, 20.0]))
    assert require_volume(plan) == pytest.approx(5.0)
    refused("gap", require_volume, plan, tolerance=0.001)


def test_duplicate_positions_are_kept_in_instance_number_order_but_refused_for_a_volume() -> None:
    headers = axial_series([0.0, 5.0, 10.0, 0.0, 5.0, 10.0])  # two phases: instances 1-3 and 4-6
    headers = headers[::-1]  # arrival order opposite to InstanceNumber: the tie-break must not be arrival
    plan = plan_series(headers)
    assert [headers[i].InstanceNumber for i in plan.instances] == [1, 4, 2, 5, 3, 6]
    error = refused("duplicate_position", require_volume, plan)
    assert "3 slices" in error.message


def test_a_single_slice_is_too_few_for_a_volume() -> None:
    refused("too_few_slices", require_volume, plan_series(axial_series([7.0])))


# --- enhanced multi-frame ------------------------------------------------------------------------------------


def test_enhanced_multiframe_frames_are_sorted_by_their_per_frame_positions() -> None:
    zs = [30.0, 10.0, 40.0, 0.0, 20.0]
    ds = enhanced_ct([(-5.0, -5.0, z) for z in zs])
    plan = plan_series([ds])
    assert [s.instance for s in plan.slices] == [0] * 5 and plan.instances == (0,)
    assert [s.frame for s in plan.slices] == [3, 1, 4, 0, 2]
    assert [s.position_mm for s in plan.slices] == pytest.approx([0, 10, 20, 30, 40])
    assert plan.grid.pixel_spacing_mm == (0.8, 0.8) and plan.grid.orientation == AXIAL
    assert require_volume(plan) == pytest.approx(10.0)  # not PixelMeasures' SpacingBetweenSlices (9.0)


def test_enhanced_multiframe_per_frame_orientations_must_agree() -> None:
    positions = [(0.0, 0.0, float(z)) for z in range(3)]
    assert plan_series([enhanced_ct(positions, per_frame_orientations=[AXIAL] * 3)]).instances == (0,)
    refused("mixed_orientation", plan_series, [enhanced_ct(positions, per_frame_orientations=[AXIAL, CORONAL, AXIAL])])


# --- require_same_grid ---------------------------------------------------------------------------------------


def _channels(**changes: dict[str, object]) -> dict[str, SeriesPlan]:
    return {
        name: plan_series(shuffled(axial_series([0.0, 1.0, 2.0, 3.0], **changes.get(name, {}))))
        for name in ("t1", "t1ce", "t2", "flair")
    }


def test_same_grid_accepts_four_identical_channels() -> None:
    assert require_same_grid(_channels()) is None
    assert require_same_grid({}) is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"spacing": (1.0, 1.0)}, "pixel spacing (1x1 mm vs 0.7x0.7 mm)"),
        ({"rows": 48}, "size (48x64 vs 64x64)"),
        ({"orientation": CORONAL}, "orientation"),
        ({"frame_of_reference": "1.2.3.4.5"}, "frame of reference"),
    ],
    ids=["spacing", "size", "orientation", "frame_of_reference"],
)
def test_same_grid_names_the_differing_channel_and_what_differs(change: dict[str, object], words: str) -> None:
    error = refused("grids_differ", require_same_grid, _channels(flair=change))
    assert "channel 'flair' differs from 't1'" in error.message and words in error.message
    assert "'t2'" not in error.message and "1.2.3.4.5" not in error.message


def test_same_grid_compares_slice_positions_and_counts() -> None:
    plans = _channels()
    plans["t2"] = plan_series(axial_series([0.0, 1.0, 2.0, 3.5]))
    assert "channel 't2'" in refused("grids_differ", require_same_grid, plans).message
    assert "up to 0.50 mm apart" in refused("grids_differ", require_same_grid, plans).message
    plans["t2"] = plan_series(axial_series([0.0, 1.0, 2.0]))
    assert "slice count (3 vs 4)" in refused("grids_differ", require_same_grid, plans).message


def test_assembly_errors_survive_pickling() -> None:
    error = pickle.loads(pickle.dumps(AssemblyError("gap", "a 10 mm step")))
    assert (error.reason, error.message, error.status) == ("gap", "gap: a 10 mm step", 422)
