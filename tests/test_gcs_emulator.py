"""The GCS emulator fixture (tests/gcs_emulator.py) reaches every client mimjax uses."""
import numpy as np
from etils import epath


def test_epath_tensorstore_and_orbax_reach_the_emulator(gcs_bucket):
    import orbax.checkpoint as ocp
    import tensorstore as ts

    root = epath.Path(gcs_bucket) / "run"
    (root / "a.json").write_text("{}")
    assert (root / "a.json").read_text() == "{}" and root.is_dir()

    t = ts.open({"driver": "zarr", "kvstore": f"{gcs_bucket}/ts/"}, create=True,
                dtype=ts.float32, shape=[8]).result()
    t[2:4] = 3.0
    assert list(t[1:5].read().result()) == [0, 3, 3, 0]

    with ocp.CheckpointManager(root / "checkpoints") as mgr:
        mgr.save(1, args=ocp.args.StandardSave({"w": np.arange(4.0)}))
        mgr.wait_until_finished()
        assert mgr.all_steps() == [1]
        np.testing.assert_array_equal(mgr.restore(1)["w"], np.arange(4.0))


def test_each_test_gets_a_fresh_bucket(gcs_bucket):
    assert list(epath.Path(gcs_bucket).iterdir()) == []
