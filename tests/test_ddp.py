"""Distributed training: two CPU processes under torchrun (gloo) end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

from pspnet.engine.train import EpochSampler
from test_engine import SUBPROCESS_ENV, TINY, make_folder_dataset

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    from pspnet.engine.train import TrainConfig, train

    torch.set_num_threads(1)
    result = train(TrainConfig.from_dict(json.loads(open(sys.argv[1]).read())), progress=False)
    torch.save(result["model"].state_dict(), os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
""")


def test_ranks_split_each_epoch_without_overlap():
    ranks = [EpochSampler(10, 2, seed=1, rank=r, world=2) for r in range(2)]
    firsts = [[i for _, (_, i) in zip(range(4), iter(s))] for s in ranks]
    assert ranks[0].iters_per_epoch == 2 and not set(firsts[0]) & set(firsts[1])


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    data = make_folder_dataset(tmp_path / "data", n_train=8, n_val=1)
    cfg = {"dataset": "folder", "data_root": str(data), "model": "pspnet_test_efficientnet", "model_kwargs": TINY,
           "pretrained_backbone": False, "out_dir": str(tmp_path / "run"), "crop_size": [32, 32], "batch_size": 2,
           "iterations": 3, "precision": "fp32", "device": "cpu", "workers": 0, "checkpoint_every": 2,
           "eval_every": 3, "log_every": 1, "tensorboard": False}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "worker.py").write_text(WORKER)
    env = {k: v for k, v in SUBPROCESS_ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "worker.py"), str(tmp_path / "cfg.json"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between ranks"
    # rank 0 alone wrote the run's files, and it did train
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir() if p.suffix in (".pt", ".safetensors")) == [
        "best.pt", "best.safetensors", "last.prev.pt", "last.pt", "last.safetensors"]
    history = json.loads((run / "history.json").read_text())
    assert [r["iteration"] for r in history if "loss" in r] == [1, 2, 3] and any("val_miou" in r for r in history)
    assert os.path.getsize(run / "last.pt") > 0
