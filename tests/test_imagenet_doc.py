"""docs/imagenet.md runs as written: the commands of its platform blocks, in order, on a
miniature ImageNet (tests/data/test_imagenet.py) with tiny-model settings appended to the
same flags. `srun` runs the command it wraps; the launch scripts run with DRY_RUN=1 and the
`mimjax` command they print is the one run. What needs the network or the hardware (pip,
curl, the venv, `mimjax plan`'s compile for an accelerator) is recognised and checked for
what can be checked here: pins, flags, the config against the target's devices. A command
seen before (the platforms share most of them) is not run again: its outputs exist.

The chain runs in one child process (this file as a script: `python tests/test_imagenet_doc.py
DIR`), each command through the `mimjax` command's own `main`, compiled for speed as
tests/conftest.py sets up: the programs run two steps, compiling them is the cost."""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from doc_blocks import bash_lines, command_lines, command_name, run_written  # tests/ is on sys.path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "imagenet.md"
PLATFORMS = ("One host with 8 x H100", "A TPU v4-32 / v5e-64 pod slice", "A SLURM GPU cluster")

# The same recipe shrunk as `runlocal` shrinks it (mimjax/train/config.py: runlocal), with
# 16 px patches so that the recipes' ViT-B/16 teacher checks hold.
TRAIN_TINY = ["--config.batch_size=8", "--config.total_epochs=-1", "--config.total_steps=2",
              "--config.optimizer.warmup_epochs=-1", "--config.optimizer.warmup_steps=1",
              "--config.optimizer.accum_steps=1", "--config.log_every=1", "--config.checkpoint_every=2",
              "--config.model.img_size=64", "--config.model.patch_size=16", "--config.model.depth=1",
              "--config.model.width=64", "--config.model.num_heads=4", "--config.model.decoder_width=32",
              "--config.model.decoder_depth=1", "--config.model.decoder_heads=4", "--config.model.remat=False",
              "--config.model.dtype=float32"]
GPA_TINY = ["--config.teacher.block=0", "--config.teacher.head=2"]  # the official file's twin has 3 heads
EVAL_TINY = ["--config.eval.every=2", "--config.eval.num_train=64", "--config.eval.num_test=32",
             "--config.eval.batch_size=8"]  # k-NN inside a run that sets eval.every: at its last step
CLASSIFY_TINY = ["--config.batch_size=8", "--config.eval_batch_size=8", "--config.total_epochs=-1",
                 "--config.total_steps=2", "--config.optimizer.warmup_steps=1", "--config.log_every=1",
                 "--config.checkpoint_every=2"]
TINY = {"train": TRAIN_TINY, "finetune": CLASSIFY_TINY, "eval linprobe": CLASSIFY_TINY, "eval knn": [],
        "visualize": [], "prepare imagenet": ["--examples_per_shard", "64", "--workers", "1"], "export": [],
        "import": ["--name", "vit_tiny_patch16", "--img_size", "64"]}  # the official file's tiny twin
# What each command writes that the next one reads: (its flag naming the directory, the file).
OUTPUT = {"train": ("workdir", "checkpoints/2"), "prepare imagenet": ("out", "metadata.json"),
          "import": ("out", "config.json"), "finetune": ("out", "finetune.json"),
          "eval linprobe": ("workdir", "linprobe.json"), "eval knn": ("workdir", "knn.json"),
          "visualize": ("out", "reconstruction.png"), "export": ("out", "model.safetensors")}
STEPS = [("plan", "gpa_mae:vit_base_patch16,feature"), ("prepare imagenet", ""), ("import", ""),
         ("train", "mae:vit_base_patch16"), ("train", "gpa_mae:vit_base_patch16"),
         ("train", "gpa_mae:vit_base_patch16,feature"),
         ("finetune", "finetune:vit_base_patch16,gpa"), ("eval linprobe", "linprobe"), ("eval knn", ""),
         ("visualize", ""), ("export", "")]  # (command, recipe) of every platform's block, in order
NOT_RUN = {"python3": "creates the venv", ".": "enters the venv", "pip": "the network",
           "curl": "the network"}


def platform_lines(text: str) -> dict[str, list[str]]:
    """{platform heading: the lines of its fenced bash blocks, continuations joined}."""
    return {h: lines for h, lines in bash_lines(text).items() if h in PLATFORMS}


def launched(script_args: list[str]) -> list[str]:
    """The `mimjax` command a launch script runs (DRY_RUN=1 prints it): its arguments."""
    env = {**os.environ, "DRY_RUN": "1", "MIMJAX_ALLOW_DIRTY": "1"}  # tpu_pod.sh ships HEAD of this tree
    out = subprocess.run(["bash", *script_args], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, f"{script_args}: {out.stderr}"
    shown = [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("+ ")]
    if "--worker=all" in shown[-1]:  # tpu_pod.sh: the commit copied, the workers' install, the command they run
        setup, train = (words[words.index("--command") + 1] for words in shown if "--command" in words)
        assert "-c requirements.txt" in setup, setup
        shown = [shlex.split(train.split("&&")[-1])]
    (words,) = shown
    return strip_srun(words)


def strip_srun(words: list[str]) -> list[str]:
    """`srun [--options] mimjax ARGS` (or a path ending in /mimjax) -> ARGS."""
    if words[0] == "srun":
        words = words[1:]
        while words[0].startswith("-"):
            words = words[1:]
    assert words[0] == "mimjax" or words[0].endswith("/mimjax"), words
    return words[1:]


def check_plan(args: list[str]):
    """`mimjax plan`: its flags and the recipe's config checked against the target's device
    count (what the command does before it compiles: the compile needs the target's
    extra, and takes over a minute even for a tiny model)."""
    from mimjax import cli
    from mimjax.parallel import targets
    from mimjax.train import config as config_lib

    fv = cli.parse(cli.COMMANDS["plan"], args[1:])
    target = targets.parse(fv.target)
    config_lib.validate(config_lib.fill_missing(fv.config), num_devices=target.num_devices)


def make_official_mae_file(path: str):
    """An official-MAE-layout encoder file (`{"model": state dict}`), ViT-Ti/16 at 64 px,
    written by timm: the tiny twin of mae_pretrain_vit_base.pth."""
    import timm
    import torch

    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0)
    torch.save({"model": vit.state_dict()}, path)


def run_guide(root: Path) -> list[str]:
    """Runs every platform block of docs/imagenet.md in `root`; returns the commands run."""
    from data.test_imagenet import make_mini_imagenet  # tests/ is on sys.path
    from mimjax import cli

    tars = root / "downloads"
    tars.mkdir()
    make_mini_imagenet(str(tars))
    for ours, official in (("train.tar", "ILSVRC2012_img_train.tar"), ("val.tar", "ILSVRC2012_img_val.tar")):
        os.rename(tars / ours, tars / official)
    os.chdir(root)  # where `curl -LO` leaves the official file
    torch_here = all(importlib.util.find_spec(m) is not None for m in ("torch", "timm"))
    if torch_here:
        make_official_mae_file(str(root / "mae_pretrain_vit_base.pth"))
    site = {"TARS": str(tars), "DATA": str(root / "imagenet_ar"), "RUNS": str(root / "runs")}  # the blocks' paths

    def adjust(name, value):  # without PyTorch the import cannot run: the self-trained teacher instead
        return value.replace("mae_b16_official", "mae_b16") if name == "TEACHER" and not torch_here else value

    blocks = platform_lines(DOC.read_text(encoding="utf-8"))
    assert set(blocks) == set(PLATFORMS), f"docs/imagenet.md has blocks for {sorted(blocks)}"
    done, ran = set(), []
    for platform in PLATFORMS:
        seen = []
        for line, words in command_lines(blocks[platform], site, adjust):
            head = words[0]
            if head in NOT_RUN:
                assert head != "pip" or "-c requirements.txt" in line, f"{line!r} lets pip move past the pins"
                continue
            if head == "sbatch":
                args = launched(words[next(i for i, w in enumerate(words) if w.endswith(".sbatch")):])
            elif head.startswith("launch/"):
                args = launched(words)
            else:
                assert head in ("mimjax", "srun"), f"docs/imagenet.md: a command this test does not know: {line!r}"
                args = strip_srun(words)
            name = command_name(args)
            seen.append((name, args[args.index("--config") + 1] if "--config" in args else ""))
            if name == "plan":
                check_plan(args)
            elif name == "import" and not torch_here:
                cli.parse(cli.COMMANDS["import"], args[1:])  # reading a .pth needs PyTorch
            elif tuple(args) not in done:
                tiny = TINY[name] + (GPA_TINY if any(a.startswith("gpa_mae:") for a in args) else [])
                tiny += EVAL_TINY if any(a.startswith("--config.eval.every=") for a in args) else []
                start = time.perf_counter()
                run_written(args, tiny, OUTPUT, f"{platform}: {line!r}")
                done.add(tuple(args))
                ran.append(f"{name} ({time.perf_counter() - start:.1f} s)")
        assert seen == STEPS, f"{platform}: the steps are {seen}"
    return ran


@pytest.mark.slow
def test_the_imagenet_guide_runs_on_every_platform(tmp_path):
    from scaffold import cli_env

    out = subprocess.run([sys.executable, __file__, str(tmp_path)], env=cli_env(),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-6000:]
    ran = json.loads(out.stdout.splitlines()[-1])
    torch_here = all(importlib.util.find_spec(m) is not None for m in ("torch", "timm"))
    assert len(ran) == 9 + torch_here, ran  # each distinct command once: the platforms' blocks agree
    rows = [json.loads(x) for x in (tmp_path / "runs" / "gpa_f_b16" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert [r["step"] for r in rows if "knn_top1" in r] == [2]  # k-NN on the prepared validation shards
    assert json.loads((tmp_path / "runs" / "gpa_f_b16_ft" / "finetune.json").read_text())["top1"] >= 0
    if torch_here:
        config = json.loads((tmp_path / "runs" / "mae_b16_official" / "config.json").read_text())
        assert config["model"]["name"] == "mae_vit_tiny_patch16"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(json.dumps(run_guide(Path(sys.argv[1]))))
