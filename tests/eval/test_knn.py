import json
import os

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
