"""DICOM SEG writer: label map + source headers + model card → a BINARY SEG that dciodvfy accepts
and that highdicom reads back to the same label map, per source instance."""

from __future__ import annotations

import io
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from export.phantoms.dicom_writer import PATIENT_ID, PATIENT_NAME, can_write, write_ct_slice, write_multiframe, write_series
from services.codecs.seg import build_segmentation, segment_numbers, segmentation_bytes
from services.contract import ModelCard, discover_cards
from services.errors import UnprocessableImage

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
CORPUS = Path(pydicom.data.__file__).parent / "test_files"  # real files nobody here wrote
CARDS = discover_cards(REPOSITORY)
RNG = np.random.default_rng(11)
SIZE = 64


def headers(files: list[bytes]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True) for f in files]


def blobs(frames: int, ids: tuple[int, ...], empty_frames: tuple[int, ...] = (), size: int = SIZE) -> np.ndarray:
    """(frames, size, size) uint8 label map with a square of each id per frame (later ids on top)."""
    labels = np.zeros((frames, size, size), np.uint8)
    for f in range(frames):
        if f in empty_frames:
            continue
        for label_id in ids:
            r, c = RNG.integers(0, size - 16, size=2)
            labels[f, r:r + int(RNG.integers(4, 16)), c:c + int(RNG.integers(4, 16))] = label_id
    return labels


@dataclass
class Case:
    sources: list[pydicom.Dataset]
    labels: np.ndarray
    card: ModelCard
    others: list[pydicom.Dataset]
    slice_spacing: float | None  # the spacing the SEG must state (one plane: its thickness; None: no frame of reference)


def ct_series() -> Case:
    """6 slices, mixed transfer syntaxes, a wrong SpacingBetweenSlices header, passed in descending z."""
    syntaxes = [s for s in ("jpeg2000_lossless", "rle", "jpegls_lossless") if can_write(s)]
    syntaxes = (syntaxes + ["explicit_le"] * 6)[:6]
    files = write_series(RNG.uniform(-200.0, 200.0, (6, SIZE, SIZE)), (0.7, 0.7), 2.5,
                         transfer_syntaxes=syntaxes, spacing_between_slices_mm=9.0)  # type: ignore[arg-type]
    return Case(headers(files)[::-1], blobs(6, (1, 2), empty_frames=(2,)), CARDS["swtr_unet"], [], 2.5)


def ct_multiframe() -> Case:
    """One Enhanced CT instance whose shared SpacingBetweenSlices is wrong; the lesion segment stays empty."""
    source = headers([write_multiframe(RNG.uniform(-200.0, 200.0, (4, SIZE, SIZE)), (0.8, 0.8), 3.0)])[0]
    source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices = "7.0"
    return Case([source], blobs(4, (1,)), CARDS["swtr_unet"], [], 3.0)


def mr_four_series() -> Case:
    """hnf_net (labels 1, 2, 4): the SEG is aligned with one MR series and references three more."""
    study, frame_of_reference = generate_uid(), generate_uid()
    series = [
        headers(write_series(RNG.uniform(0.0, 800.0, (3, SIZE, SIZE)), (1.0, 1.0), 4.0, modality="MR",
                             rescale=(1.0, 0.0), study_uid=study, frame_of_reference_uid=frame_of_reference,
                             series_number=n + 1, series_description=name))
        for n, name in enumerate(("t1", "t1ce", "t2", "flair"))
    ]
    others = [ds for n in (0, 2, 3) for ds in series[n]]
    return Case(series[1], blobs(3, (2, 1, 4)), CARDS["hnf_net"], others, 4.0)


def single_slice() -> Case:
    return Case(headers([write_ct_slice(RNG.uniform(-200.0, 200.0, (SIZE, SIZE)), (0.6, 0.6))]),
                blobs(1, (1, 2)), CARDS["swtr_unet"], [], 1.0)


def real_ct_slice() -> Case:
    """pydicom's CT_small.dcm: a scanner's single slice, with its own SpacingBetweenSlices."""
    source = pydicom.dcmread(CORPUS / "CT_small.dcm", stop_before_pixels=True)
    return Case([source], blobs(1, (1, 2), size=128), CARDS["swtr_unet"], [], 5.0)


def real_rgb_frame() -> Case:
    """pydicom's SC_rgb_jpeg_dcmtk.dcm (RGB, no frame of reference) with surgical_sam's private codes."""
    source = pydicom.dcmread(CORPUS / "SC_rgb_jpeg_dcmtk.dcm", stop_before_pixels=True)
    return Case([source], blobs(1, (1, 3, 7), size=100), CARDS["surgical_sam"], [], None)


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy is missing: install dicom3tools (apt-get install dicom3tools)")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def read_back_labels(seg: hd.seg.Segmentation, case: Case) -> np.ndarray:
    """The SEG's label map per source frame, with segment numbers turned back into card label ids
    through the SegmentLabel names (independent of the writer's numbering)."""
    to_id = np.zeros(len(seg.SegmentSequence) + 1, np.uint8)
    by_name = {label.name: label.id for label in case.card.labels}
    for item in seg.SegmentSequence:
        to_id[item.SegmentNumber] = by_name[item.SegmentLabel]
    if len(case.sources) == 1 and "NumberOfFrames" in case.sources[0]:
        frames = list(range(1, int(case.sources[0].NumberOfFrames) + 1))
        combined = seg.get_pixels_by_source_frame(case.sources[0].SOPInstanceUID, frames, combine_segments=True)
    else:
        combined = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in case.sources], combine_segments=True)
    return to_id[combined]


@pytest.mark.parametrize("make_case", [ct_series, ct_multiframe, mr_four_series, single_slice, real_ct_slice, real_rgb_frame])
def test_seg_is_valid_and_reads_back_to_the_label_map(make_case, tmp_path: Path) -> None:
    case = make_case()
    seg = build_segmentation(case.sources, case.labels, case.card, other_references=case.others)
    path = tmp_path / "seg.dcm"
    path.write_bytes(segmentation_bytes(seg))
    assert dciodvfy_errors(path) == []

    back = hd.seg.segread(path)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.SegmentationType == "BINARY" and back.Modality == "SEG"
    np.testing.assert_array_equal(read_back_labels(back, case), case.labels)

    source_frames = case.labels.shape[0]
    foreground = [label for label in case.card.labels if label.id != 0]
    assert int(back.NumberOfFrames) == len(foreground) * source_frames  # empty frames and segments kept
    assert [item.SegmentNumber for item in back.SegmentSequence] == list(range(1, len(foreground) + 1))
    for item, label in zip(back.SegmentSequence, foreground):
        assert item.SegmentLabel == label.name and item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == label.type.value
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == label.category.value
        assert "RecommendedDisplayCIELabValue" in item
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (case.card.name, case.card.version)
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        assert f"weights_sha256={case.card.weights.sha256}" in algorithm.AlgorithmParameters
        assert f"variant={case.card.variant}" in algorithm.AlgorithmParameters

    everything = case.sources + case.others
    referenced = {ref.ReferencedSOPInstanceUID for series in back.ReferencedSeriesSequence for ref in series.ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in everything}
    assert {series.SeriesInstanceUID for series in back.ReferencedSeriesSequence} == {ds.SeriesInstanceUID for ds in everything}
    assert back.StudyInstanceUID == case.sources[0].StudyInstanceUID
    assert back.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in everything}
    assert back.get("FrameOfReferenceUID") == case.sources[0].get("FrameOfReferenceUID")

    assert back.Manufacturer == "medseg-serve" and back.ManufacturerModelName == f"{case.card.name} {case.card.variant}"
    assert back.SeriesDescription == f"medseg {case.card.name} SEG"
    processing = [e for e in back.ContributingEquipmentSequence if e.Manufacturer == "medseg-serve"]
    assert len(processing) == 1 and processing[0].ManufacturerModelName == back.ManufacturerModelName

    if case.slice_spacing is not None:  # computed from the positions, not copied from the wrong header
        measures = back.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        assert float(measures.SpacingBetweenSlices) == pytest.approx(case.slice_spacing)
        volume = back.get_volume(combine_segments=True)
        assert volume.spacing[0] == pytest.approx(case.slice_spacing)
        assert volume.shape == case.labels.shape
    private = {c.scheme for label in foreground for c in (label.category, label.type) if c.scheme.startswith("99")}
    assert {item.CodingSchemeDesignator for item in back.get("CodingSchemeIdentificationSequence", [])} == private


def test_sources_are_not_modified() -> None:
    case = ct_multiframe()
    build_segmentation(case.sources, case.labels, case.card)
    assert case.sources[0].SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices == 7.0
    series = ct_series()
    build_segmentation(series.sources, series.labels, series.card)
    assert all(float(ds.SpacingBetweenSlices) == 9.0 for ds in series.sources)


def test_missing_slice_thickness_falls_back_to_the_position_spacing() -> None:
    case = ct_series()
    for ds in case.sources:
        del ds.SliceThickness
    back = hd.seg.Segmentation.from_dataset(build_segmentation(case.sources, case.labels, case.card))
    measures = back.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == float(measures.SpacingBetweenSlices) == 2.5
    single = single_slice()
    del single.sources[0].SliceThickness
    assert "SliceThickness" in unprocessable(single)


def test_segment_numbers_are_consecutive_in_card_order() -> None:
    assert segment_numbers(CARDS["hnf_net"]) == {1: 1, 2: 2, 4: 3}
    assert segment_numbers(CARDS["swtr_unet"]) == {1: 1, 2: 2}


def unprocessable(case: Case, **changes) -> str:
    arguments = {"sources": case.sources, "labels": case.labels, "card": case.card, "other_references": case.others, **changes}
    with pytest.raises(UnprocessableImage) as caught:
        build_segmentation(**arguments)
    message = caught.value.message
    assert PATIENT_NAME not in message and PATIENT_ID not in message
    return message


def test_caller_errors_are_unprocessable_without_patient_identifiers() -> None:
    case = ct_series()
    assert "shape" in unprocessable(case, labels=case.labels[:5])
    assert "shape" in unprocessable(case, labels=case.labels[:, :32])
    assert "integer" in unprocessable(case, labels=case.labels.astype(np.float32))
    bad = case.labels.copy()
    bad[0, 0, :2] = (3, 4)
    assert "[3, 4]" in unprocessable(case, labels=bad)
    hnf = mr_four_series()
    assert "[3]" in unprocessable(hnf, labels=np.where(hnf.labels == 4, 3, hnf.labels).astype(np.uint8))
    assert "one series" in unprocessable(case, sources=case.sources[:3] + mr_four_series().sources)
    tilted = ct_series()
    tilted.sources[3].ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.1]
    assert "orientation" in unprocessable(tilted)
    assert "study" in unprocessable(case, other_references=mr_four_series().sources)
    multi = ct_multiframe()
    assert "multi-frame" in unprocessable(multi, sources=multi.sources * 2, labels=np.zeros((8, SIZE, SIZE), np.uint8))
    assert "at least one" in unprocessable(case, sources=[], labels=case.labels[:0])


def test_a_single_component_patient_name_is_kept_exactly_and_never_quoted_in_a_warning() -> None:
    """highdicom warns with the name in the text for names without '^' (e.g. anonymised "ANONYMOUS")."""
    case = single_slice()
    case.sources[0].PatientName = "ANONYMOUS"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = build_segmentation(case.sources, case.labels, case.card)
    assert not [w for w in caught if "ANONYMOUS" in str(w.message)]
    assert seg.PatientName == "ANONYMOUS" == case.sources[0].PatientName


def test_headers_without_type2_patient_and_study_attributes_still_make_a_seg(tmp_path: Path) -> None:
    case = single_slice()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime"):
        delattr(case.sources[0], keyword)
    path = tmp_path / "seg.dcm"
    path.write_bytes(segmentation_bytes(build_segmentation(case.sources, case.labels, case.card)))
    assert dciodvfy_errors(path) == []
    back = hd.seg.segread(path)
    assert (back.PatientName, back.PatientID, back.StudyDate) == ("", "", "")
    np.testing.assert_array_equal(read_back_labels(back, case), case.labels)
