"""Small built-in models for the demo and the benchmarks (no download, no transformers dependency)."""

from .tiny_llama import KVCache, TinyLlama, TinyLlamaConfig

__all__ = ["KVCache", "TinyLlama", "TinyLlamaConfig"]
