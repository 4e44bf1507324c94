"""bench/input.py's pieces (not its timings): the dataset, one mimjax run, the report."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root

import math

from bench import input as input_bench
from bench import input_projection


def test_cpu_seconds_sees_a_millisecond_of_this_process_and_reads_others_from_proc():
    """This process by its own clock: 2 ms of work are not lost to /proc's 10 ms ticks (the
    pipeline's CPU per image read 0 on a fast CPU that way); other processes from /proc."""
    import subprocess
    import time

    before, t = input_bench.cpu_seconds([os.getpid()]), time.process_time()
    while time.process_time() - t < 0.002:
        pass
    assert 0.002 <= input_bench.cpu_seconds([os.getpid()]) - before < 0.009  # a tick reads 0 or 0.01
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.3: pass\nprint(flush=True)\ninput()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # its 0.3 s of work are done
        assert 0.29 <= input_bench.cpu_seconds([child.pid]) < 5.0  # and its start-up
    finally:
        child.communicate(b"\n", timeout=30)


def test_dataset_run_and_report(tmp_path):
    input_bench.write_dataset(str(tmp_path / "folder"), 24, size=(80, 60), classes=3)
    assert sorted(os.listdir(tmp_path / "folder")) == ["class_00", "class_01", "class_02"]
    r = input_bench.run_mimjax(("folder", str(tmp_path / "folder")), 1, 4, 2, uint8=True)
    assert r["img_per_s"] > 0 and r["cpu_ms_per_img"] > 0
    tv = input_bench.run_torchvision(str(tmp_path / "folder"), 0, 8, 4)  # 40 images: past one epoch of 24
    assert tv["img_per_s"] > 0
    summary = {"500x375": {"torchvision": input_bench.summarize([10.0, 12.0, 8.0], [4.0, 5.0, 3.0], 2),
                           "mimjax_folder_uint8": input_bench.summarize([20.0, 30.0, 25.0], [2.0, 1.0, 3.0], 2)}}
    assert summary["500x375"]["mimjax_folder_uint8"] | {"rounds": None, "cpu_ms_per_img": None} == {
        "rounds": None, "best": 30.0, "median": 25.0, "per_core": 12.5, "cpu_ms_per_img": None, "cpu_ms_median": 2.0}
    rates = input_bench.projection_rates(summary)
    assert rates == {"torchvision": 5.0, "mimjax": 12.5}
    res = {"meta": {"date": "d", "cpu": "c", "cores": 2, "workers": 2, "images": 24, "sizes": ["500x375"],
                    "batch": 4, "batches": 2, "rounds": 3, "torch": "t", "torchvision": "tv", "grain": "g",
                    "pillow": "p", "simplejpeg": "s", "opencv": "o", "seconds": 1.0},
           "load_average": (1.0, 1.0, 1.0), "summary": summary, "pixels": [],
           "projection_rates": rates, "projection": input_projection.projection(rates)}
    md = input_bench.markdown(res)
    assert "| mimjax_folder_uint8 | 30.0 | 25.0 | 20, 30, 25 | 12.5 | 2.50x | 2.00 | 500 |" in md
    assert "| torchvision | 12.0 | 10.0 | 10, 12, 8 | 5.0 | 1.00x | 4.00 | 250 |" in md
    assert "Cores to feed 8 x H100 at 50% MFU" in md


def test_projection_arithmetic():
    """cores = 8 GPUs x 989 TFLOP/s x 0.5 / FLOPs per image / (img/s per core), by hand;
    MAE ViT-B/16's step from MAE's numbers: 3 x (encoder on 1 + 49 tokens + decoder on 197)."""
    assert input_projection.images_per_second(50e9) == 8 * 989e12 * 0.5 / 50e9  # 79,120 img/s
    assert abs(input_projection.cores_needed(400.0, 50e9) - 197.8) < 1e-9
    assert abs(input_projection.cores_needed(400.0, 50e9, gpus=1, mfu=0.25) - 197.8 / 16) < 1e-9
    rows = input_projection.projection({"a": 100.0, "b": 300.0})
    mae = rows[0]
    # ViT-B/16 MAE, 224 px, 75% masked: per token and block 24 d^2 + 4 T d FLOPs (fwd), x3 for fwd + bwd
    d, dd, n = 768, 512, 196

    def blocks(t, w, depth):
        return depth * (24 * t * w * w + 4 * t * t * w)

    fwd = (2 * n * 768 * d + blocks(1 + 49, d, 12) + 2 * 50 * d * dd + blocks(1 + n, dd, 8) + 2 * n * dd * 768)
    assert abs(mae["gflop_per_img"] - 3 * fwd / 1e9) / mae["gflop_per_img"] < 0.02, (mae, 3 * fwd / 1e9)
    assert mae["cores"]["a"] == 3 * mae["cores"]["b"]
    assert abs(mae["cores"]["a"] * 100.0 - 8 * 989e12 * 0.5 / (mae["gflop_per_img"] * 1e9)) < 1e-6
    assert [r["method"] for r in rows] == ["MAE", "GPA-MAE (teacher masks)", "GPA-MAE (teacher + feature head)"]
    md = input_projection.markdown(rows, {"a": 100.0, "b": 300.0})
    assert f"| MAE | {mae['gflop_per_img']:.1f} | {mae['img_per_s']:,.0f} | {math.ceil(mae['cores']['a']):,} |" in md


def test_randaugment_cost_and_report(tmp_path):
    input_bench.write_dataset(str(tmp_path / "folder"), 8, size=(80, 60), classes=1)
    row = input_bench.randaugment_cost(str(tmp_path), n=4)
    assert row["spec"] == "rand-m9-mstd0.5-inc1" and min(row["crop_ms"], row["mimjax_ms"], row["timm_ms"]) > 0
    r = input_bench.run_mimjax(("folder", str(tmp_path / "folder")), 1, 4, 1, uint8=True,
                               randaugment="rand-m9-mstd0.5-inc1")
    assert r["cpu_ms_per_img"] > 0
    res = {"meta": {"date": "d", "cpu": "c", "cores": 2, "workers": 2, "batch": 4, "batches": 1, "pillow": "p",
                    "timm": "t"}, "load_average": (1.0, 1.0, 1.0),
           "per_image": {**row, "crop_ms": 3.0, "mimjax_ms": 2.5, "timm_ms": 2.0, "timm_errors": 1},
           "summary": {"mimjax_folder_uint8_randaugment": {"cpu_ms_per_img": 7.25, "img_per_s": 55.0}}}
    md = input_bench.randaugment_markdown(res)
    assert "| 3.00 | 2.50 | 2.00 |" in md and "on 1 of 12 images" in md
    assert "| mimjax_folder_uint8_randaugment | 7.25 | 55.0 |" in md


def test_profile_stages_and_table(tmp_path):
    from bench import input_profile

    input_bench.write_dataset(str(tmp_path / "f"), 4, size=(120, 90), classes=1)
    paths = sorted(str(p) for p in (tmp_path / "f" / "class_00").iterdir())
    row = input_profile.stage_costs(paths, reps=1)
    assert row["dct_scaled_share"] == 0.0  # 90 px crops never reach 2 x 224
    assert all(v >= 0 for v in row.values()) and row["total: train_crop_uint8 (header to flip)"] > 0
    row["pipeline_1_thread"] = 2.5
    md = input_profile.markdown({"meta": {"date": "d", "cpu": "c", "images": 4, "reps": 1},
                                 "load_average": (0.0, 0.0, 0.0), "stages": {"120x90": row}})
    assert "| pipeline, 1 grain thread, uint8 batches (whole process) | 2.500 |" in md
    assert "| share of crops decoded at a DCT scale | 0% |" in md


def test_threads_and_processes_rates(tmp_path):
    from bench import input_profile

    input_bench.write_dataset(str(tmp_path / "f"), 16, size=(80, 60), classes=2)
    for mode in ("threads", "processes"):
        r = input_profile.worker_rate(str(tmp_path / "f"), mode, workers=2, batch=4, batches=2)
        assert r["img_per_s"] > 0 and r["cpu_ms_per_img"] > 0, mode
