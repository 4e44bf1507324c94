"""bench/input.py's pieces (not its timings): the dataset, one mimjax run, the report."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root

from bench import input as input_bench


def test_dataset_run_and_report(tmp_path):
    input_bench.write_dataset(str(tmp_path / "folder"), 24, size=(80, 60), classes=3)
    assert sorted(os.listdir(tmp_path / "folder")) == ["class_00", "class_01", "class_02"]
    r = input_bench.run_mimjax(("folder", str(tmp_path / "folder")), 1, 4, 2, uint8=True)
    assert r["img_per_s"] > 0 and r["cpu_ms_per_img"] > 0
    res = {"meta": {"date": "d", "cpu": "c", "cores": 2, "workers": 2, "images": 24, "image_size": "80x60",
                    "batch": 4, "batches": 2, "rounds": 1, "torch": "t", "torchvision": "tv", "grain": "g",
                    "pillow": "p", "simplejpeg": "s", "seconds": 1.0},
           "load_average": (1.0, 1.0, 1.0),
           "summary": {"torchvision": {"median": 10.0, "rounds": [10.0], "cpu_ms_per_img": [4.0],
                                       "cpu_ms_median": 4.0},
                       "mimjax_folder_uint8": {"median": 20.0, "rounds": [20.0], "cpu_ms_per_img": [2.0],
                                               "cpu_ms_median": 2.0}},
           "pixels": [], "per_image": [{"images": "500x375", "torchvision": 3.0, "mimjax": 2.0}]}
    md = input_bench.markdown(res)
    assert "| mimjax_folder_uint8 | 2.00 | 2.00 | 500 | 2.00x | 20.0 | 20 | 2.00x |" in md
    assert "| 500x375 | 3.00 | 2.00 | 1.50x |" in md


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
