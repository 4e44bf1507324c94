import os
import sys

# Tests run on CPU; keep JAX off accelerators so numbers are reproducible in CI.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))  # for the numpy reference helpers

from gcs_emulator import gcs_bucket, gcs_server  # noqa: E402,F401  (fixtures: a GCS emulator)
