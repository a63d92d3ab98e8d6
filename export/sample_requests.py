"""One realistic request per served model, for benchmarks and the Triton equality tests:
a pydicom CT file for swtr_unet, phantom frames (PNG) for mast and surgical_sam, a BraTS-like
phantom as four int16 NIfTI files for hnf_net."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image

Files = dict[str, tuple[str, bytes, str]]


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def requests_per_model() -> dict[str, tuple[str, Files, dict[str, str]]]:
    """Model → (route, multipart files, extra form fields)."""
    import nibabel as nib
    from pydicom.data import get_testdata_file

    from export.phantoms.brats import make_brats_case
    from export.phantoms.polyp import make_polyp_clip
    from export.phantoms.surgical import make_surgical_frame

    case = make_brats_case(np.random.default_rng(11), shape=(80, 80, 64))
    volume = {
        name: (f"{name}.nii.gz", gzip.compress(nib.Nifti1Image(np.round(c).astype(np.int16), np.eye(4)).to_bytes()), "application/gzip")
        for name, c in zip(("t1", "t1ce", "t2", "flair"), case.channels)
    }
    polyp = make_polyp_clip(np.random.default_rng(12), frames=1, shape=(240, 320)).frames[0]
    surgical = make_surgical_frame(np.random.default_rng(13), (256, 320)).rgb
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    return {
        "swtr_unet": ("/v1/segment", {"file": ("ct.dcm", ct, "application/dicom")}, {}),
        "mast": ("/v1/segment", {"file": ("frame.png", png_bytes(polyp), "image/png")}, {}),
        "surgical_sam": ("/v1/segment", {"file": ("frame.png", png_bytes(surgical), "image/png")}, {}),
        "hnf_net": ("/v1/segment/volume", volume, {}),
    }
