"""The benchmark harness's pieces (bench/), not its timings: the analytic FLOP count agrees
with XLA's, the Markdown writer renders a JSON result, the PyTorch reference runs.

    python -m pytest tests/test_bench.py -q
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for `bench`

from bench import report, steps
from mimjax import flops
from mimjax.models import vit

# XLA also counts elementwise work (norms, softmax, GELU, AdamW), which the analytic
# matmul count leaves out: a few percent at ViT sizes, up to ~15% at these tiny widths.
TOLERANCE = 0.2
TINY = ["model.width=128", "model.depth=2", "model.num_heads=4", "model.patch_size=8",
        "model.decoder_width=64", "model.decoder_depth=1", "model.decoder_heads=4"]


def xla_count(costs) -> float:
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs
    return float(costs["flops"])


def test_encoder_forward_flops_match_xla():
    enc = vit("vit_tiny_patch16", img_size=32, patch_size=8, width=128, depth=2, num_heads=4)
    params = jax.eval_shape(lambda: enc.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"])
    images = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)
    compiled = jax.jit(lambda p, x: enc.apply({"params": p}, x)).lower(params, images).compile()
    analytic = flops.encoder_fwd(flops.Arch(img_size=32, patch=8, width=128, depth=2, heads=4))
    ratio = flops.xla_flops(compiled) / 4 / analytic
    assert 1.0 <= ratio < 1 + TOLERANCE, ratio


def test_train_step_flops_match_xla():
    c = steps.make_config("mae", "vit_tiny_patch16", 4, 32, "float32", TINY)
    step, args = steps.build_train_step(c, abstract=True)
    xla = xla_count(step.lower(*args).cost_analysis()) / 4  # pre-optimisation HLO: no compile needed
    analytic = flops.step_flops(flops.Arch.from_config(c), "mae")["total"]
    assert 1.0 <= xla / analytic < 1 + TOLERANCE, xla / analytic


def test_vit_b_gpa_flops_match_the_reference_budget():
    # REFERENCE.md: encoder ~25, decoder ~30, teacher ~28, GPA head ~30 GFLOP/img (fwd+bwd).
    parts = flops.step_flops(flops.Arch.from_name("vit_base_patch16"), "gpa_feature")
    expected = {"student_encoder": 25, "decoder": 30, "teacher": 28, "gpa_head": 30}
    for key, gflop in expected.items():
        assert abs(parts[key] / 1e9 - gflop) / gflop < 0.1, (key, parts[key])


def test_override_casts_to_the_config_type():
    c = steps.make_config("mae", "vit_tiny_patch16", 8, 64, "float32", ["model.remat=true", "masking.mask_ratio=0.5"])
    assert c.model.remat is True and c.masking.mask_ratio == 0.5
    with pytest.raises(ValueError, match="nonexistent"):
        steps.make_config("mae", "vit_tiny_patch16", 8, 64, "float32", ["model.nonexistent=1"])


def test_markdown_from_json(tmp_path):
    row = {"model": "vit_small_patch16", "method": "gpa_teacher", "teacher": "stop@qk", "attention": "fused",
           "batch": 32, "dtype": "float32", "img_per_s": 12.5, "compile_s": 20.0,
           "step_ms": {"median": 2560.0, "min": 2500.0, "max": 2600.0}, "gflop_per_img": 46.1,
           "xla_over_analytic": 1.02, "tflops": 0.576, "of_matmul": 0.41, "mem_gib": 3.2, "mask_us": 800.0,
           "mask_share": 0.0003, "torch_img_per_s": 9.0, "speedup_vs_torch": 12.5 / 9.0}
    meta = {"backend": "cpu", "device": "cpu", "device_count": 1, "jax": "0.x", "date": "today", "cpu_count": 2,
            "overrides": []}
    result = {"meta": meta, "steps": [row], "matmul": [{"library": "jax (XLA)", "dtype": "float32", "gflops": 370.0}],
              "notes": ["a note"]}
    json_path, md_path = report.write(result, str(tmp_path))
    assert os.path.basename(json_path) == "throughput_cpu_2cores.json"
    with open(json_path) as f, open(md_path) as g:
        md, written = report.markdown(json.load(f)), g.read()
    assert md == written
    lines = md.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    assert lines[header + 1].startswith("|---|")
    cells = [x.strip() for x in lines[header + 2].strip("|").split("|")]
    assert cells[:3] == ["small", "gpa_teacher", "stop@qk"] and "1.39x" in cells and "12.5" in cells
    assert "- a note" in lines


def test_torch_reference_runs_on_a_tiny_config():
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from bench import torch_ref

    torch.manual_seed(0)
    arch = {"img_size": 32, "patch": 8, "dim": 64, "depth": 2, "heads": 4}
    mae = torch_ref.MAE(**arch, decoder_dim=32, decoder_depth=1, decoder_heads=4)
    imgs = torch.randn(2, 3, 32, 32)
    loss = mae(imgs)
    assert torch.isfinite(loss) and 0.5 < loss.item() < 5  # norm-pix targets have unit variance
    teacher = torch_ref.GPATeacher(**arch, block=1, head=3)
    g = teacher(imgs)
    assert g.shape == (2, 16) and g.min() == 0 and torch.allclose(g.max(-1).values, torch.ones(2))
    noise = torch_ref.gpa_noise(g, n_hard=2, n_soft=3)
    assert ((noise == 3).sum(-1) == 2).all() and (noise >= 2).sum(-1).ge(2).all()
    step = torch_ref.make_train_step(arch, "gpa_teacher", 2, block=1, head=3, decoder_dim=32, decoder_depth=1,
                                     decoder_heads=4)
    assert torch.isfinite(step())
