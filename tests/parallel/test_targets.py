"""A compile target whose plugin is missing says how to install it from a clone of mimjax (its
extra, `pip install -e ".[EXTRA]" -c requirements.txt`), not from an index mimjax is not on."""
import configparser
import importlib.util
import os
import re

import pytest

from mimjax.parallel import targets

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGINS = {"tpu": ("libtpu",), "gpu": ("jax_cuda12_plugin", "jax_cuda13_plugin")}


@pytest.mark.parametrize("target,extra", [("v5e-8", "tpu"), ("h100x8", "gpu")])
def test_a_missing_plugin_names_the_clone_install_of_its_extra(monkeypatch, target, extra):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in PLUGINS[extra] else find_spec(name, *a))
    with pytest.raises(ValueError) as e:
        targets.parse(target).devices()
    install = re.search(r"pip install -e \"\.\[(\w+)\]\" -c requirements\.txt \(in the mimjax clone\b", str(e.value))
    assert install and install[1] == extra and "\n" not in str(e.value), str(e.value)
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    assert extra in cfg["options.extras_require"]  # the extra named exists
