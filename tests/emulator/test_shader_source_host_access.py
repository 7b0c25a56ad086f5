"""Shader source reaches no host file: only Metal's and torch's c10/metal headers are included,
`#embed` is refused, the compiler reads nothing from stdin and is stopped if it hangs, and no
error quotes a host file."""

import os
import threading

import pytest

from mps_inductor_ext.shaders import compile_shader
from mps_inductor_ext.shaders.emulator import toolchain

BODY = "kernel void k(device float* o [[buffer(0)]], uint i [[thread_position_in_grid]]) { o[i] = 1; }\n"
HOST_FILE = "/etc/passwd"


def _host_lines() -> list[str]:
    with open(HOST_FILE) as f:
        return [line.strip() for line in f if len(line.strip()) > 8]


@pytest.mark.parametrize(
    "include, match",
    [
        (f'#include "{HOST_FILE}"', r"'#include' of '/etc/passwd': shaders may include only Metal's headers"),
        ("#include <c10/metal/../../../../../../../../etc/passwd>", r"'#include' of 'c10/metal/\.\./"),
        ('#include "/dev/stdin"', r"'#include' of '/dev/stdin'"),
        ('#define HOST "/etc/passwd"\n#include HOST', r"computed '#include'"),
        (f"#import \"{HOST_FILE}\"", r"'#import' is not supported"),
        ('const char bytes[] = {\n#embed "/etc/passwd"\n};', r"'#embed' is not supported"),
    ],
)
def test_host_files_are_not_included(include, match):
    if not os.path.isfile(HOST_FILE):
        pytest.skip(f"{HOST_FILE} is absent, so nothing could leak from it")
    with pytest.raises(SyntaxError) as err:
        compile_shader(include + "\n#include <metal_stdlib>\nusing namespace metal;\n" + BODY, backend="cpu")
    assert err.match(match)
    text = str(err.value)
    assert not any(line in text for line in _host_lines()), "the error quotes the host file"


def test_what_the_preprocessor_read_is_checked_too():
    """Below the source check (a library built straight from source): the preprocessor's own
    record of the files it read names the host file, and the error does not quote it."""
    if not os.path.isfile(HOST_FILE):
        pytest.skip(f"{HOST_FILE} is absent, so nothing could leak from it")
    with pytest.raises(SyntaxError, match=r"refers to '/etc/passwd'") as err:
        toolchain.build('#define HOST "/etc/passwd"\n#include HOST\n' + BODY)
    assert not any(line in str(err.value) for line in _host_lines())


def test_the_compiler_reads_nothing_from_stdin(tmp_path):
    """A compiler told to read stdin gets end-of-file at once, however this process's stdin is
    connected (here: a pipe nobody writes, which would block it forever)."""
    read, write = os.pipe()
    os.write(write, b"int x;\n")  # what the compiler must not see (the pipe stays open: no end-of-file)
    saved = os.dup(0)
    os.dup2(read, 0)
    result = []
    worker = threading.Thread(target=lambda: result.append(toolchain._clang(["-E", "-x", "c++", "-"], str(tmp_path))))
    try:
        worker.start()
        worker.join(30)
        finished = not worker.is_alive()
    finally:
        os.dup2(saved, 0)
        os.close(write)  # unblocks a compiler that did read the pipe
        os.close(read)
        os.close(saved)
        worker.join()
    assert finished, "the compiler waited for stdin"
    assert len(result) == 1 and "int x" not in result[0]


def test_a_compiler_that_does_not_finish_is_stopped(monkeypatch):
    monkeypatch.setattr(toolchain, "COMPILE_TIMEOUT_S", 0.001)
    with pytest.raises(TimeoutError, match=r"did not finish in 0\.001 s"):
        toolchain.build("// a source never built before: stopped\n#include <metal_stdlib>\n" + BODY)
