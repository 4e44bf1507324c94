"""mimjax: masked image modeling (MAE, GPA-MAE) pre-training of Vision Transformers in JAX."""
__version__ = "0.1.0"
