import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "camvid"


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    if not (CAMVID / "val").is_dir():
        pytest.skip(f"real CamVid data not found at {CAMVID} (only on machines with ../shared)")
    return CAMVID
