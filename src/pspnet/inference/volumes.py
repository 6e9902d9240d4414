"""DICOM and NIfTI scans in ``pspnet predict``: segmented slice by slice, masks written in the scan's geometry.

A NIfTI scan ``ct.nii.gz`` writes ``OUT/ct.nii.gz``: the labels (in the model's mask values when it has them)
with the input's affine and header, so viewers draw it over the scan. A DICOM file ``slice.dcm`` writes
``OUT/slice_0000.png`` per slice (DICOM carries no NIfTI affine). Needs ``pip install 'pspnet[medical]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pspnet.data.medical import medical_suffix, segment_volume, stem, write_nifti_mask, write_png_slices
from pspnet.errors import PSPNetError


def find_volumes(items: Sequence[str]) -> tuple[list[Path], list[str]]:
    """(the DICOM/NIfTI files among ``items`` and inside folders given, the items left for the image path);
    a folder that holds only scans is not passed on."""
    volumes: list[Path] = []
    rest: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_file() and medical_suffix(path):
            volumes.append(path)
        elif path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and medical_suffix(p))
            volumes += inside
            if not inside or any(p.is_file() and not medical_suffix(p) for p in path.rglob("*")):
                rest.append(item)
        else:
            rest.append(item)
    return volumes, rest


def predict_volume(seg, path: Path, out: Path, axis: int = 2, window: str | None = None,
                   overwrite: bool = False) -> list[Path]:
    """Segment every slice of one scan along ``axis`` (intensities windowed by ``window``, see
    ``pspnet.data.medical.parse_window``) with ``seg`` (a Segmenter) and write the mask; returns the files."""
    labels = segment_volume(seg, path, axis, window)
    name = stem(path)
    if medical_suffix(path) == ".dcm":
        return write_png_slices(labels, out, name, axis, seg.mask_values, overwrite)
    target = out / f"{name}.nii.gz"
    if target.exists() and not overwrite:
        raise PSPNetError(f"{target}: already exists; pass --overwrite to replace it, or choose another --out")
    return [write_nifti_mask(labels, path, target, seg.mask_values, overwrite)]
