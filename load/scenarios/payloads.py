"""Request payloads, built from the project's phantoms and pydicom's test files, never downloaded.

Builders are plain functions (tested in tests/unit/test_locust_scenarios.py); each scenario module
calls its cached ``*_payloads()`` at import, so a locust process builds what it sends once
(about a second for all of them: 256² CT slices, 240×320 frames, 64³ BraTS cases).
"""

from __future__ import annotations

import functools
import gzip
import io
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from load.scenarios.common import request_name

FileField = tuple[str, bytes, str]  # (file name, content, media type)

CT_SHAPE = (256, 256)
CT_SPACING_MM = (1.5, 1.5)
CT_SLICE_STEP_MM = 2.5
FRAME_SHAPE = (240, 320)  # (rows, cols) of the video and PNG frames
BRATS_SHAPE = (64, 64, 64)
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
# A BraTS-like affine: LPS-flipped X and Y, translated, 1 mm voxels (as tests/integration/test_volume_http.py).
BRATS_AFFINE = np.array([[-1.0, 0, 0, 90.0], [0, -1.0, 0, 126.0], [0, 0, 1.0, -72.0], [0, 0, 0, 1.0]])
SURGICAL_CLASSES = ((1, 4), (2, 3, 5))  # the instruments drawn in, and prompted for, each surgical frame


# --------------------------------------------------------------------------- encoders


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def window_ct(hu: np.ndarray, center: float = 40.0, width: float = 400.0) -> np.ndarray:
    """HU → uint8 grey levels through a soft-tissue window (how a CT slice is exported as PNG)."""
    low = center - width / 2
    return np.clip(np.round((hu - low) / width * 255.0), 0, 255).astype(np.uint8)


def multipart_form(fields: Mapping[str, str], files: Mapping[str, FileField]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type (a fresh boundary per call)."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for key, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for key, (filename, content, media_type) in files.items():
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{filename}"\r\n'
            f"Content-Type: {media_type}\r\n\r\n".encode()
        )
        chunks.append(content)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def multipart_related(parts: Iterable[bytes], media_type: str = "application/dicom") -> tuple[bytes, str]:
    """A STOW-RS body (PS3.18 §10.5): one part per DICOM file, and its Content-Type."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode()
    body = b"".join(head + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="{media_type}"; boundary={boundary}'


def nifti_bytes(data: np.ndarray, affine: np.ndarray = BRATS_AFFINE) -> bytes:
    """gzip int16 NIfTI-1, as BraTS distributes its scans."""
    import nibabel as nib

    image = nib.Nifti1Image(np.round(data).astype(np.int16), affine)
    image.set_sform(affine, 1)
    image.set_qform(affine, 1)
    return gzip.compress(image.to_bytes(), compresslevel=1)


# --------------------------------------------------------------------------- phantoms


def ct_volume(slices: int, seed: int, shape: tuple[int, int] = CT_SHAPE) -> np.ndarray:
    """(slices, rows, cols) HU: one liver phantom slice per position (each its own anatomy)."""
    from export.phantoms.ct_liver import make_ct_slice

    rng = np.random.default_rng(seed)
    return np.stack([make_ct_slice(rng, shape=shape, spacing_mm=CT_SPACING_MM).hu for _ in range(slices)])


def pydicom_ct_small() -> bytes:
    """pydicom's bundled CT_small.dcm (128², a real scanner's file nobody here wrote)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def polyp_frames(count: int, seed: int, shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
    """(count, rows, cols, 3) uint8 RGB frames of one colonoscopy phantom clip."""
    from export.phantoms.polyp import make_polyp_clip

    return make_polyp_clip(np.random.default_rng(seed), frames=count, shape=shape).frames


def surgical_frames(count: int, seed: int, shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
    """(count, rows, cols, 3) uint8 RGB frames of one surgical phantom clip (a panning camera)."""
    from export.phantoms.video import surgical_clip

    return surgical_clip(seed, frames=count, shape=shape)[0]


# --------------------------------------------------------------------------- segment


@dataclass(frozen=True)
class SegmentCase:
    """One kind of POST /v1/segment upload: ``model``, what is sent (``kind``: "dicom", "png",
    "png+ref"), the files (one or more variants of the same kind), extra form fields and the
    output kinds that apply."""

    model: str
    kind: str
    variants: tuple[Mapping[str, FileField], ...]
    outputs: tuple[str, ...]
    fields: Mapping[str, str] = field(default_factory=dict)

    def detail(self, output: str) -> str:
        return f"{self.model} {self.kind} {output}"


def segment_cases(seed: int = 1401) -> dict[str, SegmentCase]:
    """Every 2-D model with DICOM (swtr_unet) and PNG uploads, keyed "<model> <kind>"."""
    from export.phantoms.dicom_writer import write_ct_slice
    from export.phantoms.surgical import make_surgical_frame

    hu = ct_volume(3, seed)
    dicom = ({"file": ("CT_small.dcm", pydicom_ct_small(), "application/dicom")},) + tuple(
        {"file": (f"ct_{i}.dcm", write_ct_slice(hu[i], CT_SPACING_MM), "application/dicom")} for i in range(2)
    )
    ct_png = ({"file": ("ct.png", png_bytes(window_ct(hu[2])), "image/png")},)
    polyp = polyp_frames(6, seed + 1)
    single = tuple({"file": (f"frame_{i}.png", png_bytes(polyp[i]), "image/png")} for i in (0, 5))
    paired = tuple(
        {"file": (f"frame_{i}.png", png_bytes(polyp[i]), "image/png"),
         "reference": (f"frame_{i - 3}.png", png_bytes(polyp[i - 3]), "image/png")}
        for i in (3, 5)
    )
    rng = np.random.default_rng(seed + 2)
    surgical = tuple(
        {"file": (f"surgical_{i}.png", png_bytes(make_surgical_frame(rng, FRAME_SHAPE, classes=c).rgb), "image/png")}
        for i, c in enumerate(SURGICAL_CLASSES)
    )
    images = ("png", "json", "overlay")
    cases = [
        SegmentCase("swtr_unet", "dicom", dicom, (*images, "seg")),
        SegmentCase("swtr_unet", "png", ct_png, images),
        SegmentCase("mast", "png", single, images),
        SegmentCase("mast", "png+ref", paired, images),
        # the classes drawn in the first frame; the other frame's instruments are partly prompted for
        SegmentCase("surgical_sam", "png", surgical, images, {"classes": ",".join(map(str, SURGICAL_CLASSES[0]))}),
    ]
    return {f"{c.model} {c.kind}": c for c in cases}


def segment_request(case: SegmentCase, output: str, variant: int) -> tuple[str, bytes, str]:
    """(request name "segment: <model> <kind> <output>", multipart body, Content-Type) of one
    upload of ``case`` (``variant`` taken modulo the variants)."""
    if output not in case.outputs:
        raise ValueError(f"{case.model} {case.kind} has no output {output!r}")
    files = case.variants[variant % len(case.variants)]
    body, content_type = multipart_form({"model": case.model, "output": output, **case.fields}, files)
    return request_name("segment", case.detail(output)), body, content_type


# --------------------------------------------------------------------------- volume


@dataclass(frozen=True)
class VolumeCase:
    """One BraTS-like case: the four modalities as separate files and stacked in one 4-D file."""

    channels: Mapping[str, FileField]
    stacked: Mapping[str, FileField]


def volume_cases(count: int = 2, seed: int = 1402, shape: tuple[int, int, int] = BRATS_SHAPE) -> list[VolumeCase]:
    from export.phantoms.brats import make_brats_case

    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        case = make_brats_case(rng, shape=shape)
        channels = {
            name: (f"{name}.nii.gz", nifti_bytes(case.channels[i]), "application/gzip")
            for i, name in enumerate(BRATS_MODALITIES)
        }
        stacked = {"file": ("case_4d.nii.gz", nifti_bytes(np.moveaxis(case.channels, 0, 3)), "application/gzip")}
        cases.append(VolumeCase(channels, stacked))
    return cases


VOLUME_MODEL = "hnf_net"
VOLUME_OUTPUTS = ("nifti", "json")


def volume_request(case: VolumeCase, output: str, stacked: bool = False) -> tuple[str, bytes, str]:
    """(request name "volume: hnf_net [4d ]<output>", multipart body, Content-Type) of one case:
    four files t1 / t1ce / t2 / flair, or (``stacked``) one 4-D file."""
    if output not in VOLUME_OUTPUTS:
        raise ValueError(f"output must be one of {VOLUME_OUTPUTS}")
    files = case.stacked if stacked else case.channels
    body, content_type = multipart_form({"model": VOLUME_MODEL, "output": output}, files)
    detail = f"{VOLUME_MODEL} 4d {output}" if stacked else f"{VOLUME_MODEL} {output}"
    return request_name("volume", detail), body, content_type


# --------------------------------------------------------------------------- pacs


@dataclass(frozen=True)
class FreshSeries:
    """One STOW's worth of a series: new Study / Series / Frame of Reference / SOP instance UIDs."""

    study_uid: str
    series_uid: str
    sop_uids: tuple[str, ...]
    files: tuple[bytes, ...]

    def stow_body(self) -> tuple[bytes, str]:
        return multipart_related(self.files)


class SeriesTemplate:
    """A phantom CT series parsed once; ``fresh()`` writes it again under new UIDs, so every STOW
    is a new study with a new job (the service keeps re-sent instances from changing a job).

    Not thread-safe (it reuses its datasets); under locust's gevent nothing yields inside ``fresh``."""

    def __init__(self, files: Sequence[bytes]) -> None:
        import pydicom

        if not files:
            raise ValueError("a series needs at least one instance")
        self._datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]

    def __len__(self) -> int:
        return len(self._datasets)

    def fresh(self) -> FreshSeries:
        from pydicom.uid import generate_uid

        study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
        sops, files = [], []
        for ds in self._datasets:
            sop = generate_uid()
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
            ds.SOPInstanceUID = sop
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            sops.append(sop)
            files.append(buffer.getvalue())
        return FreshSeries(study, series, tuple(sops), tuple(files))


def ct_series_template(instances: int, seed: int = 1403) -> SeriesTemplate:
    """A phantom CT series of ``instances`` 256² slices (uncompressed, as a modality sends)."""
    from export.phantoms.dicom_writer import write_series

    if instances < 1:
        raise ValueError("a series needs at least one instance")
    volume = ct_volume(instances, seed)
    return SeriesTemplate(write_series(volume, CT_SPACING_MM, CT_SLICE_STEP_MM, series_description="load test CT"))


# --------------------------------------------------------------------------- video

VIDEO_CLIP_FRAMES = 30  # a clip is sent round and round


def video_frames(model: str, count: int = VIDEO_CLIP_FRAMES, seed: int = 1404) -> list[bytes]:
    """JPEG frames for a stream of ``model``: a colonoscopy clip for mast, a surgical clip for
    surgical_sam, windowed CT slices (grey JPEG) for swtr_unet."""
    if model == "mast":
        return [jpeg_bytes(f) for f in polyp_frames(count, seed)]
    if model == "surgical_sam":
        return [jpeg_bytes(f) for f in surgical_frames(count, seed)]
    if model == "swtr_unet":
        return [jpeg_bytes(window_ct(hu)) for hu in ct_volume(min(count, 8), seed)]
    raise ValueError(f"no video frames for model {model!r} (mast, surgical_sam or swtr_unet)")


# --------------------------------------------------------------------------- built once per process


@functools.cache
def segment_payloads() -> dict[str, SegmentCase]:
    return segment_cases()


@functools.cache
def volume_payloads() -> list[VolumeCase]:
    return volume_cases()


@functools.cache
def pacs_template(instances: int) -> SeriesTemplate:
    return ct_series_template(instances)


@functools.cache
def video_payloads(model: str) -> list[bytes]:
    return video_frames(model)
