"""jax_irl: post-training language models in JAX/Flax beyond supervised fine-tuning."""

__version__ = "0.1.0"
