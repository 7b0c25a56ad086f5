"""torch.export + AOTInductor packages that keep the Metal kernels (mps_inductor_ext.aoti_compile_and_package).

A model is exported with a dynamic sequence length and packaged with the kernels on the CPU
emulator; the package is then loaded in a fresh Python process that has no model code (it
imports only torch and mps_inductor_ext, whose loader installs the emulated AOTI MPS shim) and
run at several sequence lengths, other than the example's. Outputs must equal eager PyTorch
within the ops' float32 tolerance. The package's generated C++ must launch every replaced op's
kernel through the shim and call no Python (proxy-executor) fallback for them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile

import pytest
import torch
from helpers import TOLERANCES

import mps_inductor_ext as mpsk
from mps_inductor_ext.models.tiny_llama import TinyLlama, TinyLlamaConfig

TOL = TOLERANCES[torch.float32]
EXAMPLE_SEQ, RUN_SEQS = 12, (12, 7, 20, 3)
VOCAB = 128
KERNELS = {"rms_norm": "rms_norm_float", "add_rms_norm": "add_rms_norm_float", "rope": "rope_float",
           "rope_qk": "rope_qk_float", "attention": "attn_prefill_float"}

CHILD = """
import sys, torch
import mps_inductor_ext as mpsk
package, data, out = sys.argv[1:]
model = mpsk.aoti_load_package(package)
inputs = torch.load(data)
with torch.no_grad():
    torch.save([model(ids) for ids in inputs], out)
"""


def package(model, tmp_path, name: str) -> tuple[str, dict[str, int]]:
    seq = torch.export.Dim("seq", min=2, max=64)
    mpsk.reset_counters()
    with mpsk.config.patch(emulate_metal=True):
        path = mpsk.aoti_compile_and_package(model, (ids(EXAMPLE_SEQ),), tmp_path / f"{name}.pt2",
                                             dynamic_shapes=({1: seq},))
    return path, dict(mpsk.counters)


def ids(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed + length))


def run_in_fresh_process(path: str, tmp_path) -> list[torch.Tensor]:
    inputs = [ids(n, seed=1) for n in RUN_SEQS]
    torch.save(inputs, tmp_path / "inputs.pt")
    proc = subprocess.run([sys.executable, "-c", CHILD, path, str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(tmp_path / "out.pt")


def generated_cpp(path: str) -> str:
    with zipfile.ZipFile(path) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".wrapper.cpp")]
        return archive.read(name).decode()


def check_package(model, path: str, counts: dict[str, int], expected: dict[str, int], tmp_path) -> None:
    assert counts == expected
    cpp = generated_cpp(path)
    for kind in expected:
        assert f'"{KERNELS[kind]}"' in cpp, kind  # its kernel function is looked up by the shim
    launches = re.findall(r"aoti_torch_mps_run_command_block\(mpsk_lib_\w+?_(\w+)\(\)", cpp)
    assert sorted(set(launches)) == sorted(KERNELS[k] for k in expected)
    assert "mpsk::" not in cpp and "proxy_executor_call_function" not in cpp
    outputs = run_in_fresh_process(path, tmp_path)
    with torch.no_grad():
        for length, got in zip(RUN_SEQS, outputs, strict=True):
            torch.testing.assert_close(got, model(ids(length, seed=1)), rtol=TOL, atol=TOL, msg=f"seq {length}")


def test_demo_model_package_runs_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = TinyLlama(TinyLlamaConfig(vocab_size=VOCAB)).eval()
    path, counts = package(model, tmp_path, "tiny_llama")
    check_package(model, path, counts, model.expected_replacements(), tmp_path)


class Logits(torch.nn.Module):
    """A Hugging Face causal LM as input_ids -> logits (no cache), the form one exports for serving."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


@pytest.mark.slow
def test_hugging_face_llama_package_runs_in_a_fresh_process(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
                                   attn_implementation="sdpa")
    model = Logits(transformers.LlamaForCausalLM(cfg)).eval()
    path, counts = package(model, tmp_path, "llama")
    layers = cfg.num_hidden_layers
    check_package(model, path, counts, {"rms_norm": 1, "add_rms_norm": 2 * layers, "rope_qk": layers,
                                        "attention": layers}, tmp_path)


class Norm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(32))

    def forward(self, x):
        return torch.nn.functional.rms_norm(x, (32,), self.weight, 1e-6)


class NormsAndSoftmax(torch.nn.Module):
    """The two families the transformer tests do not package: LayerNorm and a softmax of their own."""

    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(32)
        self.proj = torch.nn.Linear(32, 32)

    def forward(self, x):
        return torch.softmax(self.proj(self.ln(x)), dim=-1)


def test_exported_program_with_layer_norm_and_softmax(tmp_path):
    torch.manual_seed(0)
    model, x = NormsAndSoftmax(), torch.randn(3, 5, 32)
    ep = torch.export.export(model, (x,), dynamic_shapes=({1: torch.export.Dim("seq", min=2, max=64)},))
    mpsk.reset_counters()
    with mpsk.config.patch(emulate_metal=True):
        path = mpsk.aoti_compile_and_package(ep, package_path=tmp_path / "ln_softmax.pt2")
    assert dict(mpsk.counters) == {"layer_norm": 1, "softmax": 1}
    cpp = generated_cpp(path)
    assert '"layer_norm_float"' in cpp and '"softmax_float"' in cpp
    assert "mpsk::" not in cpp and "proxy_executor_call_function" not in cpp
    loaded = mpsk.aoti_load_package(path)
    for length in (5, 9):
        x = torch.randn(3, length, 32)
        torch.testing.assert_close(loaded(x), model(x), rtol=TOL, atol=TOL)


def test_without_emulation_the_package_is_plain_inductor_code(tmp_path):
    model, x = Norm(), torch.randn(3, 32)
    mpsk.reset_counters()
    path = mpsk.aoti_compile_and_package(model, (x,), tmp_path / "plain.pt2")
    assert dict(mpsk.counters) == {}
    assert "aoti_torch_mps" not in generated_cpp(path)
    assert not mpsk.aoti.package.needs_emulated_shim(path)
    torch.testing.assert_close(mpsk.aoti_load_package(path)(x), model(x), rtol=TOL, atol=TOL)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda p: mpsk.aoti_compile_and_package(lambda x: x, (torch.ones(1),)), TypeError, "nn.Module or"),
        (lambda p: mpsk.aoti_compile_and_package(Norm(), [torch.ones(1, 32)]), TypeError, "must be a tuple"),
        (lambda p: mpsk.aoti_compile_and_package(Norm(), (torch.ones(1, 32),), p / "x.zip"), ValueError, ".pt2"),
        (lambda p: mpsk.aoti_compile_and_package(Norm(), (torch.ones(1, 32),), 3), TypeError, "package_path"),
        (lambda p: mpsk.aoti_compile_and_package(torch.export.export(Norm(), (torch.ones(1, 32),)), None,
                                                 dynamic_shapes=({0: torch.export.Dim("b")},)), ValueError,
         "ExportedProgram already"),
        (lambda p: mpsk.aoti_load_package(p / "missing.pt2"), FileNotFoundError, "no package"),
        (lambda p: mpsk.aoti_load_package(3), TypeError, "package_path"),
    ],
)
def test_bad_arguments_are_named(tmp_path, call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call(tmp_path)


def test_loading_a_file_that_is_not_a_package(tmp_path):
    bogus = tmp_path / "bogus.pt2"
    bogus.write_text("not a zip")
    with pytest.raises(ValueError, match="not a .pt2 package"):
        mpsk.aoti_load_package(bogus)


@pytest.fixture(scope="module")
def norm_package(tmp_path_factory):
    """A one-kernel (rms_norm) package on the emulator, built once for the tests below."""
    torch.manual_seed(0)
    model, x = Norm(), torch.randn(3, 32)
    with mpsk.config.patch(emulate_metal=True):
        path = mpsk.aoti_compile_and_package(model, (x,), tmp_path_factory.mktemp("norm") / "norm.pt2")
    return model, x, path


def test_a_failed_launch_is_reported_where_a_mac_would_hide_it(norm_package, monkeypatch):
    """A Mac's run_command_block succeeds though a shim call inside it failed (its codes are ignored),
    so a launch that did not run would pass silently. The launch site checks every call's code."""
    from mps_inductor_ext.aoti import emulated_shim
    from mps_inductor_ext.shaders.runtime import KernelFunction

    model, x, path = norm_package
    loaded = mpsk.aoti_load_package(path)
    torch.testing.assert_close(loaded(x), model(x), rtol=TOL, atol=TOL)

    def refuse(self, *args, **kwargs):
        raise ValueError("group size above the pipeline's maxTotalThreadsPerThreadgroup")

    monkeypatch.setattr(KernelFunction, "dispatch", refuse)
    with emulated_shim.mac_faithful(), pytest.raises(RuntimeError):
        loaded(x)
    assert "maxTotalThreadsPerThreadgroup" in emulated_shim.last_error()


TWO_THREADS = """
import sys, threading, torch
import mps_inductor_ext as mpsk
loaded = mpsk.aoti_load_package(sys.argv[1])
x = torch.load(sys.argv[2])
expected = loaded(x)
failures = []
def run():
    try:
        for _ in range(5):
            torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    except Exception as e:
        failures.append(repr(e))
threads = [threading.Thread(target=run) for _ in range(2)]
for t in threads: t.start()
for t in threads: t.join()
print("failures:", failures)
"""


def test_a_loaded_package_runs_from_two_threads(norm_package, tmp_path):
    """libtorch's runner waits for its model instance holding the GIL, and the emulated shim's
    callbacks need the GIL: two threads calling one package deadlocked until its calls were
    serialized by a lock taken before entering C++. Run in a child process, so a deadlock is a
    timeout here rather than a hung test run."""
    _, x, path = norm_package
    torch.save(x, tmp_path / "x.pt")
    proc = subprocess.run([sys.executable, "-c", TWO_THREADS, path, str(tmp_path / "x.pt")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "failures: []" in proc.stdout, proc.stdout
