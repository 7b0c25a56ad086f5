"""Kernel launches per forward on the emulated mps device: mpsk against inductor against eager.

On a Mac the CPU cost of encoding each launch (tens of microseconds) often sets the speed of
small-batch decoding, so launches per token is the figure that fused kernels must lower. This
counts them on the program a Mac would run (the emulated mps device: Inductor's Metal kernels,
the mpsk kernels and extern ATen calls, as Inductor's mps wrapper launches them), for a prefill
of --prefill tokens and for one decode step with a static KV cache, on the built-in TinyLlama and
a tiny Hugging Face Llama.

The figures are counts, not timings, and they count this program's launches, not a Mac's
measurement: an ATen call counts once though MPS may encode several kernels for it (or, for a
few ops, none).

    python benchmarks/launches.py [--models tiny_llama,hf_llama] [--prefill 16] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import mps_inductor_ext as mpsk
from mps_inductor_ext.profiling.launches import MAX_LEN, TinyLlamaRunner, count

BACKENDS = ("eager", "inductor", "mpsk")
MODELS = ("tiny_llama", "hf_llama")


class HFLlamaRunner:
    """transformers' LlamaForCausalLM from a tiny config (random weights) with a StaticCache."""

    def __init__(self, layers: int = 2):
        import transformers

        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_LEN,
                                       attn_implementation="sdpa")
        self.model = transformers.LlamaForCausalLM(cfg).eval().to("mps")
        self.vocab = cfg.vocab_size

    def fresh(self) -> None:
        import transformers

        self.cache = transformers.StaticCache(config=self.model.config, max_cache_len=MAX_LEN)

    def __call__(self, fn, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return fn(input_ids=ids, cache=self.cache, cache_position=positions, use_cache=True).logits


RUNNERS = {"tiny_llama": TinyLlamaRunner, "hf_llama": HFLlamaRunner}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {MODELS}")
    parser.add_argument("--prefill", type=int, default=16, help="prompt tokens (default 16)")
    parser.add_argument("--json", help="also write the counts to this file")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in RUNNERS]
    if unknown or not models:
        parser.error(f"--models takes names from {MODELS}, got {args.models!r}")
    if not 1 <= args.prefill < MAX_LEN:
        parser.error(f"--prefill must be between 1 and {MAX_LEN - 1}, got {args.prefill}")

    mpsk.emulate_mps_device()
    print("Kernel launches per forward on the emulated mps device (counts, not timings; an ATen call counts "
          "once, however many kernels MPS encodes for it)")
    header = f"{'model':<11} {'phase':<8} {'backend':<9} {'launches':>8} {'per token':>9} {'inductor':>8} " \
             f"{'mpsk':>5} {'aten':>5}"
    print(header)
    results = []
    for name in models:
        runner = RUNNERS[name]()
        for backend in BACKENDS:
            for phase, n in count(runner, backend, args.prefill).items():
                tokens = args.prefill if phase == "prefill" else 1
                row = dict(model=name, phase=phase, backend=backend, launches=n.total,
                           per_token=n.total / tokens, inductor=n.inductor_kernels, mpsk=n.mpsk_kernels,
                           aten=n.aten_calls, aten_ops=dict(n.aten))
                results.append(row)
                print(f"{name:<11} {phase:<8} {backend:<9} {n.total:>8} {n.total / tokens:>9.2f} "
                      f"{n.inductor_kernels:>8} {n.mpsk_kernels:>5} {n.aten_calls:>5}")
    for name in models:
        for phase in ("prefill", "decode"):
            by = {r["backend"]: r["launches"] for r in results if r["model"] == name and r["phase"] == phase}
            print(f"ratio {name} {phase}: mpsk/inductor {by['mpsk'] / by['inductor']:.2f}, "
                  f"mpsk/eager {by['mpsk'] / by['eager']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"prefill_tokens": args.prefill, "rows": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
