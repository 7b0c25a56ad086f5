"""The built-in TinyLlama's static KV cache: prefill then decode equals one pass over the whole sequence."""

import pytest
import torch

from mps_inductor_ext.models import KVCache, TinyLlama


def test_cached_decode_equals_the_full_forward():
    torch.manual_seed(0)
    model = TinyLlama().eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.config, batch=2, max_len=16)
        steps = [model(ids[:, :6], cache, torch.arange(6))]
        steps += [model(ids[:, i : i + 1], cache, torch.tensor([i])) for i in range(6, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.k0[:, :, 9:].eq(0).all()  # nothing written past the last position


def test_cache_and_positions_go_together():
    model = TinyLlama().eval()
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="cache and positions together"):
        model(ids, KVCache(model.config, 1, 8))
    with pytest.raises(ValueError, match="cache and positions together"):
        model(ids, positions=torch.arange(3))
    with pytest.raises(ValueError, match="batch >= 1 and max_len >= 1"):
        KVCache(model.config, 1, 0)
