"""The tests' scaffolding as plain functions: the tiny config and the `mimjax` command in a
fresh process. tests/conftest.py makes fixtures of them; scripts that run outside pytest
(tests/parallel/test_scale.py, tests/train/test_disk_full.py) and test modules import them
from here (`conftest` is not a unique module name: tests/data/ has one too)."""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# GPA-MAE on the tiny config (make_tiny_config(gpa=True)): GPA masking by step, an EMA teacher
# scoring with block 1, head 2, and the GPA head.
GPA = dict(masking=dict(strategy="gpa", progress="step"), teacher=dict(source="ema", block=1, head=2),
           model=dict(gpa_head=True))


def make_tiny_config(gpa=False, **over):
    """The tiny pre-training config (`runlocal`: MAE, ViT of width 64 and depth 2 on 32 px
    images in 8 px patches, batch 8, embedded data); GPA-MAE with gpa=True (GPA above); then
    `over`, a nested dict per section: make_tiny_config(total_steps=2, masking=dict(mask_ratio=0.5))."""
    from mimjax.train import config as config_lib

    c = config_lib.runlocal(config_lib.base_config())
    if gpa:
        c.update(GPA)
    c.update(over)
    return c


def cli_env(devices=None, env=None):
    """The environment of a `mimjax` process: this one's (CPU only, the compilation cache),
    `devices` CPU devices when given, then `env` on top."""
    out = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if devices is not None:
        flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", out.get("XLA_FLAGS", "")).split()
        out["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    out.update(env or {})
    return out


def start_cli_process(*args, devices=None, env=None, cwd=REPO, **popen_kwargs):
    """`mimjax ARGS` started in a fresh process (subprocess.Popen; text mode, output piped
    unless popen_kwargs say otherwise)."""
    popen_kwargs = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen_kwargs}
    return subprocess.Popen([sys.executable, "-m", "mimjax.cli", *map(str, args)], env=cli_env(devices, env),
                            cwd=cwd, **popen_kwargs)


def run_cli_process(*args, devices=None, env=None, cwd=REPO, timeout=900, **run_kwargs):
    """`mimjax ARGS` in a fresh process, waited for: a CompletedProcess with text stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "mimjax.cli", *map(str, args)], env=cli_env(devices, env), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, **run_kwargs)


def run_cli_here(capsys, *args):
    """(exit status, stdout, the `mimjax ...:` lines of stderr) of `mimjax ARGS` run by
    mimjax.cli.main in this process (capsys: pytest's fixture, which captures both)."""
    from mimjax import cli

    status = cli.main(["mimjax", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, [line for line in err.splitlines() if line.startswith("mimjax ")]


def listing(d):
    """path -> (mtime, bytes) of every file under d, links as links."""
    out = {}
    for r, dirs, fs in os.walk(d):
        for f in fs + [x for x in dirs if os.path.islink(os.path.join(r, x))]:
            p = os.path.join(r, f)
            out[os.path.relpath(p, d)] = (os.lstat(p).st_mtime_ns,
                                          os.readlink(p) if os.path.islink(p) else open(p, "rb").read())
    return out
