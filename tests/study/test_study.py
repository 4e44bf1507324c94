"""`mimjax study`: its config checks, the order, skipping and failure isolation of its
stages (with stand-in stages), the evaluation pieces, and end to end on a generated IDX set
(slow): 2 arms x 2 seeds, a rerun that skips everything, and a kill -9 that resumes."""
import json
import os
import signal
import sys
import time

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from idxdata import write_idx_dir  # noqa: E402

from mimjax.configs import study as recipe  # noqa: E402
from mimjax.schema import ConfigError  # noqa: E402
from mimjax.study import evaluate, run  # noqa: E402


@pytest.fixture
def idx(tmp_path):
    return write_idx_dir(tmp_path / "idx", n_train=64, n_test=24)


def small(idx_dir, **top):
    c = recipe.get_config("fashion_mnist,runlocal")
    c.data.source = f"idx:{idx_dir}"
    for k, v in top.items():
        c[k] = v
    return c


@pytest.mark.parametrize("key, value, expected", [
    ("arms", "mae,byol", "expected a comma-separated list"),
    ("arms", "gpa_teacher,mae", "list mae before it"),
    ("arms", "gpa_feature", "list mae before it"),
    ("seeds", "0,0", "distinct non-negative integers"),
    ("seeds", "a", "distinct non-negative integers"),
])
def test_bad_study_keys_are_one_line(idx, key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        run.validate(small(idx, **{key: value}))


def test_bad_evaluation_settings_and_data_are_one_line(idx, tmp_path):
    c = small(idx)
    for t in (0.0, float("nan"), 1e-30):
        c.knn.temperature = t
        with pytest.raises(ConfigError, match="a finite temperature >"):
            run.validate(c)
    c = small(idx)
    c.finetune.batch_size = 0
    with pytest.raises(ConfigError, match="config.finetune.batch_size=0"):
        run.validate(c)
    c = small(idx)
    c.data.source = f"idx:{tmp_path}/none"
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        run.validate(c)


def test_arm_configs(idx):
    c = small(idx)
    mae, gpa, feat, ema = (run.pretrain_config(c, a, 1, "/S") for a in ("mae", "gpa_teacher", "gpa_feature", "gpa_ema"))
    assert mae.masking.strategy == "random" and mae.teacher.source == "none" and mae.seed == 1
    assert gpa.masking.strategy == "gpa" and gpa.teacher.path == "/S/mae/seed_1" and not gpa.model.gpa_head
    assert tuple(gpa.masking.hard) == (0.0, 0.5) and tuple(gpa.masking.soft) == (0.3, 0.0)
    assert feat.model.gpa_head and feat.model.gpa_head_late_start and tuple(feat.masking.soft) == (0.3, 0.3)
    assert ema.teacher.source == "ema" and not ema.teacher.path
    assert run.pretrain_config(c, "random", 0, "/S") is None
    assert run.pretrain_config(c, "attmask", 0, "/S").masking.strategy == "high"


def test_stages_skip_when_done_and_a_failed_arm_keeps_the_others(idx, tmp_path, monkeypatch):
    calls = []

    def fake(stage):
        def runner(c, arm, seed, out, path, res):
            calls.append((arm, seed, stage))
            if arm == "gpa_ema" and seed == 1:
                raise RuntimeError("boom\nsecond line")
            if stage == "pretrain":
                res["pretrain"] = {"wall_s": 1.0, "steps": 6}
            elif stage == "probe":
                for m in ("linprobe", "linprobe_avg", "knn", "knn_avg"):
                    res[m] = {"top1": 50.0 + seed + (arm != "mae")}
            elif stage == "finetune":
                res["finetune"] = {"top1": 60.0 + seed}
            else:
                res["premise"] = {"auc": 0.7, "hard_foreground_share": 0.5, "foreground_share": 0.3}
        return runner

    monkeypatch.setattr(run, "STAGE_RUNNERS", {s: fake(s) for s in run.Progress.STAGES})
    c = small(idx, arms="mae,gpa_ema", seeds="0,1")
    doc = run.study(c, str(tmp_path / "S"))
    assert doc["failed"] == {"mae": {}, "gpa_ema": {"1": "RuntimeError: boom"}}
    assert doc["summary"]["mae"]["finetune"]["n"] == 2 and doc["summary"]["gpa_ema"]["linprobe"]["n"] == 1
    assert doc["differences"]["gpa_ema"]["linprobe"]["mean"] == pytest.approx(1.0)
    assert doc["differences"]["gpa_ema"]["linprobe"]["ci"] is None  # one pair: no interval
    assert len(calls) == 4 + 4 + 4 + 1  # mae 0, gpa_ema 0, mae 1: every stage; gpa_ema 1: failed in pretrain
    md = open(tmp_path / "S" / "study.md").read()
    assert "Failed: gpa_ema seed 1: RuntimeError: boom" in md and os.path.getsize(tmp_path / "S" / "study.png") > 0
    calls.clear()
    run.study(c, str(tmp_path / "S"))  # again: only the failed arm x seed runs
    assert calls == [("gpa_ema", 1, "pretrain")]
    c.knn.k = 3  # a changed evaluation setting reruns the stage that depends on it
    calls.clear()
    run.study(c, str(tmp_path / "S"))
    assert [x for x in calls if x[2] == "probe"] == [("mae", 0, "probe"), ("gpa_ema", 0, "probe"), ("mae", 1, "probe")]


def test_foreground_patches_by_hand():
    img = np.zeros((1, 8, 8, 3), np.uint8)
    img[0, :4, 4:] = 200  # the top-right patch of 4 x 4
    img[0, 4:, :4] = 20  # bottom-left: dim, under the threshold
    assert evaluate.foreground(img, 4, 25.0).tolist() == [[False, True, False, False]]


def test_pooled_features_are_the_encoders(idx):
    from mimjax.models import init_model, model_from_config
    from mimjax.train import config as config_lib

    p = config_lib.fill_missing(small(idx).pretrain)
    model = model_from_config(p.model)
    params = init_model(model, jax.random.key(0))["encoder"]
    x = jax.random.normal(jax.random.key(1), (3, 28, 28, 3))
    both = evaluate.pooled(model.encoder, params, x)
    for pool in ("token", "avg"):
        want = model.encoder.apply({"params": params}, x, pool=pool, method="features")
        np.testing.assert_allclose(both[pool], want, rtol=1e-5, atol=1e-6)


def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    y = rng.integers(0, 4, 800).astype(np.int32)
    x = (centres[y] + rng.normal(size=(800, 16))).astype(np.float32)
    pc = evaluate.probe_config(epochs=20, batch_size=100, warmup_epochs=2)
    r = evaluate.linear_probe(x[:600], y[:600], x[600:], y[600:], pc)
    assert r["top1"] > 95 and r["num_test"] == 200
    # MAE's LARS at this batch barely moves the kernel from its init (why the study uses SGD)
    lars = evaluate.linear_probe(x[:600], y[:600], x[600:], y[600:], evaluate.probe_config(
        epochs=20, batch_size=100, warmup_epochs=2, optimizer="lars"))
    assert lars["top1"] < 60
    assert evaluate.knn(x[:600], y[:600], x[600:], y[600:], k=5)["top1"] > 95


def _log_stages(stderr: str) -> list:
    return [line.split("study: ", 1)[1].split(";")[0] for line in stderr.splitlines() if "study: [" in line]


@pytest.mark.slow
def test_study_end_to_end_rerun_and_kill_9(idx, tmp_path):
    from scaffold import run_cli_process, start_cli_process

    out = tmp_path / "S"
    args = ("study", "--config", "study:fashion_mnist,runlocal", "--out", out, f"--config.data.source=idx:{idx}",
            "--config.arms=mae,gpa_teacher", "--config.seeds=0,1")
    r = run_cli_process(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.load(open(out / "study.json"))
    for arm in ("mae", "gpa_teacher"):
        for seed in ("0", "1"):
            res = doc["runs"][arm][seed]
            for m in ("linprobe", "linprobe_avg", "finetune", "knn", "knn_avg"):
                assert 0 <= res[m]["top1"] <= 100
            assert res["pretrain"]["steps"] == 6 and res["finetune"]["num_test"] == 24
    assert doc["runs"]["mae"]["0"]["premise"]["auc"] is not None
    assert doc["differences"]["gpa_teacher"]["finetune"]["n"] == 2
    assert doc["machine"]["cores"] and "study.md" in r.stdout
    before = os.path.getmtime(out / "mae" / "seed_1" / run.RESULT)
    again = run_cli_process(*args)  # everything done: nothing runs again
    assert again.returncode == 0 and not _log_stages(again.stderr), _log_stages(again.stderr)
    assert os.path.getmtime(out / "mae" / "seed_1" / run.RESULT) == before
    # kill -9 in the middle of a pre-training, then the same command finishes the study
    out2 = tmp_path / "S2"
    args2 = (*args[:4], out2, f"--config.data.source=idx:{idx}", "--config.arms=mae,random", "--config.seeds=0",
             "--config.pretrain.total_steps=60", "--config.pretrain.checkpoint_every=20")
    p = start_cli_process(*args2)
    metrics = out2 / "mae" / "seed_0" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 12):
        time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out2 / "study.json").exists()
    r = run_cli_process(*args2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mae seed 0: pretrain" in _log_stages(r.stderr)[0]
    assert "resum" in r.stderr.lower()
    doc = json.load(open(out2 / "study.json"))
    assert doc["runs"]["mae"]["0"]["pretrain"]["steps"] == 60 and doc["summary"]["random"]["finetune"]["n"] == 1
