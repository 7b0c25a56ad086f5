"""Small built-in models for the demo and the benchmarks (no download, no transformers dependency)."""

from .tiny_llama import TinyLlama, TinyLlamaConfig

__all__ = ["TinyLlama", "TinyLlamaConfig"]
