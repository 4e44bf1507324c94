"""mimjax: masked image modeling (MAE, GPA-MAE) pre-training of Vision Transformers in JAX.

Importing mimjax or any of its modules changes nothing in the process (no environment
variables, no JAX settings); the `mimjax` command sets its process environment itself
(mimjax/procenv.py)."""

__version__ = "0.1.0"
