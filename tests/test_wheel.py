"""The package as pip installs it: the wheel holds the recipes, runs a packaged recipe in a
fresh venv outside the clone, and declares every dependency the code imports."""
import ast
import configparser
import glob
import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Imported only inside a guard that says which extra to install (mimjax/interop.py, export).
OPTIONAL = {"torch": "torch", "wandb": "wandb"}


def third_party_imports() -> set[str]:
    """Top-level modules outside the standard library that mimjax/ imports anywhere."""
    mods = set()
    for path in (REPO / "mimjax").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "mimjax"}


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """(install_requires, {extra: requirements}) of setup.cfg, as normalised project names."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")

    def names(text):
        return {re.split(r"[\[<>=!~ ;]", line.strip())[0].lower().replace("_", "-")
                for line in text.strip().splitlines() if line.strip()}
    extras = {k: names(v) for k, v in cfg["options.extras_require"].items()}
    return names(cfg["options"]["install_requires"]), extras


def test_every_imported_package_is_declared():
    base, extras = declared()
    dists = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(third_party_imports()):
        projects = {d.lower().replace("_", "-") for d in dists.get(module, [])}
        if not projects and module in OPTIONAL:  # an extra this venv lacks: its project is named as the module
            projects = {module}
        assert projects, f"{module} is imported by mimjax/ but not installed here"
        where = extras.get(OPTIONAL[module], set()) if module in OPTIONAL else base
        if not projects & where:
            missing.append(f"{module} ({'/'.join(sorted(projects))}) not in "
                           f"{'extra ' + OPTIONAL[module] if module in OPTIONAL else 'install_requires'}")
    assert not missing, missing
    assert "gpu" in extras and "jax[cuda12]" in (REPO / "setup.cfg").read_text()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = glob.glob(str(out / "mimjax-*.whl"))
    return whl


def test_the_wheel_holds_the_package_and_its_recipes_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for recipe in ("demo", "mae", "gpa_mae", "simmim", "finetune", "linprobe"):
        assert f"mimjax/configs/{recipe}.py" in names, recipe
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"mimjax"}, tops


@pytest.mark.slow
def test_a_packaged_recipe_runs_from_a_fresh_venv_outside_the_clone(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    # The dependencies come from this environment's site-packages (offline, no second 2 GB
    # install): a path line in a .pth adds the folder, but its own .pth files (our editable
    # install of the clone among them) are not run, so `mimjax` resolves only to the wheel.
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    pathlib.Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["JAX_PLATFORMS"] = "cpu"
    where = subprocess.run([str(py), "-c", "import mimjax; print(mimjax.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path, env=env, check=True).stdout.strip()
    assert where.startswith(str(venv)), where
    run = subprocess.run([str(venv / "bin" / "mimjax"), "train", "--config", "demo:mae", "--workdir", "run",
                          "--config.total_steps=2", "--config.batch_size=8", "--config.log_every=1",
                          "--config.snapshot_every=0"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
