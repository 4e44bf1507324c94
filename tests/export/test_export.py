"""PyTorch interop against the real thing: timm's VisionTransformer (strict load, same
outputs) and an official-layout MAE written here from timm blocks."""
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch interop tests need requirements-torch.txt") \
    if os.environ.get("MIMJAX_TORCH") != "1" else __import__("torch")
import timm  # noqa: E402
from timm.layers import PatchEmbed  # noqa: E402
from timm.models.vision_transformer import Block  # noqa: E402

from mimjax import export, masking  # noqa: E402
from mimjax.models import init_mae, mae, vit  # noqa: E402

def to_torch(sd):
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


@pytest.mark.parametrize("name, img", [("vit_tiny_patch16", 64), ("vit_base_patch16", 224)])
@pytest.mark.parametrize("pool", ["token", "avg"])
def test_timm_strict_load_and_same_outputs(name, img, pool):
    model = vit(name, img_size=img)
    images = jax.random.normal(jax.random.key(0), (2, img, img, 3))
    params = model.init(jax.random.key(1), images)["params"]
    tm = timm.create_model(f"{name}_224", pretrained=False, num_classes=0, global_pool=pool, img_size=img).eval()
    tm.load_state_dict(to_torch(export.to_timm_state_dict(params, name, img_size=img, global_pool=pool)), strict=True)
    with torch.no_grad():
        want = tm(torch.from_numpy(np.array(images).transpose(0, 3, 1, 2))).numpy()
    got = model.apply({"params": params}, images, pool=pool, method="features")
    np.testing.assert_allclose(got, want, atol=1e-4)
    # Round trip mimjax -> timm -> mimjax is exact.
    back = export.from_torch_state_dict(tm.state_dict(), name, img_size=img)["encoder"]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, back)


class TorchMAE(torch.nn.Module):
    """MAE's MaskedAutoencoderViT (official key names) from timm blocks, forward with a given mask."""

    def __init__(self, img, patch, dim, depth, heads, ddim, ddepth, dheads):
        super().__init__()
        n = (img // patch) ** 2
        self.patch = patch
        self.patch_embed = PatchEmbed(img, patch, 3, dim)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, n + 1, dim), requires_grad=False)
        self.blocks = torch.nn.ModuleList([Block(dim, heads, 4.0, qkv_bias=True, norm_layer=self.ln) for _ in range(depth)])
        self.norm = self.ln(dim)
        self.decoder_embed = torch.nn.Linear(dim, ddim)
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, ddim))
        self.decoder_pos_embed = torch.nn.Parameter(torch.zeros(1, n + 1, ddim), requires_grad=False)
        self.decoder_blocks = torch.nn.ModuleList([Block(ddim, dheads, 4.0, qkv_bias=True, norm_layer=self.ln)
                                                   for _ in range(ddepth)])
        self.decoder_norm = self.ln(ddim)
        self.decoder_pred = torch.nn.Linear(ddim, patch * patch * 3)

    @staticmethod
    def ln(d, **kw):
        return torch.nn.LayerNorm(d, eps=1e-6, **kw)

    def forward(self, imgs, ids_keep, ids_restore):  # MAE forward_encoder / forward_decoder
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], 1)
        for b in self.blocks:
            x = b(x)
        x = self.decoder_embed(self.norm(x))
        masks = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:], masks], 1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], 1) + self.decoder_pos_embed
        for b in self.decoder_blocks:
            x = b(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


def test_mae_layout_same_reconstruction_and_import():
    kw = dict(img_size=32, decoder_width=64, decoder_depth=2, decoder_heads=4)
    model = mae("mae_vit_tiny_patch16", **kw)
    params = init_mae(model, jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    m = masking.random_mask(jax.random.key(2), 2, 4, 0.5)
    sd = export.to_mae_state_dict(params, "vit_tiny_patch16", img_size=32)
    tm = TorchMAE(32, 16, 192, 12, 3, 64, 2, 4).eval()
    tm.load_state_dict(to_torch(sd), strict=True)
    with torch.no_grad():
        want = tm(torch.from_numpy(np.array(images).transpose(0, 3, 1, 2)),
                  torch.from_numpy(np.asarray(m.ids_keep)).long(), torch.from_numpy(np.asarray(m.ids_restore)).long())
    got = model.apply({"params": params}, images, m)["pred"]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    back = export.from_torch_state_dict({"model": tm.state_dict()}, "vit_tiny_patch16", img_size=32, decoder_heads=4)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                 {k: params[k] for k in back}, back)


def test_wrong_shapes_and_keys_are_named():
    params = vit("vit_tiny_patch16", img_size=32).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    sd = export.to_timm_state_dict(params, "vit_tiny_patch16", img_size=32)
    sd["blocks.0.mlp.fc1.weight"] = sd["blocks.0.mlp.fc1.weight"][:10]
    del sd["blocks.1.norm1.bias"]
    sd["extra.thing"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as e:
        export.from_torch_state_dict(sd, "vit_tiny_patch16", img_size=32)
    msg = str(e.value)
    assert "missing keys: blocks.1.norm1.bias" in msg and "unexpected keys: extra.thing" in msg
    assert "wrong shapes: blocks.0.mlp.fc1.weight (10, 192) (expected (768, 192))" in msg


class Payload:
    def __reduce__(self):
        return (open, (PAYLOAD_TARGET, "w"))


PAYLOAD_TARGET = ""


def test_pickle_payload_is_refused_without_running(tmp_path):
    global PAYLOAD_TARGET
    PAYLOAD_TARGET = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": Payload()}}, f)
    with pytest.raises(ValueError, match="not a plain tensor checkpoint; refused without running it"):
        export.load_state_dict(str(path))
    assert not os.path.exists(PAYLOAD_TARGET)
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3, "args": "x"}, tmp_path / "ok.pth")
    assert export.load_state_dict(str(tmp_path / "ok.pth"))["w"].shape == (2,)
    torch.save({"w": torch.zeros(2), "note": "text"}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match="not all tensors"):
        export.load_state_dict(str(tmp_path / "mixed.pth"))


def ok(p):
    """The stdout of a `mimjax` command that succeeded."""
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


@pytest.fixture(scope="module")
def tiny_mae_run(tmp_path_factory, run_cli):
    """A 2-step MAE run of ViT-Ti/16 on 64 px images."""
    w = tmp_path_factory.mktemp("run") / "mae"
    ok(run_cli("train", "--config", "configs/mae.py:vit_tiny_patch16,runlocal", "--workdir", str(w),
               "--config.total_steps=2", "--config.model.width=192", "--config.model.num_heads=3",
               "--config.model.depth=12", "--config.model.img_size=64", "--config.model.patch_size=16"))
    return w


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["token", "avg"])
def test_export_folder_loads_in_timm_with_no_extra_code(tiny_mae_run, tmp_path, pool, run_cli):
    from mimjax import workdir as workdir_lib

    folder = tmp_path / "vit_ti"
    out = ok(run_cli("export", "--workdir", str(tiny_mae_run), "--format", "timm", "--out", str(folder), "--pool", pool))
    assert f"wrote {folder}/model.safetensors" in out
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    images = np.asarray(jax.random.normal(jax.random.key(3), (2, 64, 64, 3)))
    params = workdir_lib.load_params(str(tiny_mae_run))["encoder"]
    encoder = vit("vit_tiny_patch16", img_size=64)
    want = np.asarray(encoder.apply({"params": params}, images, pool=pool, method="features"))
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    # 1. a local Hugging Face-style folder: architecture, sizes and weights all from DIR (strict load)
    hf = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert hf.pretrained_cfg["input_size"] == (3, 64, 64) and hf.num_classes == 0 and hf.global_pool == pool
    assert tuple(hf.pretrained_cfg["mean"]) == (0.485, 0.456, 0.406) and hf.pretrained_cfg["interpolation"] == "bicubic"
    # 2. a named architecture with the weights file as the pretrained source
    named = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0, img_size=64, global_pool=pool,
                              pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"))).eval()
    with torch.no_grad():
        for m in (hf, named):
            np.testing.assert_allclose(m(x).numpy(), want, atol=1e-4)
    # the folder imports back (as a teacher) to the same encoder
    ok(run_cli("import", "--in", str(folder), "--out", str(tmp_path / "back"), "--name", "vit_tiny_patch16",
               "--img_size", "64"))
    back = workdir_lib.load_params(str(tmp_path / "back"))["encoder"]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, back)


def test_export_to_a_file_named_like_a_folder_is_refused(tmp_path):
    from mimjax import interop
    from mimjax.errors import UsageError

    (tmp_path / "w").mkdir()
    (tmp_path / "taken").write_text("x")
    with pytest.raises(UsageError, match="is a file: expected a folder"):
        interop.export_weights(str(tmp_path / "w"), "timm", str(tmp_path / "taken"))


@pytest.mark.slow
def test_train_export_load_in_timm_then_import_as_teacher(tiny_mae_run, tmp_path, run_cli):
    w = tiny_mae_run
    ok(run_cli("export", "--workdir", str(w), "--format", "timm", "--out", str(tmp_path / "vit.safetensors")))
    from safetensors.torch import load_file
    tm = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64)
    tm.load_state_dict(load_file(str(tmp_path / "vit.safetensors")), strict=True)
    ok(run_cli("export", "--workdir", str(w), "--format", "mae", "--out", str(tmp_path / "mae.pth")))
    out = ok(run_cli("import", "--in", str(tmp_path / "mae.pth"), "--out", str(tmp_path / "teacher"),
                     "--name", "vit_tiny_patch16", "--img_size", "64"))
    assert "encoder + decoder" in out
    ok(run_cli("train", "--config", "configs/gpa_mae.py:vit_tiny_patch16,runlocal", "--workdir", str(tmp_path / "gpa"),
               "--config.teacher.source=checkpoint", f"--config.teacher.path={tmp_path / 'teacher'}",
               "--config.model.img_size=64", "--config.model.patch_size=16", "--config.teacher.head=2",
               "--config.total_steps=2"))
    assert os.path.isdir(tmp_path / "gpa" / "checkpoints" / "2")
