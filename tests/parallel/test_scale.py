"""Scale-out on CPU: 8 fake devices (jit meshes and pmap) and two real processes on
localhost (jax.distributed, gloo collectives) must train like one device."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mimjax.train import metrics
from scaffold import cli_env  # tests/scaffold.py

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Equal up to float32 reassociation of the reductions over differently split batches.
RTOL = 2e-5

SCRIPT = r"""
import json, sys
sys.path.insert(0, "tests")
import jax
from scaffold import make_tiny_config  # tests/scaffold.py (this runs outside pytest)
from mimjax import parallel
from mimjax.train import metrics
from mimjax.train import pretrain as train
from mimjax.models import init_model, model_from_config

def tiny(mode, data, fsdp):
    return make_tiny_config(gpa=True, total_steps=3, log_every=1, checkpoint_every=100,
                            parallelism=dict(mode=mode, data=data, fsdp=fsdp))

out = {}
for name in sys.argv[2:]:
    mode, data, fsdp = name.split("_")
    c = tiny(mode, int(data), int(fsdp))
    wd = sys.argv[1] + "/" + name
    train.train(c, wd)
    out[name] = {"loss": [r["loss"] for r in metrics.read_metrics(wd + "/metrics.jsonl")],
                 "gpa_loss": [r["gpa_loss"] for r in metrics.read_metrics(wd + "/metrics.jsonl")]}
    if mode == "jit":  # the shardings the rules give, on real arrays
        model = model_from_config(c.model)
        params = jax.eval_shape(lambda: init_model(model, jax.random.key(0)))
        par = parallel.make(c.parallelism, params)
        state = par.init_state(lambda: init_model(model, jax.random.key(0)))
        fc1 = state["encoder"]["blocks"]["block_0"]["mlp"]["fc1"]["kernel"]
        out[name]["fc1_spec"] = list(fc1.sharding.spec)
        out[name]["fc1_shard"] = list(fc1.addressable_shards[0].data.shape)
        out[name]["cls_spec"] = list(state["encoder"]["cls_token"].sharding.spec)
print("RESULT" + json.dumps(out))
"""


def run_script(tmp_path, devices, names):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), *names], capture_output=True,
                         text=True, env=cli_env(devices), cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("RESULT")[-1])


@pytest.mark.slow
def test_jit_meshes_and_pmap_match_one_device(tmp_path):
    single = run_script(tmp_path / "one", 1, ["jit_-1_1"])["jit_-1_1"]
    many = run_script(tmp_path / "eight", 8, ["jit_8_1", "jit_4_2", "pmap_-1_1"])
    for name, res in many.items():
        np.testing.assert_allclose(res["loss"], single["loss"], rtol=RTOL, err_msg=name)
        np.testing.assert_allclose(res["gpa_loss"], single["gpa_loss"], rtol=RTOL, err_msg=name)
    # fc1 kernel [64, 256]: FSDP over its largest dimension on the 4x2 mesh, replicated on 8x1.
    assert many["jit_4_2"]["fc1_spec"] == [None, "fsdp"]
    assert many["jit_4_2"]["fc1_shard"] == [64, 128]
    assert many["jit_8_1"]["fc1_spec"] in ([None, None], [])
    assert many["jit_4_2"]["cls_spec"] in ([None, None, None], [])  # too small to shard


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(workdir, steps, *extra):
    return ["train", "--config", "configs/gpa_mae.py:vit_tiny_patch16,runlocal", "--workdir", workdir,
            f"--config.total_steps={steps}", "--config.log_every=1", "--config.checkpoint_every=2", *extra]


def run_two_processes(start_cli, workdir, steps):
    port = free_port()
    procs = [start_cli(*train_args(workdir, steps, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                   f"--process_id={i}"), devices=2, stderr=subprocess.STDOUT) for i in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return logs


@pytest.mark.slow
def test_two_processes_on_localhost_match_one_process_and_resume(tmp_path, run_cli, start_cli):
    one = run_cli(*train_args(tmp_path / "one", 3), devices=1, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    want = [r["loss"] for r in metrics.read_metrics(str(tmp_path / "one" / "metrics.jsonl"))]

    logs = run_two_processes(start_cli, tmp_path / "two", 2)
    assert "process 1 of 2, 2 local device(s)" in logs[1]
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["2"]
    run_two_processes(start_cli, tmp_path / "two", 3)  # resumes from step 2 on both processes
    rows = metrics.read_metrics(str(tmp_path / "two" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    np.testing.assert_allclose([r["loss"] for r in rows], want, rtol=RTOL)
