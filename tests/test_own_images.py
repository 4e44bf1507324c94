"""docs/recipes.md's "Your own images" runs as written: its one bash block, command by command,
on generated class folders (IMAGES) in tmp_path (W), with tiny settings appended to the same
flags (a few steps of a 2-block model: compiling is the cost), each command through the
`mimjax` command's own `main` in one child process (this file as a script: `python
tests/test_own_images.py DIR`), as tests/test_imagenet_doc.py runs docs/imagenet.md."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from doc_blocks import bash_lines, command_lines, command_name, run_written  # tests/ is on sys.path

DOC = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"
SECTION = "Your own images"
CLASSES, PER_CLASS = ("cats", "dogs"), 16  # 24 k-NN / probe training images, 8 test images
STEPS = ["train", "eval knn", "eval linprobe", "visualize", "export"]
TINY = {"train": ["--config.total_steps=2", "--config.batch_size=8", "--config.log_every=1",
                  "--config.checkpoint_every=2", "--config.model.depth=2", "--config.model.decoder_depth=1",
                  "--config.model.remat=False", "--config.optimizer.accum_steps=1", "--config.model.dtype=float32"],
        "eval knn": ["--k", "5"],
        "eval linprobe": ["--config.total_steps=2", "--config.batch_size=8", "--config.eval_batch_size=8",
                          "--config.log_every=1", "--config.checkpoint_every=2"],
        "visualize": ["--num_images", "2"], "export": []}
# What each command writes: (its flag naming the directory, the file).
OUTPUT = {"train": ("workdir", "checkpoints/2"), "eval knn": ("workdir", "knn.json"),
          "eval linprobe": ("workdir", "linprobe.json"), "visualize": ("out", "reconstruction.png"),
          "export": ("out", "model.safetensors")}


def make_class_folders(root: Path):
    """CLASSES x PER_CLASS JPEGs of assorted sizes: noise tinted red or blue, one tint a class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, tint in zip(CLASSES, ((200, 80, 60), (60, 90, 200))):
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            h, w = rng.integers(40, 90, 2)
            pixels = rng.integers(0, 80, (h, w, 3)) + np.array(tint) * rng.uniform(0.5, 1.0)  # [h, w, 3]
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / name / f"{i:02d}.jpg")


def run_block(root: Path) -> list[str]:
    """Runs the section's block in `root`; returns the commands run."""
    site = {"IMAGES": str(root / "images"), "W": str(root / "runs" / "my_images")}  # the block's paths, in root
    make_class_folders(Path(site["IMAGES"]))
    lines = bash_lines(DOC.read_text(encoding="utf-8")).get(SECTION)
    assert lines, f"docs/recipes.md has no bash block under '## {SECTION}'"
    ran = []
    for line, words in command_lines(lines, site):
        assert words[0] == "mimjax", f"docs/recipes.md ({SECTION}): a command this test does not know: {line!r}"
        args = words[1:]
        name = command_name(args)
        run_written(args, TINY[name], OUTPUT, repr(line))
        ran.append(name)
    return ran


@pytest.mark.slow
def test_the_own_images_block_runs_as_written(tmp_path):
    from scaffold import cli_env

    out = subprocess.run([sys.executable, __file__, str(tmp_path)], env=cli_env(), capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-6000:]
    assert json.loads(out.stdout.splitlines()[-1]) == STEPS
    run = tmp_path / "runs" / "my_images"
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["folder"] == str(tmp_path / "images") and config["total_epochs"] == -1  # steps alone
    assert (config["teacher"]["block"], config["teacher"]["head"]) == (1, 2)  # 2 blocks of 3 heads: not set, followed
    knn = json.loads((run / "knn.json").read_text())
    linprobe = json.loads((run / "linprobe.json").read_text())
    assert knn["num_test"] == linprobe["num_test"] == len(CLASSES) * PER_CLASS // 4  # every 4th image


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(json.dumps(run_block(Path(sys.argv[1]))))
