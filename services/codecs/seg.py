"""DICOM Segmentation writer: a label map + its source headers + a model card → a BINARY DICOM SEG.

Segments are the card's non-background labels in card order, numbered 1..N (``segment_numbers``);
each carries the label's name as SegmentLabel, its coded category/type and display colour, and an
AUTOMATIC AlgorithmIdentificationSequence naming the model, its version, variant and weights
SHA-256. Every segment gets a frame per source frame, empty or not (``omit_empty_frames=False``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from copy import deepcopy
from importlib.metadata import PackageNotFoundError, version
from io import BytesIO

import highdicom as hd
import numpy as np
from highdicom.sr.coding import CodedConcept
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from services.contract import Code, ModelCard
from services.errors import UnprocessableImage

MANUFACTURER = "medseg-serve"
_DROPPED_KEYWORDS = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData", "SpacingBetweenSlices"})
# Type 2 patient/study attributes highdicom reads from the first source: empty when a header lacks them.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime")
_SHARED_GEOMETRY = ("Rows", "Columns", "PixelSpacing", "ImageOrientationPatient", "FrameOfReferenceUID")


def segment_numbers(card: ModelCard) -> dict[int, int]:
    """Label id → segment number (1..N, card order) for the card's non-background labels."""
    return {label.id: n for n, label in enumerate((lb for lb in card.labels if lb.id != 0), start=1)}


def build_segmentation(
    sources: Sequence[Dataset],
    labels: np.ndarray,
    card: ModelCard,
    *,
    series_number: int | None = None,
    series_description: str | None = None,
    other_references: Sequence[Dataset] = (),
    uid_seed: str | None = None,
) -> hd.seg.Segmentation:
    """A BINARY SEG (new series in the sources' study) of ``labels`` over ``sources``.

    ``sources``: single-frame instances of one series in the caller's order, or exactly one
    multi-frame instance; headers suffice (``stop_before_pixels=True``). ``labels``: integer
    (frames, rows, cols) label map with the card's label ids; ``labels[i]`` covers
    ``sources[i]`` (or frame i + 1 of the multi-frame instance). ``other_references``: further
    images of the same study the result derives from (e.g. the other MR sequences of a multi-input
    model); they are listed in SourceImageSequence and ReferencedSeriesSequence.
    ``series_number`` defaults to 1000 + the source's SeriesNumber. ``uid_seed`` (e.g. a job id)
    makes the series and instance UIDs a function of it, so a job run twice writes the same SEG
    and its re-delivery is idempotent at the PACS; None: new random UIDs.
    Raises UnprocessableImage when the labels or sources do not fit.
    """
    _check_sources(sources, labels, other_references)
    numbers = segment_numbers(card)
    segment_map = _to_segment_numbers(labels, numbers, card)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=card.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=card.version,
        source=MANUFACTURER,
        parameters={"variant": card.variant, "weights": card.weights.kind, "weights_sha256": card.weights.sha256 or "none"},
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=numbers[label.id],
            segment_label=label.name,
            segmented_property_category=_coded(label.category),
            segmented_property_type=_coded(label.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*label.color),
        )
        for label in card.labels
        if label.id != 0
    ]
    software = _software_version()
    model_name = f"{card.name} {card.variant}"
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model_name,
        software_versions=software,
        device_serial_number=MANUFACTURER,
        contribution_description=f"automatic segmentation ({card.weights.kind} weights)",
    )
    first = sources[0]
    if series_number is None:
        series_number = 1000 + int(first.get("SeriesNumber") or 0)
    try:
        seg = hd.seg.Segmentation(
            source_images=_source_headers(sources),
            pixel_array=segment_map,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(entropy_srcs=[uid_seed, "series"] if uid_seed else None),
            series_number=series_number,
            sop_instance_uid=generate_uid(entropy_srcs=[uid_seed, "instance"] if uid_seed else None),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=model_name,
            software_versions=software,
            device_serial_number=MANUFACTURER,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            omit_empty_frames=False,
            content_label=re.sub(r"[^A-Z0-9_ ]", "_", card.name.upper())[:16],
            content_description=card.display_name[:64],
            series_description=series_description or f"medseg {card.name} SEG",
            further_source_images=list(other_references) or None,
            contributing_equipment=[equipment],
        )
    except (ValueError, TypeError, AttributeError, KeyError) as error:  # their texts may quote header values
        raise UnprocessableImage(f"cannot build a DICOM SEG from these source images ({type(error).__name__})") from None
    seg.PatientName = first.get("PatientName", "")  # the exact source value (see _source_headers)
    if "FrameOfReferenceUID" not in seg:  # General Image: PatientOrientation is Type 2C without a frame of reference
        seg.PatientOrientation = first.get("PatientOrientation", "")
    private = sorted({c.scheme for lb in card.labels for c in (lb.category, lb.type) if c.scheme.startswith("99")})
    if private:
        seg.CodingSchemeIdentificationSequence = [
            _item(CodingSchemeDesignator=scheme, CodingSchemeName=f"{MANUFACTURER} private codes",
                  CodingSchemeResponsibleOrganization=MANUFACTURER)
            for scheme in private
        ]
    return seg


def segmentation_bytes(seg: hd.seg.Segmentation) -> bytes:
    """The SEG as PS3.10 file bytes (preamble, ``DICM``, file meta, data set)."""
    buffer = BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _check_sources(sources: Sequence[Dataset], labels: np.ndarray, other_references: Sequence[Dataset]) -> None:
    if not sources:
        raise UnprocessableImage("a DICOM SEG needs at least one source image")
    first = sources[0]
    frames = [int(ds.get("NumberOfFrames") or 1) for ds in sources]
    if len(sources) > 1 and max(frames) > 1:
        raise UnprocessableImage("SEG sources must be single-frame images of one series or exactly one multi-frame image")
    if len({ds.get("SeriesInstanceUID") for ds in sources}) != 1:
        raise UnprocessableImage("SEG source images must all belong to one series")
    if any(ds.get(keyword) != first.get(keyword) for ds in sources for keyword in _SHARED_GEOMETRY):
        raise UnprocessableImage("SEG source images must share rows, columns, pixel spacing, orientation and frame of reference")
    expected = (sum(frames), first.get("Rows"), first.get("Columns"))
    if labels.ndim != 3 or labels.shape != expected:
        raise UnprocessableImage(f"the label map has shape {labels.shape}; the source images need {expected}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UnprocessableImage(f"the label map must hold integer label ids; got {labels.dtype}")
    if any(ds.get("StudyInstanceUID") != first.get("StudyInstanceUID") for ds in other_references):
        raise UnprocessableImage("every referenced image must belong to the source images' study")


def _to_segment_numbers(labels: np.ndarray, numbers: dict[int, int], card: ModelCard) -> np.ndarray:
    """Label ids → segment numbers (0 stays background); ids the card lacks are refused."""
    if not numbers:
        raise UnprocessableImage(f"model {card.name} has no foreground labels to write as segments")
    top = max(numbers)
    dtype = np.uint8 if len(numbers) < 255 else np.uint16
    unknown_mark = np.iinfo(dtype).max
    lut = np.full(top + 1, unknown_mark, dtype=dtype)
    lut[0] = 0
    for label_id, number in numbers.items():
        lut[label_id] = number
    inside = labels.size == 0 or (labels.min() >= 0 and labels.max() <= top)
    mapped = lut[labels] if inside else None
    if mapped is None or (mapped == unknown_mark).any():
        unknown = [int(v) for v in np.unique(labels) if not 0 <= v <= top or lut[v] == unknown_mark]
        raise UnprocessableImage(f"label ids {unknown[:8]} are not labels of model {card.name}")
    return mapped


def _source_headers(sources: Sequence[Dataset]) -> list[Dataset]:
    """Sanitised header copies. Without SliceThickness, highdicom writes a PixelMeasures item its
    own reader refuses: use the spacing of the positions instead (frame of reference) or leave the
    pixel measures out (no frame of reference, where they are optional). A single plane gets its
    thickness as SpacingBetweenSlices rather than highdicom's placeholder 1.0."""
    headers = [_sanitised_header(ds) for ds in sources]
    first = headers[0]
    for keyword in _TYPE2_COPIED:
        if keyword not in first:
            setattr(first, keyword, "")
    name = str(first.get("PatientName") or "")
    if name and "^" not in name:  # else highdicom warns with the name in the text (build_segmentation restores it)
        first.PatientName = name + "^"
    if "SharedFunctionalGroupsSequence" in first:
        return headers
    if "FrameOfReferenceUID" not in first:
        if first.get("SliceThickness") is None:
            for header in headers:
                header.pop("PixelSpacing", None)
        return headers
    if first.get("SliceThickness") is None:
        spacing = None
        positions = [header.get("ImagePositionPatient") for header in headers]
        if len(headers) > 1 and all(positions) and "ImageOrientationPatient" in first:
            spacing, _ = hd.spatial.get_volume_positions(positions, first.ImageOrientationPatient, sort=False)
        if not spacing:
            raise UnprocessableImage("the source images have no SliceThickness and no regular slice spacing to stand in for it")
        for header in headers:
            header.SliceThickness = f"{spacing:.6g}"
    if len(headers) == 1:
        first.SpacingBetweenSlices = first.SliceThickness
    return headers


def _sanitised_header(ds: Dataset) -> Dataset:
    """A header-only copy of a source without SpacingBetweenSlices (top level or shared pixel
    measures), so highdicom computes the SEG's spacing from the frame positions instead of copying
    a source value that may be wrong."""
    header = Dataset()
    for element in ds:
        if element.keyword not in _DROPPED_KEYWORDS:
            header.add(deepcopy(element))  # highdicom writes into what it is given: never share elements
    if shared := header.get("SharedFunctionalGroupsSequence"):
        per_frame = header.get("PerFrameFunctionalGroupsSequence")
        if "PixelMeasuresSequence" not in shared[0] and per_frame and "PixelMeasuresSequence" in per_frame[0]:
            shared[0].PixelMeasuresSequence = per_frame[0].PixelMeasuresSequence
        for measures in shared[0].get("PixelMeasuresSequence") or ():
            if "SpacingBetweenSlices" in measures:
                del measures.SpacingBetweenSlices
    return header


def _coded(code: Code) -> CodedConcept:
    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _item(**elements: object) -> Dataset:
    item = Dataset()
    for keyword, value in elements.items():
        setattr(item, keyword, value)
    return item


def _software_version() -> str:
    try:
        return version("medseg-serve")
    except PackageNotFoundError:
        return "0"
