"""The mpsk graph pass: every pattern family, run through Inductor's pre-grad custom-pass hook."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from . import attempts, config, diagnostics, patterns, tuning

# Replacements by kind ("rms_norm", ...) over the compilations completed since reset_counters().
counters: collections.Counter = collections.Counter()


def reset_counters() -> None:
    """Clears `counters` in place, so references to it stay valid."""
    counters.clear()


def check_patterns_setting() -> None:
    """config.patterns may have been edited in place, past assignment's validation: check it again."""
    unknown = set(config.patterns) - set(config.PATTERNS)
    if unknown:
        known = list(config.PATTERNS)
        raise ValueError(f"config.patterns has unknown pattern name(s) {sorted(unknown)}; known: {known}")
    bad = {k: v for k, v in config.patterns.items() if not isinstance(v, bool)}
    if bad:
        raise TypeError(f"config.patterns values must be bools, got {bad}")


class MpskGraphPass(CustomGraphPass):
    """Replaces RMSNorm, LayerNorm, softmax, attention and RoPE subgraphs with mpsk ops."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        check_patterns_setting()
        done = patterns.apply(graph)
        attempts.defer(lambda: counters.update(done))
        graph.lint()

    def uuid(self) -> str:
        """Changes whenever the generated code could differ, keeping the FX graph cache honest: the
        patterns, the lowerings and plan builders that render the kernels, the Metal sources they
        embed, every setting and the tuned group sizes."""
        digest = hashlib.sha256(get_hash_for_files(_code_files()))
        settings = {k: v if isinstance(v, (bool, dict)) else repr(v) for k, v in config.snapshot().items()}
        digest.update(json.dumps(settings, sort_keys=True).encode())
        digest.update(json.dumps(tuning.table(), sort_keys=True).encode())
        return digest.hexdigest()


def _code_files() -> tuple[str, ...]:
    from . import lowerings, ops, shaders

    folders = {Path(m.__file__).parent: "*.py" for m in (patterns, lowerings, ops)}
    files = [p for folder, glob in folders.items() for p in folder.glob(glob)]
    files += Path(shaders.__file__).parent.glob("*.metal")
    return tuple(sorted(str(p) for p in files)) + (__file__,)


class RecordAtenGraph(CustomGraphPass):
    """Shows the post-grad aten graph to an active diagnostics collector; changes nothing."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        if graph.owning_module is not None:
            diagnostics.record_graph(graph.owning_module, "aten")

    def uuid(self) -> str:
        return "mpsk-record-aten-graph-1"
