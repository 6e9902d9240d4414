"""Knowledge distillation: the loss, the frozen teachers, and training runs that learn from them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pspnet import create_model
from pspnet.cli import main
from pspnet.engine.checkpoint import load_checkpoint
from pspnet.engine.config import TrainConfig
from pspnet.engine.distill import Teachers, distill_loss
from pspnet.engine.train import train
from pspnet.errors import PSPNetError
from pspnet.model.pspnet import PSPNet
from pspnet.model.serialization import save_safetensors
from test_train_runs import cli_args
from test_engine import TINY, assert_same_state, data, tiny_config  # noqa: F401  (data is a fixture)


def test_the_loss_is_hintons_kl_on_labelled_pixels_only():
    torch.manual_seed(0)
    student, teacher_logits = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    masks = torch.randint(0, 4, (2, 5, 6))
    masks[0, :2] = 255
    t = 2.0
    teacher = F.softmax(teacher_logits / t, 1)
    got = distill_loss(student, teacher, masks, temperature=t)
    per_pixel = F.kl_div(F.log_softmax(student / t, 1), teacher, reduction="none").sum(1)
    assert torch.allclose(got, per_pixel[masks != 255].mean() * t * t, atol=1e-6)
    assert distill_loss(teacher_logits, F.softmax(teacher_logits, 1), masks) < 1e-6  # the teacher's own answer
    # ignored pixels do not count, however far apart student and teacher are there
    far = student.clone()
    far[0, :, :2] = 50 * torch.randn(4, 2, 6)
    assert torch.allclose(distill_loss(far, teacher, masks, t), got)
    nothing = student.clone().requires_grad_()
    empty = distill_loss(nothing, teacher, torch.full_like(masks, 255), t)
    empty.backward()
    assert empty.item() == 0 and torch.count_nonzero(nothing.grad) == 0


@pytest.fixture(scope="module")
def teacher_file(data, tmp_path_factory):  # noqa: F811
    """A tiny model trained 6 iterations on the test data, saved as a weights file."""
    out = tmp_path_factory.mktemp("teacher")
    train(tiny_config(data, out, seed=7), progress=False)
    return out / "last.safetensors"


def test_teachers_stay_frozen_and_refuse_other_classes_naming_the_file(data, teacher_file, tmp_path):  # noqa: F811
    student = PSPNet.from_pretrained(teacher_file)
    teachers = Teachers([str(teacher_file), str(teacher_file)], student, temperature=1.0)
    teachers.train()
    assert not any(m.training for m in teachers.modules())
    assert not any(p.requires_grad for p in teachers.parameters())
    x = torch.randn(2, 3, 32, 32)
    probs = teachers(x, "fp32")
    assert torch.allclose(probs.sum(1), torch.ones(2, 32, 32), atol=1e-5)
    assert torch.allclose(probs, F.softmax(student.eval()(x), 1), atol=1e-5)  # two copies average to one

    enlarged = Teachers([str(teacher_file)], student, temperature=2.0, scales=[2.0])(x, "fp32")
    by_hand = F.softmax(student(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)) / 2.0, 1)
    assert enlarged.shape == probs.shape
    assert torch.allclose(enlarged, F.interpolate(by_hand, (32, 32), mode="bilinear", align_corners=True), atol=1e-5)

    # a teacher saved with its own reading (the bundled file's eval_scale) still reads crops at ``scales`` only
    reads_enlarged = PSPNet.from_pretrained(teacher_file, eval_scale=1.5)
    save_safetensors(reads_enlarged, tmp_path / "enlarged.safetensors")
    assert PSPNet.from_pretrained(tmp_path / "enlarged.safetensors").eval_scale == 1.5
    assert torch.allclose(Teachers([str(tmp_path / "enlarged.safetensors")], student, temperature=1.0)(x, "fp32"),
                          probs, atol=1e-5)

    other = create_model("pspnet_test_efficientnet", num_classes=5, pretrained_backbone=False, **TINY)
    save_safetensors(other, tmp_path / "five.safetensors")
    with pytest.raises(PSPNetError, match=r"five\.safetensors: this teacher's class count is 5.*has 3"):
        Teachers([str(tmp_path / "five.safetensors")], student)


def test_a_distilled_run_learns_from_the_teacher_and_resumes_bit_identically(data, teacher_file, tmp_path):  # noqa: F811
    kd = dict(teachers=[str(teacher_file)], distill_weight=2.0, distill_temperature=2.0, distill_scales=[1.0, 1.5])
    whole = train(tiny_config(data, tmp_path / "whole", **kd), progress=False)
    cfg = tiny_config(data, tmp_path / "split", **kd)
    train(cfg, progress=False, stop_after=3)
    resumed = train(cfg, resume="auto", progress=False)
    assert_same_state(whole["model"].state_dict(), resumed["model"].state_dict())
    assert load_checkpoint(tmp_path / "split" / "last.pt")["train_config"]["teachers"] == [str(teacher_file)]

    plain = train(tiny_config(data, tmp_path / "plain"), progress=False)  # the same run without the teacher
    assert any(not torch.equal(a, b) for a, b in zip(plain["model"].state_dict().values(),
                                                     whole["model"].state_dict().values()))
    off = train(tiny_config(data, tmp_path / "off", teachers=[str(teacher_file)], distill_weight=0.0),
                progress=False)
    assert_same_state(plain["model"].state_dict(), off["model"].state_dict())


def test_distillation_options_are_checked_up_front(teacher_file):
    assert TrainConfig.from_dict({"teachers": str(teacher_file)}).teachers == [str(teacher_file)]
    for bad, match in (({"teachers": [""]}, "teachers"), ({"teachers": [3]}, "teachers"),
                       ({"distill_weight": -1}, "distill_weight"), ({"distill_temperature": 0}, "distill_temperature"),
                       ({"distill_scales": []}, "distill_scales"), ({"distill_scales": [8]}, "distill_scales")):
        with pytest.raises(PSPNetError, match=match):
            TrainConfig.from_dict(bad)


def test_pspnet_train_teachers_flag(data, teacher_file, tmp_path, caplog, capsys):  # noqa: F811
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="pspnet.train"):
        assert main(cli_args(data, out, "--teachers", str(teacher_file), str(teacher_file))) == 0
    assert load_checkpoint(out / "last.pt")["train_config"]["teachers"] == [str(teacher_file)] * 2
    assert "1 x distillation (temperature 1) from" in caplog.text
    missing = tmp_path / "missing.safetensors"
    assert main(cli_args(data, tmp_path / "bad", "--teachers", str(missing))) == 2
    assert f"{missing}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before the run folder is made


def test_teacher_ensembles_benchmark_scores_the_average_a_distilled_stage_learns_from(teacher_file):
    """benchmarks/teacher_ensembles.py labels by the teachers' averaged softmax, as ``Teachers`` targets it."""
    from test_camvid_recipes import load_script

    bench = load_script("benchmarks/teacher_ensembles.py")
    model = PSPNet.from_pretrained(teacher_file, aux=False).eval()
    other = PSPNet.from_pretrained(teacher_file, aux=False).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        averaged = bench.Averaged([model, other])(x)
        target = Teachers([str(teacher_file)], model, temperature=1.0)(x, "fp32")
        assert torch.allclose(bench.Averaged([model])(x).exp(), target, atol=1e-5)
        expected = (F.softmax(model(x), 1) + F.softmax(other(x), 1)) / 2
    assert torch.allclose(averaged.exp(), expected, atol=1e-5)
    assert bench.SPLIT == load_script("benchmarks/camvid_tail_split.py").SPLIT


def test_teacher_ensembles_benchmark_reads_a_run_folder_at_its_end(tmp_path, teacher_file):
    """A run's best.safetensors was picked by the held-out score the benchmark reports: its last is what it scores."""
    from test_camvid_recipes import load_script

    end_of_run = load_script("benchmarks/teacher_ensembles.py").end_of_run
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(teacher_file.read_bytes())
    with pytest.raises(SystemExit, match="without last.safetensors"):
        end_of_run(str(run))
    (run / "last.safetensors").write_bytes(teacher_file.read_bytes())
    assert end_of_run(str(run)) == run / "last.safetensors"
    assert end_of_run(str(teacher_file)) == teacher_file
