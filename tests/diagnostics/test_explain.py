"""mps_inductor_ext.diagnostics: explain(), the Report's three forms, MPSK_EXPLAIN and the explain command."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
import torch

from mps_inductor_ext import diagnostics
from mps_inductor_ext.__main__ import main
from mps_inductor_ext.diagnostics import collector as collector_mod

REPO = Path(__file__).resolve().parents[2]

# Each marked line breaks the graph; the tests find the expected line numbers from the markers.
BREAKS_SRC = '''\
import sys
import torch


def f(x):
    y = torch.sin(x) * 2
    print("tracing f")  # BREAK:print
    if y.sum().item() > 0:  # BREAK:item
        y = y + 1
    z = sys.getrefcount(y)  # BREAK:unsupported_builtin
    if y.mean() > 0:  # BREAK:data_dependent_branch
        y = y * z
    return y


def helper(x, n):
    print("n =", n)  # BREAK:print_in_loop
    return x * n


def loop(x):
    for n in (1, 2, 3):
        x = helper(x, n)
    return x


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        h = self.lin(x)  # LINE:linear
        return torch.softmax(h, dim=0)  # LINE:softmax
'''


def marker_lines(src: str) -> dict[str, int]:
    out = {}
    for i, line in enumerate(src.splitlines(), 1):
        for tag in ("BREAK:", "LINE:"):
            if f"# {tag}" in line:
                out[line.split(f"# {tag}", 1)[1].strip()] = i
    return out


LINES = marker_lines(BREAKS_SRC)


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    """The user's code, in a real file so Dynamo and linecache see real lines."""
    path = tmp_path_factory.mktemp("user") / "user_model.py"
    path.write_text(BREAKS_SRC)
    spec = importlib.util.spec_from_file_location("user_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def breaks_report(user_module):
    return diagnostics.explain(user_module.f, torch.ones(4))


@pytest.fixture(scope="module")
def schema():
    s = diagnostics.load_schema()
    jsonschema.Draft202012Validator.check_schema(s)
    return s


def test_each_break_named_with_its_line_and_hint(breaks_report, user_module):
    got = {(b.category, b.location.line) for b in breaks_report.graph_breaks}
    want = {(k, LINES[k]) for k in ("print", "item", "unsupported_builtin", "data_dependent_branch")}
    assert got == want
    assert len(breaks_report.graph_breaks) == 4
    for b in breaks_report.graph_breaks:
        assert b.location.file == user_module.__file__
        assert b.location.function == "f"  # not Dynamo's resume-function names
        assert b.hint
    by_cat = {b.category: b for b in breaks_report.graph_breaks}
    assert "capture_scalar_outputs" in by_cat["item"].hint
    assert "reorderable_logging_functions" in by_cat["print"].hint
    assert "torch.where" in by_cat["data_dependent_branch"].hint
    assert "getrefcount" in by_cat["unsupported_builtin"].explanation
    assert breaks_report.backend == "mpsk"  # the default once the backend is registered
    text = str(breaks_report)
    for k in ("print", "item", "unsupported_builtin", "data_dependent_branch"):
        assert f"user_model.py:{LINES[k]} in f [{k}]" in text
    assert 'print("tracing f")' in text  # the source line itself


def test_graphs_counted_with_op_counts(breaks_report):
    assert len(breaks_report.graphs) >= 4
    assert all(g.op_count and g.aten_op_count for g in breaks_report.graphs)


def test_recompilation_reported_with_the_failed_guard(user_module):
    """The loop's graph break makes Dynamo run `loop` eagerly; helper then recompiles for each n."""
    report = diagnostics.explain(user_module.loop, torch.ones(3))
    assert report.recompilations
    rc = report.recompilations[0]
    assert rc.function == "helper"
    assert any("n == 1" in g for g in rc.guard_failures)
    assert rc.hint
    [b] = report.graph_breaks
    assert (b.category, b.location.line, b.occurrences) == ("print", LINES["print_in_loop"], 3)
    assert any("graph break in loop" in n for n in report.notes)
    assert "guard failed: 1/0: n == 1" in str(report)


def test_float64_hazards_in_inputs_parameters_and_graph(user_module):
    model = user_module.Model().double()
    report = diagnostics.explain(model, torch.randn(2, 8, dtype=torch.float64))
    found = {(h.kind, h.where, h.name) for h in report.hazards}
    assert {("float64", "input", "x"), ("float64", "parameter", "lin.weight"),
            ("float64", "parameter", "lin.bias")} <= found
    graph = [h for h in report.hazards if h.where == "graph"]
    assert {h.location.line for h in graph} == {LINES["linear"], LINES["softmax"]}
    assert not report.graph_breaks
    complex_report = diagnostics.explain(lambda z: z * 2, torch.ones(3, dtype=torch.complex64))
    assert ("complex", "input") in {(h.kind, h.where) for h in complex_report.hazards}


def test_float32_model_has_no_hazards_and_says_kernels_unchecked(user_module):
    report = diagnostics.explain(user_module.Model(), torch.randn(2, 8))
    assert report.hazards == []
    assert any("could not be checked" in n for n in report.notes)


def test_ops_without_mps_kernel_flagged_when_dispatcher_can_tell(user_module, monkeypatch):
    """The dispatcher is asked per ATen op. A CPU build has no MPS kernels at all, so pretending it
    has MPS must flag the model's softmax; on a Mac build the real answer is that softmax has one."""
    assert collector_mod.has_mps_kernel(torch.ops.aten.t.default)  # composite: runs on any device
    mac = torch.backends.mps.is_built()
    monkeypatch.setattr(collector_mod, "mps_dispatch_available", lambda: True)
    report = diagnostics.explain(user_module.Model(), torch.randn(2, 8), backend="capture")
    flagged = {h.op for h in report.hazards if h.kind == "no_mps_kernel"}
    assert ("aten._softmax.default" in flagged) is (not mac)
    assert not any("could not be checked" in n for n in report.notes)


def fake_pass_backend(gm, example_inputs):
    """Stands in for the mpsk backend's pattern passes: reports what a pass would."""
    diagnostics.record_graph(gm, "dynamo")
    for node in gm.graph.nodes:
        if node.op == "call_function" and "linear" in str(node.target):
            diagnostics.record_replacement("layer_norm", node, detail="fake: replaced by mpsk.layer_norm")
        if node.op == "call_function" and "softmax" in str(node.target):
            diagnostics.record_near_miss("softmax", "softmax over dim 0, not the last", node.meta)
    return gm.forward


@pytest.fixture(scope="module")
def fused_report(user_module):
    return diagnostics.explain(user_module.Model(), torch.randn(2, 8), backend=fake_pass_backend)


def test_recorded_replacements_and_near_misses_appear_per_graph(fused_report, schema):
    [g] = fused_report.graphs
    assert [(r.kind, r.location.line) for r in g.replacements] == [("layer_norm", LINES["linear"])]
    assert [(m.kind, m.reason, m.location.line) for m in g.near_misses] == [
        ("softmax", "softmax over dim 0, not the last", LINES["softmax"])]
    text = str(fused_report)
    assert f"replaced layer_norm at user_model.py:{LINES['linear']} in forward" in text
    assert f"near miss softmax at user_model.py:{LINES['softmax']} in forward: softmax over dim 0" in text
    doc = json.loads(fused_report.to_json())
    jsonschema.validate(doc, schema)
    assert doc["graphs"][0]["replacements"][0]["kind"] == "layer_norm"
    assert doc["graphs"][0]["near_misses"][0]["reason"] == "softmax over dim 0, not the last"
    assert fused_report.backend == "fake_pass_backend"


def test_recorders_are_noops_outside_a_collection_and_check_their_arguments():
    diagnostics.record_replacement("rms_norm", None)  # nothing collecting: no effect, no error
    with pytest.raises(ValueError, match="kind"):
        diagnostics.record_replacement("", None)
    with pytest.raises(ValueError, match="reason"):
        diagnostics.record_near_miss("softmax", "  ", None)
    with pytest.raises(TypeError, match="node_meta"), diagnostics.Collector("test"):
        diagnostics.record_replacement("rms_norm", "not a node")
    with pytest.raises(TypeError, match="GraphModule"):
        diagnostics.record_graph(object())
    with pytest.raises(ValueError, match="stage"):
        diagnostics.record_graph(torch.fx.symbolic_trace(lambda x: x + 1), "inductor")


def test_json_validates_and_schema_rejects_malformed(breaks_report, schema):
    doc = json.loads(breaks_report.to_json())
    jsonschema.validate(doc, schema)
    assert doc["graph_break_count"] == 4 and doc["schema_version"] == 1
    assert {b["location"]["line"] for b in doc["graph_breaks"]} == {
        LINES[k] for k in ("print", "item", "unsupported_builtin", "data_dependent_branch")}
    bad = json.loads(breaks_report.to_json())
    bad["graph_breaks"][0]["category"] = "weird"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    del bad["hazards"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_html_written_with_breaks_and_source(breaks_report, tmp_path):
    path = breaks_report.to_html(tmp_path / "report.html")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "http://" not in page.replace("https://meta-pytorch", "") and "<script" not in page
    for k in ("print", "item", "unsupported_builtin", "data_dependent_branch"):
        assert f"user_model.py:{LINES[k]} in f" in page
    assert "print(&quot;tracing f&quot;)" in page  # escaped source line


def chromium_text(path: Path, tmp_path: Path) -> str:
    """The page as a real browser renders it: headless Chromium's DOM after load, tags stripped."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        why = "no chromium browser on this machine (apt-get install -y chromium; .ci/run installs it)"
        if os.environ.get("MPSK_REQUIRE_BROWSER") == "1":  # set by .ci/run: there, a missing browser is a failure
            pytest.fail(why)
        pytest.skip(why)
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
           "--dump-dom", path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", " ", proc.stdout))


def test_html_rendered_in_headless_chromium_shows_breaks_and_fusions(breaks_report, fused_report, tmp_path):
    text = " ".join(chromium_text(breaks_report.to_html(tmp_path / "breaks.html"), tmp_path).split())
    assert "4 graph breaks" in text
    for k in ("print", "item", "unsupported_builtin", "data_dependent_branch"):
        assert f"user_model.py:{LINES[k]} in f {k}" in text
    assert 'print("tracing f")' in text
    text = " ".join(chromium_text(fused_report.to_html(tmp_path / "fused.html"), tmp_path).split())
    assert "replaced layer_norm" in text
    assert "near miss softmax: softmax over dim 0, not the last" in text


def test_bad_inputs_raise_clear_errors(breaks_report, tmp_path, user_module):
    with pytest.raises(TypeError, match="function or nn.Module"):
        diagnostics.explain(42)
    with pytest.raises(ValueError, match="unknown torch.compile backend 'nope'"):
        diagnostics.explain(user_module.f, torch.ones(2), backend="nope")
    with pytest.raises(TypeError, match="already wrapped"):
        diagnostics.explain(torch.compile(user_module.f), torch.ones(2))
    with pytest.raises(OSError, match="cannot write the HTML report"):
        breaks_report.to_html(tmp_path / "missing-dir" / "r.html")
    with pytest.raises(IsADirectoryError):
        breaks_report.to_html(tmp_path)
    with pytest.raises(TypeError, match="file path"):
        breaks_report.to_html(3)


def test_errors_inside_the_function_propagate(user_module):
    with pytest.raises(RuntimeError):
        diagnostics.explain(user_module.Model(), torch.randn(2, 3))  # wrong feature size


# ---------------------------------------------------------------- whole scripts

SCRIPT = '''\
import sys
import torch
{imports}

def step(x):
    y = torch.cos(x)
    print("step")  # BREAK:print
    return y * 2


fn = torch.compile(step, backend="eager")
fn(torch.ones(3))
fn(torch.ones(3, dtype=torch.float64))  # a new dtype: recompiles
print("ARGS", sys.argv[1:])
'''


def run_py(args, env_extra=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != diagnostics.ENV_VAR}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def write_script(tmp_path, imports):
    path = tmp_path / "their_script.py"
    path.write_text(SCRIPT.format(imports=imports))
    return path, marker_lines(SCRIPT.format(imports=imports))["print"]


def check_script_report(text, line):
    assert f"their_script.py:{line} in step [print, 2 times]" in text  # retraced by the recompilation
    assert "guard failed:" in text and "dtype mismatch" in text
    assert "float64: input x (torch.float64)" in text


def test_env_var_prints_report_at_exit(tmp_path):
    script, line = write_script(tmp_path, "import mps_inductor_ext.diagnostics")
    proc = run_py([str(script)], {diagnostics.ENV_VAR: "1"})
    assert proc.returncode == 0, proc.stderr
    assert "[MPSK_EXPLAIN] report for all compilations" in proc.stderr
    check_script_report(proc.stderr, line)
    quiet = run_py([str(script)])
    assert quiet.returncode == 0 and "MPSK_EXPLAIN" not in quiet.stderr and "Graph breaks" not in quiet.stderr


def test_env_var_works_from_the_package_import(tmp_path):
    script, line = write_script(tmp_path, "import mps_inductor_ext")
    proc = run_py([str(script)], {diagnostics.ENV_VAR: "1"})
    check_script_report(proc.stderr, line)


def test_explain_command_runs_an_unmodified_script(tmp_path, schema):
    script, line = write_script(tmp_path, "")
    out_json, out_html = tmp_path / "out.json", tmp_path / "out.html"
    proc = run_py(["-m", "mps_inductor_ext", "explain", str(script), "a1", "--flag",
                   "--json", str(out_json), "--html", str(out_html)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ARGS ['a1', '--flag']" in proc.stdout  # the script's own arguments, ours peeled off
    check_script_report(proc.stdout, line)
    doc = json.loads(out_json.read_text())
    jsonschema.validate(doc, schema)
    assert doc["graph_breaks"][0]["location"]["line"] == line and doc["recompilation_count"] >= 1
    assert f"their_script.py:{line} in step" in out_html.read_text()


def test_explain_command_reports_a_failing_script_and_its_status(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text(textwrap.dedent("""\
        import sys, torch
        torch.compile(lambda x: x + 1, backend="eager")(torch.ones(2))
        sys.exit(3)
    """))
    proc = run_py(["-m", "mps_inductor_ext", "explain", str(script)])
    assert proc.returncode == 3
    assert "0 graph breaks, 1 graph" in proc.stdout


def test_explain_command_bad_arguments(tmp_path, capsys):
    assert main(["explain", str(tmp_path / "nope.py")]) == 2
    assert "no such script" in capsys.readouterr().err
    script, _ = write_script(tmp_path, "")
    assert main(["explain", str(script), "--json", str(tmp_path / "no-dir" / "x.json")]) == 2
    assert "directory does not exist" in capsys.readouterr().err


def test_all_commands_listed(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("demo", "explain", "doctor"))


class _NearMissModel(torch.nn.Module):
    """A softmax over dim 1 and an eager attention with dropout: neither may be replaced."""

    def forward(self, q, k, v, x):
        s = torch.softmax(x, dim=1)
        w = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * 0.125, dim=-1)
        w = torch.nn.functional.dropout(w, p=0.5, training=True)
        return s, torch.matmul(w, v)


def test_near_misses_from_the_real_pattern_passes():
    """The mpsk backend's own passes report both near misses, with their reasons and lines."""
    from mps_inductor_ext import config

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 64, generator=g) for _ in range(3))
    x = torch.randn(3, 5, 7, generator=g)
    with config.patch(emulate_metal=True):
        report = diagnostics.explain(_NearMissModel(), q, k, v, x)
    near = {(n.kind, n.reason) for graph in report.graphs for n in graph.near_misses}
    assert any(kind == "softmax" and "dim 1, not the last" in reason for kind, reason in near), near
    assert any(kind == "attention" and "dropout" in reason and "training" in reason for kind, reason in near), near
    assert all(n.location is not None and n.location.file == __file__
               for graph in report.graphs for n in graph.near_misses)
    data = json.loads(report.to_json())
    reasons = [n["reason"] for graph in data["graphs"] for n in graph["near_misses"]]
    assert any("dim 1" in r for r in reasons) and any("dropout" in r for r in reasons)
