"""The emulator's library cache: private whatever the umask, never loading what someone else could
have written, healing damaged entries, safe under concurrency, and clear about full or unusable
directories (issue 12). Libraries in it are dlopened, so a planted one would run as the user."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
import torch

from mps_inductor_ext.shaders.emulator import cache, toolchain
from mps_inductor_ext.shaders.emulator.library import EmulatedLibrary


def source() -> str:
    """A kernel source no earlier test built (the comment changes its cache key)."""
    return f"""// {uuid.uuid4()}
#include <metal_stdlib>
using namespace metal;
kernel void twice(device float* out [[buffer(0)]], constant float* x [[buffer(1)]],
                  uint i [[thread_position_in_grid]]) {{ out[i] = 2 * x[i]; }}
"""


def runs(src: str) -> bool:
    x = torch.arange(8, dtype=torch.float32)
    out = torch.full_like(x, float("nan"))
    EmulatedLibrary(src).twice(out, x)
    return torch.equal(out, 2 * x)


@pytest.fixture
def cache_at(tmp_path, monkeypatch):
    """Points MPSK_CACHE_DIR at a not yet existing folder two levels down."""
    folder = tmp_path / "a" / "b" / "emulator"
    monkeypatch.setenv(cache.VARIABLE, str(folder))
    return folder


def plant(path: Path, marker: Path) -> None:
    """A shared library at `path` whose constructor writes `marker` when it is loaded."""
    c = path.parent / "planted.c"
    c.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void run(void) {{\n'
                 f'  FILE* f = fopen("{marker}", "w"); if (f) fclose(f);\n}}\n')
    subprocess.run(["gcc", "-shared", "-fPIC", str(c), "-o", str(path)], check=True)
    c.unlink()


def test_the_cache_is_private_whatever_the_umask(cache_at):
    before = os.umask(0o002)
    try:
        src = source()
        path = toolchain.build(src)
    finally:
        os.umask(before)
    for folder in (cache_at, cache_at.parent, cache_at.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert runs(src)


def test_a_cache_others_can_write_is_refused_and_a_planted_library_never_runs(cache_at, tmp_path):
    cache_at.mkdir(parents=True)
    cache_at.chmod(0o777)
    src, marker = source(), tmp_path / "planted-code-ran"
    plant(toolchain.library_path(src), marker)
    with pytest.raises(cache.UntrustedCacheError, match=r"writable by other users .*MPSK_CACHE_DIR"):
        EmulatedLibrary(src)
    assert not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_an_entry_owned_by_another_user_is_refused(cache_at, tmp_path):
    cache_at.mkdir(parents=True, mode=0o700)
    src, marker = source(), tmp_path / "planted-code-ran"
    target = toolchain.library_path(src)
    plant(target, marker)
    os.chown(target, 65534, 65534)
    with pytest.raises(cache.UntrustedCacheError, match="belongs to user 65534"):
        EmulatedLibrary(src)
    assert not marker.exists()


def test_symlinks_neither_stand_in_for_entries_nor_redirect_writes(cache_at, tmp_path):
    cache_at.mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    src = source()
    target = toolchain.library_path(src)
    # The staging names an attacker could predict (the old scheme: <key>.<pid>.<thread>.tmp).
    for name in (f"{target.stem}.{os.getpid()}.tmp", f"{target.stem}.{os.getpid()}.{threading.get_ident()}.tmp"):
        (cache_at / name).symlink_to(victim)
    assert runs(src)
    assert victim.read_text() == "untouched"
    other = source()
    toolchain.library_path(other).symlink_to(target)
    with pytest.raises(cache.UntrustedCacheError, match="not a regular file"):
        EmulatedLibrary(other)


@pytest.mark.parametrize("damage", ["empty", "zeroed header", "truncated", "changed inside", "one byte changed"])
def test_a_damaged_entry_is_rebuilt_not_loaded(cache_at, damage):
    """Loading a damaged library can kill the process (or give wrong results) before any of its code
    runs, so every entry is checked against the digest recorded when it was built."""
    src = source()
    path = toolchain.build(src)
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "zeroed header":
        path.write_bytes(bytes(64) + data[64:])
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "changed inside":  # headers kept, everything after them overwritten
        path.write_bytes(data[:64] + b"\xcc" * (len(data) - 64 - 4096) + data[-4096:])
    else:
        path.write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    damaged = path.read_bytes()
    assert toolchain.build(src) == path and cache.lookup(path)
    assert path.read_bytes() != damaged and path.stat().st_size > 64  # rebuilt (builds differ in a few bytes)
    assert runs(src)


def test_two_threads_building_one_new_source_both_succeed(cache_at):
    src, errors, paths = source(), [], []

    def build():
        try:
            paths.append(toolchain.build(src))
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(paths)) == 1
    assert runs(src)
    assert not list(cache_at.glob("*.tmp"))


def test_a_cache_path_that_is_a_file_is_named(tmp_path, monkeypatch):
    file = tmp_path / "not-a-folder"
    file.write_text("")
    monkeypatch.setenv(cache.VARIABLE, str(file))
    with pytest.raises(NotADirectoryError, match=r"is not a directory; set MPSK_CACHE_DIR"):
        toolchain.build(source())
    monkeypatch.setenv(cache.VARIABLE, str(file / "below"))
    with pytest.raises(NotADirectoryError, match=r"cannot be created: .* is a file"):
        toolchain.build(source())


@pytest.mark.parametrize("code,kind,words", [
    (errno.ENOSPC, OSError, "no space left"),
    (errno.EROFS, PermissionError, "is not writable"),
])
def test_a_full_or_read_only_cache_is_named_and_leaves_nothing_behind(cache_at, monkeypatch, code, kind, words):
    def fail(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(cache.os, "replace", fail)
    with pytest.raises(kind, match=rf"{words}.*MPSK_CACHE_DIR"):
        toolchain.build(source())
    assert list(cache_at.iterdir()) == []



def test_the_cache_is_bounded_least_recently_used_first(cache_at, monkeypatch):
    first, second, third = source(), source(), source()
    old = toolchain.build(first)
    newer = toolchain.build(second)
    os.utime(old, (1, 1))  # `first` was used long ago
    budget = old.stat().st_size + newer.stat().st_size + 4096  # room for two of the three
    monkeypatch.setattr(cache, "max_bytes", lambda: budget)
    newest = toolchain.build(third)
    assert newest.exists() and newer.exists() and not old.exists()
    assert runs(first)  # rebuilt on demand


def test_the_bound_must_be_a_positive_size(monkeypatch):
    monkeypatch.setenv(cache.SIZE_VARIABLE, "lots")
    with pytest.raises(ValueError, match="MPSK_CACHE_MAX_MB must be a positive number"):
        cache.max_bytes()
