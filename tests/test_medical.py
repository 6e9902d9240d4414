"""DICOM and NIfTI in (pydicom's bundled sample files, volumes built here), windowing, masks written back."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet.data import build_dataset
from pspnet.data.check import check_dataset
from pspnet.errors import PSPNetError

nib = pytest.importorskip("nibabel", reason="the medical extra (pip install 'pspnet[medical]') is not installed")
pydicom = pytest.importorskip("pydicom", reason="the medical extra (pip install 'pspnet[medical]') is not installed")

from pspnet.data.medical import (apply_window, load_volume, num_slices, parse_window, read_volume,  # noqa: E402
                                 segment_volume, stem, to_uint8, window_range, write_nifti_mask, write_png_slices)

AFFINE = np.array([[0.8, 0, 0, -50], [0, 0.8, 0, -60], [0, 0, 2.5, 10], [0, 0, 0, 1]])


def ct_file():
    path = pydicom.data.get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("pydicom's bundled CT_small.dcm is missing")
    return path


def write_volume(path, data, affine=AFFINE, scaled: bool = False):
    img = nib.Nifti1Image(data, affine)
    if scaled:  # as CT exports often are: int16 on disk, slope 2 intercept -1024
        img.header.set_slope_inter(2.0, -1024.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def test_dicom_in_hounsfield_units_with_its_own_window():
    ct = read_volume(ct_file())
    raw = pydicom.dcmread(ct_file()).pixel_array
    assert ct.data.dtype == np.float32 and ct.data.shape == (128, 128)
    assert ct.data.min() == raw.min() - 1024 and ct.data.max() == raw.max() - 1024  # slope 1, intercept -1024
    assert ct.window is None
    lo, hi = window_range(ct)  # no window in the file: the full range, nothing clipped
    assert (lo, hi) == (ct.data.min(), ct.data.max())
    img = to_uint8(ct_file())[0]
    assert img.min() == 0 and img.max() == 255
    soft = to_uint8(ct_file(), window="40,400")[0]
    assert ((ct.data <= -160) == (soft == 0)).all() and ((ct.data >= 240) == (soft == 255)).all()
    mr = pydicom.data.get_testdata_file("MR_small.dcm")
    if mr is not None:
        assert read_volume(mr).window == (600.0, 1600.0)
        assert window_range(load_volume(mr)) == (-200.0, 1400.0)


def test_windowing_is_float_so_16_bit_values_do_not_wrap():
    data = np.array([[0, 1000, 40000, 65535]], dtype=np.uint16)
    assert apply_window(data, 0, 65535).tolist() == [[0, 4, 156, 255]]
    assert apply_window(data, 500, 1500).tolist() == [[0, 128, 255, 255]]
    assert parse_window("p1,p99") == {"percentiles": (1.0, 99.0)} and parse_window([40, 400]) == {"center": 40.0,
                                                                                                  "width": 400.0}
    for bad in ("40", "40,-1", "p5,p1", "soft"):
        with pytest.raises(PSPNetError, match="window must be"):
            parse_window(bad)


def test_nifti_volume_slices_and_mask_written_back_with_the_affine(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 3000, (20, 24, 6)).astype(np.int16)
    scan = write_volume(tmp_path / "ct.nii.gz", data, scaled=True)
    assert stem(scan) == "ct" and num_slices(scan, 2) == 6 and num_slices(scan, 0) == 20
    slices = to_uint8(scan, axis=2, window="p1,p99")
    assert len(slices) == 6 and slices[0].shape == (20, 24) and slices[0].dtype == np.uint8
    labels = segment_volume(lambda rgb: (rgb[..., 0] > 127).astype(np.uint8), scan, axis=2)
    assert labels.shape == (20, 24, 6)
    out = write_nifti_mask(labels, scan, tmp_path / "out" / "ct_mask.nii.gz", mask_values=[0, 255])
    back = nib.load(out)
    assert np.allclose(back.affine, AFFINE) and back.header.get_zooms() == nib.load(scan).header.get_zooms()
    stored = np.asarray(back.dataobj)
    assert back.get_data_dtype() == np.uint8 and set(np.unique(stored)) <= {0, 255}
    assert (stored == labels * 255).all()  # the scan's slope/intercept were not applied to the labels
    with pytest.raises(PSPNetError, match="already exists"):
        write_nifti_mask(labels, scan, out)
    pngs = write_png_slices(labels, tmp_path / "png", "ct", axis=2, mask_values=[0, 255])
    assert len(pngs) == 6 and (np.asarray(Image.open(pngs[3])) == labels[:, :, 3] * 255).all()


def make_medical_dataset(root, split, n_slices=4, value=255):
    x = np.mgrid[:16, :16][1]
    for k in range(2):
        vol = np.stack([(100 * np.sin(x / 3 + k + s) + 800).astype(np.int16) for s in range(n_slices)], -1)
        mask = np.stack([((x + s) % 5 == 0).astype(np.uint8) * value for s in range(n_slices)], -1)
        write_volume(root / split / "images" / f"case{k}.nii.gz", vol)
        write_volume(root / split / "masks" / f"case{k}.nii.gz", mask)


def test_medical_dataset_detects_binary_masks_and_cuts_slices(tmp_path):
    make_medical_dataset(tmp_path, "train")
    make_medical_dataset(tmp_path, "val", n_slices=3)
    ds = build_dataset("medical", tmp_path, "train", window="p1,p99")
    assert len(ds) == 8 and ds.num_classes == 2 and ds.mask_values == [0, 255]
    image, mask = ds[5]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and set(mask.unique().tolist()) == {0, 1}
    assert len(build_dataset("medical", tmp_path, "val", axis=0)) == 2 * 16
    report = check_dataset("medical", tmp_path, ["train", "val"], progress=False)
    assert report.ok, report.text()
    assert report.samples == {"train": 8, "val": 6}
    with pytest.raises(PSPNetError, match="unknown dataset options"):
        build_dataset("medical", tmp_path, "train", windw="40,400")


def test_medical_dataset_with_pngs_for_2d_dicom_and_a_mismatched_mask(tmp_path):
    import shutil

    (tmp_path / "train" / "images").mkdir(parents=True)
    shutil.copy(ct_file(), tmp_path / "train" / "images" / "slice1.dcm")
    (tmp_path / "train" / "masks").mkdir(parents=True)
    mask = (read_volume(ct_file()).data > 0).astype(np.uint8)
    Image.fromarray(mask).save(tmp_path / "train" / "masks" / "slice1.png")
    ds = build_dataset("medical", tmp_path, "train")
    assert len(ds) == 1 and ds.mask_values == [0, 1]
    assert (ds[0][1].numpy() == mask).all()
    Image.fromarray(mask[:64]).save(tmp_path / "train" / "masks" / "slice1.png")
    report = check_dataset("medical", tmp_path, ["train"], progress=False)
    assert [p.kind for p in report.problems] == ["size_mismatch"]


def test_core_modules_do_not_import_the_medical_libraries_and_name_the_extra(tmp_path):
    fake = tmp_path / "a.nii"
    fake.write_bytes(b"x")
    code = ("import sys, pspnet, pspnet.data, pspnet.data.medical, pspnet.engine.evaluate, pspnet.engine.losses; "
            "print(any(m in sys.modules for m in ('pydicom', 'nibabel'))); sys.modules['nibabel'] = None; "
            "pspnet.data.medical.read_volume(sys.argv[1])")
    out = subprocess.run([sys.executable, "-c", code, str(fake)], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "False"
    assert "reading DICOM/NIfTI needs nibabel: pip install 'pspnet[medical]'" in out.stderr


def test_multi_frame_dicom_is_a_volume_of_frames():
    path = pydicom.data.get_testdata_file("rtdose_expb.dcm")
    if path is None:
        pytest.skip("pydicom's bundled rtdose_expb.dcm is missing")
    vol = read_volume(path)
    assert vol.data.shape == (15, 10, 10) and num_slices(path, 0) == 15 and num_slices(path, 2) == 10
    frames = to_uint8(path, axis=0)
    assert len(frames) == 15 and frames[0].shape == (10, 10)
