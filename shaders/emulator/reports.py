"""The error-report buffer of c10/metal/error.h, which Inductor's kernels write when an index
check fails (`error_buf_idx=` in the wrapper's launch); torch raises at the next synchronize."""

from __future__ import annotations

import torch

from ..errors import KernelError

# sizeof(c10::metal::ErrorMessages): an atomic count, then 30 messages of 128 + 128 + 250 chars
# and a line number (512 bytes with padding).
ERROR_MESSAGES_BYTES = 4 + 30 * 512


def new_error_buffer() -> torch.Tensor:
    return torch.zeros(ERROR_MESSAGES_BYTES, dtype=torch.uint8)


def raise_reported_errors(kernel: str, errors: torch.Tensor) -> None:
    """Raises for messages a kernel reported through c10/metal/error.h, as torch does at sync."""
    count = int(errors[:4].view(torch.int32)[0])
    if count == 0:
        return
    raw = errors[4:].numpy().tobytes()
    messages = []
    for k in range(min(count, 30)):
        rec = raw[k * 512 : (k + 1) * 512]
        text = rec[256:506].split(b"\0", 1)[0].decode(errors="replace")
        func = rec[128:256].split(b"\0", 1)[0].decode(errors="replace")
        line = int.from_bytes(rec[508:512], "little")
        messages.append(f"{text} (in {func}, line {line})" if func else text)
    raise KernelError(f"kernel '{kernel}' reported {count} error(s): " + "; ".join(messages))
