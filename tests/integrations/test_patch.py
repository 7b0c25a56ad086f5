"""mps_inductor_ext.patch(): eager forwards of recognized modules replaced by the mpsk ops.

Every test that says a site is patched also asserts that its Metal kernel ran (the emulator's
launch spy), so none of them passes with patching switched off; each unpatch() test asserts the
original outputs come back bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from helpers import TOLERANCES, emulated_metal, launched_variants  # noqa: F401 (emulated_metal: a fixture)
from helpers import kernel_counts as kernels
from torch import nn

import mps_inductor_ext as mpsk
from mps_inductor_ext.integrations import rotary

transformers = pytest.importorskip("transformers")

import hf_models  # noqa: E402
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm  # noqa: E402
from transformers.models.gpt_neox import modeling_gpt_neox  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm  # noqa: E402
from transformers.models.t5.modeling_t5 import T5LayerNorm  # noqa: E402

DIM = 48


pytestmark = pytest.mark.usefixtures("emulated_metal")


def randomized(module: nn.Module) -> nn.Module:
    """The module with random affine parameters (the defaults, ones and zeros, would hide an offset)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return module


NORMS = {
    "llama": (lambda: LlamaRMSNorm(DIM, eps=1e-6), "rms_norm", "eps from .variance_epsilon)"),
    "gemma": (lambda: GemmaRMSNorm(DIM, eps=1e-6), "rms_norm", "weight_offset=1"),
    "t5": (lambda: T5LayerNorm(DIM, eps=1e-6), "rms_norm", "eps from .variance_epsilon)"),
    "nn.RMSNorm": (lambda: nn.RMSNorm(DIM, eps=1e-5), "rms_norm", "eps from .eps)"),
    "nn.RMSNorm-eps-None": (lambda: nn.RMSNorm(DIM), "rms_norm", "eps from .eps)"),
    "nn.RMSNorm-no-affine": (lambda: nn.RMSNorm(DIM, elementwise_affine=False), "rms_norm", "eps from .eps)"),
    "nn.LayerNorm": (lambda: nn.LayerNorm(DIM), "layer_norm", "eps from .eps)"),
    "nn.LayerNorm-no-bias": (lambda: nn.LayerNorm(DIM, bias=False), "layer_norm", "eps from .eps)"),
    "nn.LayerNorm-no-affine": (lambda: nn.LayerNorm(DIM, elementwise_affine=False), "layer_norm", "eps from .eps)"),
}


@pytest.mark.parametrize("form", list(NORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_each_norm_form_runs_its_kernel_and_matches_the_original(form, dtype):
    make, kind, detail = NORMS[form]
    model = nn.Sequential(randomized(make())).to(dtype)
    x = torch.randn(3, 5, DIM, generator=torch.Generator().manual_seed(0)).to(dtype) * 2 + 0.5
    with torch.no_grad():
        ref = model(x)
        report = mpsk.patch(model)
        with launched_variants() as seen:
            got = model(x)
        mpsk.unpatch(model)
        back = model(x)
    assert [(s.name, s.kind) for s in report.patched] == [("0", kind)] and not report.skipped
    assert detail in report.patched[0].detail
    assert kernels(seen) == {f"{kind}_{mpsk.ops.common.METAL_DTYPES[dtype]}": 1}
    tol = 1e-5 if dtype == torch.float32 else TOLERANCES[dtype]
    assert got.dtype == ref.dtype
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol)
    assert torch.equal(back, ref) and "forward" not in model[0].__dict__


class ScaledMaxNorm(nn.Module):
    """Looks like a norm (weight, eps) but divides by the max: must be reported, not replaced."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = 1e-6

    def forward(self, x):
        return self.weight * x / (x.abs().amax(-1, keepdim=True) + self.eps)


def test_norm_lookalikes_are_left_alone_with_their_reason():
    tensor_eps = LlamaRMSNorm(DIM)
    tensor_eps.variance_epsilon = torch.tensor(1e-6)
    model = nn.ModuleDict({
        "tensor_eps": tensor_eps,
        "two_dims": nn.LayerNorm((4, DIM)),
        "float64": LlamaRMSNorm(DIM).double(),
        "max_norm": ScaledMaxNorm(DIM),
    })
    report = mpsk.patch(model)
    mpsk.unpatch(model)
    reasons = {s.name: s.detail for s in report.skipped}
    assert not report.patched
    assert reasons == {
        "tensor_eps": "eps (.variance_epsilon) is a Tensor, not a float",
        "two_dims": "normalizes over the last 2 dimensions; the kernel takes one",
        "float64": "parameters are torch.float64, which has no Metal kernel",
        "max_norm": "computes neither rms_norm (weight or 1 + weight) nor layer_norm over the last dimension",
    }


def test_switched_off_families_are_reported_not_patched():
    model = nn.ModuleDict({"rms": LlamaRMSNorm(DIM), "ln": nn.LayerNorm(DIM)})
    report = mpsk.patch(model, rms_norm=False)
    mpsk.unpatch(model)
    assert [(s.name, s.kind) for s in report.patched] == [("ln", "layer_norm")]
    assert [(s.name, s.detail) for s in report.skipped] == [("rms", "rms_norm=False")]


def test_a_call_the_op_cannot_take_runs_the_original_forward():
    """bf16 activations into an fp32 weight (autocast-style) promote in Llama's forward: no kernel, same result."""
    model = nn.Sequential(randomized(LlamaRMSNorm(DIM)))
    x = torch.randn(2, DIM).bfloat16()
    ref = model(x)
    mpsk.patch(model)
    with launched_variants() as seen:
        got = model(x)
    mpsk.unpatch(model)
    assert not seen and got.dtype == torch.float32 and torch.equal(got, ref)


def test_patching_twice_or_unpatching_an_unpatched_model_raises():
    model = nn.Sequential(nn.LayerNorm(DIM))
    mpsk.patch(model)
    with pytest.raises(RuntimeError, match="already patched"):
        mpsk.patch(model)
    mpsk.unpatch(model)
    with pytest.raises(ValueError, match="not patched"):
        mpsk.unpatch(model)


def rotate_every_two(x):
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def gptj_style(q, k, cos, sin, unsqueeze_dim=1):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + rotate_every_two(q) * sin, k * cos + rotate_every_two(k) * sin


def sign_flipped(q, k, cos, sin, unsqueeze_dim=1):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos - modeling_llama.rotate_half(q) * sin, k * cos - modeling_llama.rotate_half(k) * sin


def test_the_rope_probe_tells_the_forms_apart():
    assert rotary.recognize(modeling_llama.apply_rotary_pos_emb) == rotary.RopeSpec(interleaved=False, partial=False)
    assert rotary.recognize(modeling_gpt_neox.apply_rotary_pos_emb) == rotary.RopeSpec(interleaved=False, partial=True)
    assert rotary.recognize(gptj_style) == rotary.RopeSpec(interleaved=True, partial=False)
    assert rotary.recognize(sign_flipped) == "computes neither rotate_half nor interleaved RoPE on a probe"


# Model level: tiny Hugging Face models from configs (random weights, nothing downloaded).

def build(name: str) -> nn.Module:
    if name in hf_models.FAMILIES:
        return hf_models.build(name, "sdpa")
    torch.manual_seed(0)
    if name == "gpt_neox":  # nn.LayerNorm, partial rotary (rotary_pct 0.25)
        cfg = transformers.GPTNeoXConfig(
            vocab_size=hf_models.VOCAB, hidden_size=hf_models.HIDDEN, num_hidden_layers=hf_models.LAYERS,
            num_attention_heads=hf_models.HEADS, intermediate_size=2 * hf_models.HIDDEN, max_position_embeddings=64,
            attention_dropout=0.0, hidden_dropout=0.0, attn_implementation="sdpa")
        return transformers.GPTNeoXForCausalLM(cfg)
    cfg = transformers.T5Config(  # T5LayerNorm, relative position bias in the attention mask
        vocab_size=hf_models.VOCAB, d_model=hf_models.HIDDEN, d_kv=hf_models.HEAD_DIM, d_ff=2 * hf_models.HIDDEN,
        num_layers=hf_models.LAYERS, num_decoder_layers=hf_models.LAYERS, num_heads=hf_models.HEADS,
        dropout_rate=0.0, decoder_start_token_id=0, attn_implementation="sdpa")
    return transformers.T5ForConditionalGeneration(cfg)


L = hf_models.LAYERS
# Sites per model, read from the modeling code: decoder layers hold two norms and the model a final
# one (Qwen3 adds q_norm and k_norm per layer); each attention applies RoPE once to q and k; T5 has
# two norms per encoder block, three per decoder block and a final norm in each stack, and one
# self-attention per block plus one cross-attention per decoder block, and no RoPE.
EXPECTED = {
    "llama": {"rms_norm": 2 * L + 1, "rope": L, "attention": L},
    "mistral": {"rms_norm": 2 * L + 1, "rope": L, "attention": L},
    "gemma": {"rms_norm": 2 * L + 1, "rope": L, "attention": L},
    "qwen3": {"rms_norm": 4 * L + 1, "rope": L, "attention": L},
    "gpt_neox": {"layer_norm": 2 * L + 1, "rope": L, "attention": L},
    "t5": {"rms_norm": 5 * L + 2, "attention": 3 * L},
}
MODELS = list(EXPECTED)
SEQ = 9  # longer than Mistral's sliding window (5), so the window masks keys


def inputs(name: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, hf_models.VOCAB, (2, SEQ), generator=gen)
    return {"input_ids": ids, **({"decoder_input_ids": ids[:, :6].clone()} if name == "t5" else {})}


def expected_launches(name: str) -> dict[str, int]:
    """Kernel launches per forward: one per norm site, two per rope site (q and k), one per attention."""
    sites = EXPECTED[name]
    want = {f"{k}_float": n for k, n in sites.items() if k in ("rms_norm", "layer_norm")}
    if "rope" in sites:
        want["rope_float"] = 2 * sites["rope"]
    want["attn_prefill_float"] = sites["attention"]
    return want


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_patched_model_runs_the_kernels_matches_and_unpatches_exactly(name):
    model = build(name).eval()
    args = inputs(name)
    rope_before = {m.__name__: getattr(m, rotary.FUNCTION) for m in rotary.modeling_modules(model)}
    with torch.no_grad():
        ref = model(**args).logits
        report = mpsk.patch(model)
        with launched_variants() as seen:
            got = model(**args).logits
        mpsk.unpatch(model)
        back = model(**args).logits
    assert {k: report.count(k) for k in EXPECTED[name]} == EXPECTED[name], str(report)
    assert len(report.patched) == sum(EXPECTED[name].values()) and not report.skipped, str(report)
    assert kernels(seen) == expected_launches(name)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(back, ref)
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert {m.__name__: getattr(m, rotary.FUNCTION) for m in rotary.modeling_modules(model)} == rope_before
    assert model.config._attn_implementation == "sdpa"


def loss_and_grads(model: nn.Module, args: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    labels = args.get("decoder_input_ids", args["input_ids"])
    loss = model(**args, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_a_patched_model_trains_with_the_same_gradients(name):
    model = build(name).train()
    args = inputs(name)
    ref_loss, ref_grads = loss_and_grads(model, args)
    mpsk.patch(model)
    with launched_variants() as seen:
        loss, grads = loss_and_grads(model, args)
    mpsk.unpatch(model)
    assert kernels(seen) == expected_launches(name)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for key in ref_grads:
        torch.testing.assert_close(grads[key], ref_grads[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_rope_wrapper_leaves_an_unpatched_model_of_the_same_class_alone():
    patched, other = build("llama").eval(), build("llama").eval()
    args = inputs("llama")
    with torch.no_grad():
        ref = other(**args).logits
        mpsk.patch(patched, rms_norm=False, attention=False)
        try:
            assert modeling_llama.apply_rotary_pos_emb is not rotary.original_function(modeling_llama)
            with launched_variants() as seen_other:
                got = other(**args).logits
            with launched_variants() as seen_patched:
                patched(**args)
        finally:
            mpsk.unpatch(patched)
    assert not seen_other and torch.equal(got, ref)
    assert kernels(seen_patched) == {"rope_float": 2 * L}


@pytest.mark.slow
def test_a_patched_model_compiles_with_the_mpsk_backend():
    """With every pattern switched off the backend replaces nothing itself: the kernels that run are the
    patched forwards' ops, carried through Dynamo and lowered."""
    model = build("llama").eval()
    args = inputs("llama")
    with torch.no_grad():
        ref = model(**args).logits
    mpsk.patch(model)
    torch._dynamo.reset()
    try:
        with mpsk.config.patch(patterns=dict.fromkeys(mpsk.config.patterns, False)), torch.no_grad():
            compiled = torch.compile(model, backend="mpsk")
            torch._dynamo.utils.counters.clear()
            with launched_variants() as seen:
                got = compiled(**args).logits
            breaks = dict(torch._dynamo.utils.counters["graph_break"])
    finally:
        torch._dynamo.reset()
        mpsk.unpatch(model)
    assert kernels(seen) == expected_launches("llama")
    assert not breaks, breaks
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_a_patched_model_generates_the_original_tokens(name):
    """generate() decodes one token at a time from a cache: RoPE on one position, attention on one query."""
    model = build(name).eval()
    ids = inputs(name)["input_ids"]
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = model.generate(ids, **settings)
        mpsk.patch(model)
        try:
            with launched_variants() as seen:
                got = model.generate(ids, **settings)
        finally:
            mpsk.unpatch(model)
    launched = kernels(seen)
    steps = launched["rms_norm_float"] // (2 * L + 1)  # forwards: the prefill, then one per decoded token
    assert steps > 1 and launched == {"rms_norm_float": (2 * L + 1) * steps, "rope_float": 2 * L * steps,
                                      "attn_prefill_float": L, "attn_decode_float": L * (steps - 1)}
    assert torch.equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_a_half_precision_patched_model_stays_within_the_dtype_tolerance(dtype):
    model = build("qwen3").eval().to(dtype)
    args = inputs("qwen3")
    with torch.no_grad():
        ref = model(**args).logits
        mpsk.patch(model)
        try:
            with launched_variants() as seen:
                got = model(**args).logits
        finally:
            mpsk.unpatch(model)
    suffix = mpsk.ops.common.METAL_DTYPES[dtype]
    assert kernels(seen) == {k.replace("_float", f"_{suffix}"): n for k, n in expected_launches("qwen3").items()}
    # The unpatched model rounds at other steps (Llama-style norms cast before the weight product), so
    # the two differ by the dtype's rounding, not more (logits here are below 1).
    torch.testing.assert_close(got.float(), ref.float(), rtol=TOLERANCES[dtype], atol=TOLERANCES[dtype])



def test_the_rope_probe_sees_through_the_kernels_hub_wrapper():
    """transformers >= 5.25 (which installs `kernels`) decorates apply_rotary_pos_emb with
    `use_kernel_forward_from_hub`, making it an nn.Module of class `Func` whose signature is (*args, **kwargs)."""
    hub = pytest.importorskip("kernels", reason="the `kernels` package is not installed (transformers < 5.25 "
                                  "does not require it), so there is no hub wrapper to see through")
    wrapped = hub.use_kernel_forward_from_hub("rotary_pos_emb")(gptj_style)
    assert isinstance(wrapped, nn.Module)
    assert rotary.recognize(wrapped) == rotary.RopeSpec(interleaved=True, partial=False)
