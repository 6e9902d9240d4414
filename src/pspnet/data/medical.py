"""Medical images: DICOM and NIfTI in, NIfTI and PNG masks out; volumes as 2-D slices for PSPNet.

Needs the optional extra ``pip install 'pspnet[medical]'`` (pydicom, nibabel); nothing here imports
them until a file is read, and a missing one is a ``PSPNetError`` naming the extra.

Intensities stay in their own units (Hounsfield units after DICOM's rescale slope/intercept; 16- and
32-bit values as float, never wrapped or clipped on reading) until ``window`` maps them to 0..255 for the
network: a centre and width (CT soft tissue ``40,400``), percentiles (``p1,p99``), or by default the
DICOM file's own window, else the volume's full range (no value is clipped).

Volumes are cut into 2-D slices along ``axis`` of the stored array (NIfTI: 2 is the third voxel axis,
axial for most scans; DICOM multi-frame: 0 is the frame). Predicted slices stacked along the same axis
have the input's shape, so ``write_nifti_mask`` writes them with the input's affine and header and they
overlay the scan in any viewer. DICOM-SEG output is not implemented: write NIfTI or PNG slices.
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torchvision import tv_tensors

from pspnet.data.custom import WHERE_KEEP, Histogram, _dataset, _quiet_pairs, load_options, to_stored_values
from pspnet.data.datasets import SegmentationDataset, match_pairs, report
from pspnet.data.io import IMAGE_SUFFIXES, open_image, read_mask
from pspnet.errors import PSPNetError

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".dcm")
MEDICAL_OPTIONS = {"axis", "window"}


def _require(module: str) -> Any:
    """Import an optional dependency of the medical extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise PSPNetError(f"reading DICOM/NIfTI needs {module}: pip install 'pspnet[medical]'") from err


def medical_suffix(path: str | Path) -> str | None:
    """``.nii.gz``, ``.nii`` or ``.dcm`` when ``path`` is a medical file, else None."""
    name = Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def stem(path: str | Path) -> str:
    """File name without its (double) suffix: ``ct.nii.gz`` -> ``ct``."""
    path = Path(path)
    suffix = medical_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


@dataclass
class Volume:
    """A scan as stored: ``data`` in its own units (float32 for images), ``window`` the DICOM file's own
    (centre, width) if it has one, ``nifti`` the nibabel image whose affine and header outputs reuse."""

    data: np.ndarray
    path: Path
    window: tuple[float, float] | None = None
    nifti: Any = None

    def num_slices(self, axis: int) -> int:
        return self.data.shape[axis] if self.data.ndim == 3 else 1

    def slice(self, axis: int, index: int) -> np.ndarray:
        return np.take(self.data, index, axis=axis) if self.data.ndim == 3 else self.data


def _dicom_window(ds: Any) -> tuple[float, float] | None:
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    first = lambda v: float(v[0] if isinstance(v, (list, tuple)) or getattr(v, "VM", 1) > 1 else v)  # noqa: E731
    return first(centre), first(width)


def read_volume(path: str | Path, mask: bool = False) -> Volume:
    """A DICOM (single or multi-frame) or NIfTI file as an array: images as float32 in their own units
    (DICOM rescale applied), masks (``mask=True``) as int64 labels."""
    path = Path(path)
    suffix = medical_suffix(path)
    if not path.is_file():
        raise PSPNetError(f"{path}: no such file")
    if suffix == ".dcm":
        pydicom = _require("pydicom")
        try:
            ds = pydicom.dcmread(path)
            raw = ds.pixel_array
        except Exception as err:  # pydicom raises many types for corrupt or unsupported files
            raise PSPNetError(f"{path}: not a DICOM image pydicom can decode ({err})") from err
        if mask:
            return Volume(np.asarray(raw).astype(np.int64), path)
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        data = raw.astype(np.float64) * slope + intercept
        if ds.get("SamplesPerPixel", 1) != 1:
            raise PSPNetError(f"{path}: colour DICOM ({ds.get('PhotometricInterpretation')}) is not supported; "
                              "export it as PNG")
        return Volume(data.astype(np.float32), path, _dicom_window(ds))
    if suffix in (".nii", ".nii.gz"):
        nib = _require("nibabel")
        try:
            img = nib.load(path)
            data = np.asanyarray(img.dataobj) if mask else img.get_fdata(dtype=np.float32)
        except Exception as err:  # nibabel: ImageFileError, EOFError, zlib errors...
            raise PSPNetError(f"{path}: not a NIfTI image nibabel can read ({err})") from err
        data = np.squeeze(data)
        if data.ndim not in (2, 3):
            raise PSPNetError(f"{path}: a {data.ndim}-D image; expected a 2-D slice or a 3-D volume "
                              "(split 4-D series into volumes first)")
        if mask:
            if np.issubdtype(data.dtype, np.floating):
                if not np.allclose(data, np.round(data)):
                    raise PSPNetError(f"{path}: mask holds non-integer values; expected class labels")
                data = np.round(data)
            data = data.astype(np.int64)
        return Volume(data, path, None, img)
    raise PSPNetError(f"{path}: not a DICOM (.dcm) or NIfTI (.nii, .nii.gz) file")


@functools.lru_cache(maxsize=4)
def _cached_volume(path: str, mtime_ns: int, mask: bool) -> Volume:
    return read_volume(path, mask)


def load_volume(path: str | Path, mask: bool = False) -> Volume:
    """``read_volume`` with the last few volumes kept, so the slices of one scan read it once."""
    path = Path(path)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as err:
        raise PSPNetError(f"{path}: cannot read the file ({err})") from err
    return _cached_volume(str(path), mtime, mask)


def num_slices(path: str | Path, axis: int = 2) -> int:
    """Slices of a file along ``axis`` from its header only (1 for a 2-D image)."""
    path = Path(path)
    suffix = medical_suffix(path)
    try:
        if suffix == ".dcm":
            ds = _require("pydicom").dcmread(path, stop_before_pixels=True)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            shape = [frames, int(ds.Rows), int(ds.Columns)] if frames > 1 else [1]
        elif suffix:
            shape = [n for n in _require("nibabel").load(path).shape if n != 1]
        else:
            shape = [1]
    except PSPNetError:
        raise
    except Exception as err:
        raise PSPNetError(f"{path}: cannot read the header ({err})") from err
    if len(shape) < 3:
        return 1
    if not -3 <= axis < 3:
        raise PSPNetError(f"axis must be 0, 1 or 2, got {axis}")
    return shape[axis]


def parse_window(spec: str | Sequence[float] | None) -> dict[str, Any]:
    """``"40,400"``/``[40, 400]`` -> centre and width; ``"p1,p99"`` -> percentiles; ``"minmax"`` -> full
    range; None -> the DICOM file's window, else the full range."""
    if spec is None or spec == "auto":
        return {}
    if spec == "minmax":
        return {"percentiles": (0.0, 100.0)}
    parts = [str(p).strip() for p in (spec.split(",") if isinstance(spec, str) else spec)]
    try:
        if len(parts) == 2 and all(p.lower().startswith("p") for p in parts):
            lo, hi = (float(p[1:]) for p in parts)
            if not 0 <= lo < hi <= 100:
                raise ValueError
            return {"percentiles": (lo, hi)}
        if len(parts) == 2:
            centre, width = (float(p) for p in parts)
            if width <= 0:
                raise ValueError
            return {"center": centre, "width": width}
    except ValueError:
        pass
    raise PSPNetError(f"window must be 'CENTER,WIDTH' (e.g. 40,400), percentiles 'pLOW,pHIGH' (e.g. p1,p99) "
                      f"or 'minmax', got {spec!r}")


def window_range(volume: Volume, spec: str | Sequence[float] | None = None) -> tuple[float, float]:
    """The intensity range (low, high) that maps to 0..255 for this volume."""
    w = parse_window(spec)
    if "center" in w:
        return w["center"] - w["width"] / 2, w["center"] + w["width"] / 2
    if not w and volume.window is not None:
        c, width = volume.window
        return c - width / 2, c + width / 2
    lo, hi = np.percentile(volume.data, w.get("percentiles", (0.0, 100.0)))
    return float(lo), float(hi)


def apply_window(data: np.ndarray, low: float, high: float) -> np.ndarray:
    """Intensities -> uint8, ``low`` -> 0 and ``high`` -> 255, in float so 16/32-bit values never wrap."""
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip((data.astype(np.float64) - low) * scale, 0, 255).round().astype(np.uint8)


def to_uint8(path: str | Path, axis: int = 2, window: str | Sequence[float] | None = None) -> list[np.ndarray]:
    """Every slice of a DICOM/NIfTI file as 8-bit grayscale, windowed once for the whole volume."""
    vol = load_volume(path)
    low, high = window_range(vol, window)
    return [apply_window(vol.slice(axis, k), low, high) for k in range(vol.num_slices(axis))]


def segment_volume(segment: Callable[[np.ndarray], np.ndarray], path: str | Path, axis: int = 2,
                   window: str | Sequence[float] | None = None) -> np.ndarray:
    """Labels for a whole scan: ``segment`` maps one (H, W, 3) uint8 slice to (H, W) class ids; the slices are
    stacked along ``axis`` so the result has the scan's own shape (ready for ``write_nifti_mask``)."""
    slices = [segment(np.repeat(s[..., None], 3, -1)) for s in to_uint8(path, axis, window)]
    vol = load_volume(path)
    return np.stack(slices, axis=axis) if vol.data.ndim == 3 else slices[0]


def _fresh(out: Path, overwrite: bool) -> Path:
    if out.exists() and not overwrite:
        raise PSPNetError(f"{out}: already exists; not overwriting it (choose another name)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def write_nifti_mask(labels: np.ndarray, reference: str | Path, out: str | Path,
                     mask_values: Sequence[int] | None = None, overwrite: bool = False) -> Path:
    """Write class ids (``mask_values[i]`` for class i if given) as a NIfTI with ``reference``'s affine and
    header, so the mask overlays the scan; intensity scaling of the header is reset (labels stay exact)."""
    nib = _require("nibabel")
    ref = load_volume(reference).nifti
    if ref is None:
        raise PSPNetError(f"{reference}: a NIfTI reference is needed for the affine; write PNG slices for DICOM")
    data = to_stored_values(labels, mask_values)
    shape = tuple(ref.shape)
    if data.shape != shape:
        if data.size != int(np.prod(shape)):
            raise PSPNetError(f"labels of shape {data.shape} do not fit {reference} of shape {shape}")
        data = data.reshape(shape)  # the reference had singleton axes that reading squeezed
    lo, hi = int(data.min(initial=0)), int(data.max(initial=0))
    dtype = np.uint8 if lo >= 0 and hi < 256 else np.uint16 if lo >= 0 and hi < 65536 else np.int32
    header = ref.header.copy()
    header.set_data_dtype(dtype)
    img = nib.Nifti1Image(data.astype(dtype), ref.affine, header)
    img.header.set_slope_inter(1, 0)
    out = _fresh(Path(out), overwrite)
    nib.save(img, out)
    return out


def write_png_slices(labels: np.ndarray, out_dir: str | Path, name: str, axis: int = 2,
                     mask_values: Sequence[int] | None = None, overwrite: bool = False) -> list[Path]:
    """One PNG per slice along ``axis``, ``{name}_{index:04d}.png`` (8-bit, or 16-bit for values > 255)."""
    from PIL import Image

    data = to_stored_values(labels, mask_values)
    slices = [data] if data.ndim == 2 else [np.take(data, k, axis=axis) for k in range(data.shape[axis])]
    files = []
    for k, s in enumerate(slices):
        path = _fresh(Path(out_dir) / f"{name}_{k:04d}.png", overwrite)
        Image.fromarray(s.astype(np.uint8 if s.max(initial=0) < 256 else np.uint16)).save(path)
        files.append(path)
    return files


# ---- dataset ------------------------------------------------------------------------------------------------------

def _read_mask_any(path: Path) -> np.ndarray:
    return load_volume(path, mask=True).data if medical_suffix(path) else read_mask(path)


def _volume_histogram(pairs: list, workers: int = 4) -> Histogram:
    """Voxels per mask value over whole mask volumes (PNG masks of 2-D DICOM images too)."""
    total: dict[int, int] = {}
    where: dict[int, list[str]] = {}
    for _, mask in pairs:
        try:
            raw = _read_mask_any(Path(mask))
        except PSPNetError:
            continue  # named by check-data and by __getitem__
        if raw.ndim == 3 and raw.shape[-1] == 3 and not medical_suffix(mask):
            return {}, True, {}
        values, counts = np.unique(raw, return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            total[v] = total.get(v, 0) + c
            if len(where.setdefault(v, [])) < WHERE_KEEP:
                where[v].append(str(mask))
    return dict(sorted(total.items())), False, where


class MedicalDataset(SegmentationDataset):
    """Slices of DICOM/NIfTI scans (or 2-D DICOM files) with NIfTI, DICOM or PNG masks.

    ``pairs`` are whole files; item ``i`` is one slice, ``slices[i] = (file index, slice index)``. Images
    are windowed per volume to 8 bit and repeated to 3 channels; masks go through the label table.
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path]], *args: Any, axis: int = 2,
                 window: str | Sequence[float] | None = None, **kwargs: Any):
        super().__init__(pairs, *args, **kwargs)
        parse_window(window)  # a bad window is an error now, not at the first batch
        self.axis, self.window = axis, window
        self.files = list(self.pairs)
        self.slices: list[tuple[int, int]] = []
        self.counts: list[int] = []  # slices of each file
        for f, (image, _) in enumerate(self.files):
            try:
                count = num_slices(image, axis) if medical_suffix(image) else 1
            except PSPNetError as err:
                report("unreadable", image, str(err).removeprefix(f"{image}: "))
                count = 0
            self.counts.append(count)
            self.slices += [(f, k) for k in range(count)]
        self.pairs = [self.files[f] for f, _ in self.slices]  # what check-data names, one entry per slice

    def __len__(self) -> int:
        return len(self.slices)

    def image_slice(self, index: int) -> np.ndarray:
        """Slice ``index`` as (H, W) uint8 after windowing."""
        f, k = self.slices[index]
        path = self.files[f][0]
        if not medical_suffix(path):
            return np.asarray(open_image(path).convert("L"))
        vol = load_volume(path)
        low, high = _cached_range(str(path), path.stat().st_mtime_ns, str(self.window))
        return apply_window(vol.slice(self.axis, k), low, high)

    def read_raw_mask(self, index: int) -> np.ndarray:
        f, k = self.slices[index]
        path = Path(self.files[f][1])
        if not medical_suffix(path):
            return read_mask(path)
        vol = load_volume(path, mask=True)
        if vol.num_slices(self.axis) != self.counts[f]:
            raise PSPNetError(f"{path}: mask has {vol.num_slices(self.axis)} slices along axis {self.axis} but its "
                              f"image {Path(self.files[f][0]).name} has {self.counts[f]}")
        return vol.slice(self.axis, k)

    def image_size(self, index: int) -> tuple[int, int]:
        h, w = self.image_slice(index).shape
        return w, h

    def load_mask(self, index: int) -> np.ndarray:
        return self.mask_to_ids(self.read_raw_mask(index), self.pairs[index][1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.image_slice(index)
        mask = self.load_mask(index)
        if mask.shape != image.shape:
            raise PSPNetError(f"{self.pairs[index][1]}: mask slice is {mask.shape[1]}x{mask.shape[0]} but the "
                              f"image slice is {image.shape[1]}x{image.shape[0]}")
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image))[None].expand(3, -1, -1).clone())
        msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask))[None])
        if self.transform is not None:
            img, msk = self.transform(img, msk)
        return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor)[0].long()


@functools.lru_cache(maxsize=64)
def _cached_range(path: str, mtime_ns: int, window: str) -> tuple[float, float]:
    return window_range(load_volume(path), None if window == "None" else window)


def _medical_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        report("layout", folder, "folder does not exist")
        return {}
    files = sorted(p for p in folder.rglob("*") if p.is_file() and (medical_suffix(p) or p.suffix.lower()
                                                                    in IMAGE_SUFFIXES))
    return {str(p.parent.relative_to(folder) / stem(p)): p for p in files}


def _medical_pairs(root: Path, split: str, opts: dict[str, Any]) -> list[tuple[Path, Path]]:
    img, msk, suffix = opts.get("image_dir", "images"), opts.get("mask_dir", "masks"), opts.get("mask_suffix", "")
    for image_dir, mask_dir in ((root / img / split, root / msk / split), (root / split / img, root / split / msk)):
        if image_dir.is_dir():
            break
    else:
        if split != "all":
            raise PSPNetError(f"{root}: no split {split!r}: expected {img}/{split}/ + {msk}/{split}/ or "
                              f"{split}/{img}/ + {split}/{msk}/ (use split 'all' for a flat folder)")
        image_dir, mask_dir = root / img, root / msk
    images = _medical_files(image_dir)
    masks = {k[: -len(suffix)] if suffix and k.endswith(suffix) else k: p for k, p in _medical_files(mask_dir).items()}
    if image_dir.is_dir() and not images:
        report("empty", image_dir, "folder has no .dcm, .nii, .nii.gz or image files")
        return []
    return match_pairs(images, masks, image_dir.parent)


def medical_folder(root: str | Path, split: str = "train", transform: Callable | None = None,
            **options: Any) -> MedicalDataset:
    """A folder of DICOM/NIfTI scans (and/or plain images) with masks of the same stem, cut into slices.

    Same layouts and class options as ``folder`` (classes detected from the mask values when none are
    given), plus ``axis`` (slicing axis of the stored array, default 2) and ``window`` (see ``parse_window``).
    """
    root = Path(root)
    extra = {k: options.pop(k) for k in list(options) if k in MEDICAL_OPTIONS}
    opts = load_options(root, options, extra=MEDICAL_OPTIONS)
    extra = {**{k: opts.pop(k) for k in list(opts) if k in MEDICAL_OPTIONS}, **extra}
    pairs = _medical_pairs(root, split, opts)
    train = None if split == "train" else _quiet_pairs(lambda: _medical_pairs(root, "train", opts))
    make = functools.partial(MedicalDataset, axis=int(extra.get("axis", 2)), window=extra.get("window"))
    return _dataset(pairs, root, opts, transform, train, histogram=_volume_histogram, make=make)
