import io
import json
import os
import re

import flax.linen as nn
import numpy as np
import pytest

from mimjax.eval import knn as evaluate


def test_knn_on_separable_clusters_is_perfect():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 32)) * 5
    y_tr, y_te = rng.integers(0, 8, 500), rng.integers(0, 8, 100)
    x_tr = centers[y_tr] + rng.normal(size=(500, 32)) * 0.5
    x_te = centers[y_te] + rng.normal(size=(100, 32)) * 0.5
    res = evaluate.knn_accuracy(x_tr.astype(np.float32), y_tr, x_te.astype(np.float32), y_te, batch=32)
    assert res["top1"] == 100.0 and res["top5"] == 100.0 and res["num_test"] == 100


def test_top5_is_reported_only_with_more_than_5_classes_and_counts_as_numpy_does():
    rng = np.random.default_rng(2)
    for num_classes in (2, 5, 6, 10):
        x_tr, y_tr = rng.normal(size=(60, 8)).astype(np.float32), np.arange(60) % num_classes
        x_te, y_te = rng.normal(size=(40, 8)).astype(np.float32), np.arange(40) % num_classes
        res = evaluate.knn_accuracy(x_tr, y_tr, x_te, y_te, k=10, batch=16)
        scores = np.asarray(evaluate.knn_scores(x_tr, y_tr, x_te, k=10, temperature=0.07, num_classes=num_classes))
        ranked = np.argsort(-scores, axis=1)
        assert res["top1"] == pytest.approx(100.0 * np.mean(ranked[:, 0] == y_te))
        if num_classes > 5:
            assert res["top5"] == pytest.approx(100.0 * np.mean((ranked[:, :5] == y_te[:, None]).any(axis=1)))
        else:  # every image would be a top-5 hit
            assert "top5" not in res


def test_knn_weighting_matches_numpy():
    rng = np.random.default_rng(1)
    x_tr, y_tr = rng.normal(size=(30, 4)).astype(np.float32), rng.integers(0, 3, 30)
    x_te = rng.normal(size=(5, 4)).astype(np.float32)
    got = np.asarray(evaluate.knn_scores(x_tr, y_tr, x_te, k=7, temperature=0.1, num_classes=3))
    a = x_tr / np.linalg.norm(x_tr, axis=1, keepdims=True)
    b = x_te / np.linalg.norm(x_te, axis=1, keepdims=True)
    sim = b @ a.T
    want = np.zeros((5, 3))
    for t in range(5):
        for j in np.argsort(-sim[t])[:7]:
            want[t, y_tr[j]] += np.exp(sim[t, j] / 0.1)
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.slow
def test_eval_knn_cli_on_a_trained_workdir(trained_run, run_cli):
    out = run_cli("eval", "knn", "--workdir", trained_run, "--dataset", "embedded_faces", "--k", "5")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["num_test"] == 50 and res["num_train"] == 150 and 0 <= res["top1"] <= 100
    assert res["top1"] > 50  # faces vs non-faces: even barely trained features beat chance
    assert json.load(open(os.path.join(trained_run, "knn.json")))["top1"] == res["top1"]
    out = run_cli("eval", "knn", "--workdir", trained_run, "--dataset", "embedded_faces", "--k", "5", "--random_init")
    assert out.returncode == 0, out.stderr[-2000:]
    baseline = json.loads(out.stdout.strip().splitlines()[-1])
    assert baseline["random_init"] and json.load(open(os.path.join(trained_run, "knn_random_init.json"))) == baseline
    assert json.load(open(os.path.join(trained_run, "knn.json")))["top1"] == res["top1"]  # the trained result is kept


PROGRESS = re.compile(r"^k-NN (train|test) features (\d+)/(\d+) +(\d+)%  (\d+\.\d) img/s(  ETA \d+:\d\d:\d\d)?$")


def progress_lines(text: str) -> list[tuple]:
    """(what, done, total, percent) of each progress line; every line must be one."""
    out = []
    for line in text.splitlines():
        m = PROGRESS.match(line)
        assert m, line
        out.append((m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))))
    return out


def test_feature_progress_prints_counts_rate_and_eta_at_most_every_interval():
    buf = io.StringIO()
    p = evaluate.FeatureProgress("train features", 10, every_s=0.0, stream=buf)
    for n in (4, 4, 4):  # the last batch is counted up to the total
        p.update(n)
    lines = buf.getvalue().splitlines()
    assert progress_lines(buf.getvalue()) == [("train", 4, 10, 40), ("train", 8, 10, 80), ("train", 10, 10, 100)]
    assert "ETA" not in lines[0] and "ETA" in lines[1]  # the rate is known from the second line on
    quiet = io.StringIO()
    p = evaluate.FeatureProgress("test features", 10, every_s=3600.0, stream=quiet)
    for _ in range(5):
        p.update(2)
    assert quiet.getvalue() == ""  # shorter than the interval: nothing, not even the 100% line


class MeanColour(nn.Module):
    """A parameter-free 'encoder': the mean colour of each image."""

    def features(self, x, pool="token"):
        return x.mean(axis=(1, 2))  # [B, H, W, 3] -> [B, 3]


def test_eval_knn_features_report_progress(capsys):
    images = np.random.default_rng(0).normal(size=(10, 4, 4, 3)).astype(np.float32)
    batches = [{"image": images[i:i + 4], "label": np.arange(i, min(i + 4, 10))} for i in range(0, 10, 4)]
    feats, labels = evaluate.extract_features(MeanColour(), {}, iter(batches),
                                              progress=evaluate.FeatureProgress("train features", 10, every_s=0.0))
    np.testing.assert_allclose(feats, images.mean(axis=(1, 2)), atol=1e-6)
    assert progress_lines(capsys.readouterr().err) == [("train", 4, 10, 40), ("train", 8, 10, 80),
                                                       ("train", 10, 10, 100)]


def test_knn_during_training_reports_progress(capsys):
    """KnnEval (eval.every) on 24 train / 12 test faces in batches of 16, with MeanColour as encoder."""
    from types import SimpleNamespace

    from mimjax import parallel
    from mimjax.train import config as config_lib, knn_eval

    ecfg = config_lib.base_config().eval
    ecfg.update(dict(dataset="embedded_faces", num_train=24, num_test=12, batch_size=16, k=5))
    par = parallel.make(config_lib.base_config().parallelism, {})
    ev = knn_eval.KnnEval(ecfg, encoder=MeanColour(), par=par, img_size=8, progress_every_s=0.0)
    capsys.readouterr()
    assert 0 <= ev(0, SimpleNamespace(params={"encoder": {}}))["knn_top1"] <= 1
    assert progress_lines(capsys.readouterr().err) == [("train", 16, 24, 67), ("train", 24, 24, 100),
                                                       ("test", 12, 12, 100)]
