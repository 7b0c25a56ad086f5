"""The on-disk cache of built libraries, which must be as trusted as the package itself.

Loading a cached library runs its code, so:
- the cache directory must be owned by this user and writable by no one else (checked every time
  it is used; created 0700 whatever the umask);
- an entry is used only if it is a regular file (not a symlink) owned by this user, writable by
  no one else, and, for a library, a whole ELF file whose bytes match the digest stored after
  them when it was built (the loader ignores bytes past the ELF contents); a truncated, zeroed or
  otherwise changed entry is removed and rebuilt rather than loaded, since loading a damaged
  library can crash the process before any of its code is ours to contain;
- entries are written whole through a staging file with an unpredictable name, created
  exclusively (so a planted symlink cannot redirect the write), and renamed into place;
- a full disk, a read-only cache or an MPSK_CACHE_DIR that is not a directory are errors that
  name the directory and the variable;
- it is bounded (MPSK_CACHE_MAX_MB, default 2048): storing past the bound removes the entries
  least recently used (every distinct eps or scale specializes a library of its own).

The cache lives in $MPSK_CACHE_DIR, else $XDG_CACHE_HOME/mps_inductor_ext/emulator, else
~/.cache/mps_inductor_ext/emulator.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
import tempfile
from pathlib import Path

VARIABLE = "MPSK_CACHE_DIR"
SIZE_VARIABLE = "MPSK_CACHE_MAX_MB"
DEFAULT_MAX_MB = 2048
_ELF_MAGIC = b"\x7fELF"
# What store() appends to a library: this marker, then the SHA-256 of every byte before it.
_DIGEST_MARKER = b"\0mpsk-sha256\0"
_TRAILER_BYTES = len(_DIGEST_MARKER) + 32


class UntrustedCacheError(PermissionError):
    """The cache directory or an entry in it could have been written by someone else."""


def cache_dir() -> Path:
    env = os.environ.get(VARIABLE)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mps_inductor_ext" / "emulator"


def _where(path: Path) -> str:
    how = f"${VARIABLE}" if os.environ.get(VARIABLE) else f"the default (set {VARIABLE} to move it)"
    return f"the emulator's cache {path} ({how})"


def _check_owned(path: Path, st: os.stat_result, what: str) -> None:
    if st.st_uid != os.geteuid():
        raise UntrustedCacheError(f"mpsk: {what} {path} belongs to user {st.st_uid}, not to you ({os.geteuid()}); "
                                  f"its code would run as you. Use a cache of your own ({VARIABLE}).")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = f"{stat.S_IMODE(st.st_mode):o}"
        raise UntrustedCacheError(f"mpsk: {what} {path} is writable by other users (mode {mode}), so anyone could "
                                  f"plant code in it; run `chmod go-w {path}` or set {VARIABLE} to a private directory")


def directory() -> Path:
    """The cache directory, created private if missing, checked to be this user's alone."""
    path = cache_dir()
    try:
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for p in reversed(missing):  # the ones this package creates are private
            try:
                os.mkdir(p, 0o700)
            except FileExistsError:
                continue  # created meanwhile by another process; the leaf is checked below
            os.chmod(p, 0o700)  # mkdir's mode is filtered by the umask
    except NotADirectoryError as e:
        raise NotADirectoryError(f"mpsk: {_where(path)} cannot be created: {e.filename} is a file") from None
    except PermissionError as e:
        raise PermissionError(f"mpsk: {_where(path)} cannot be created ({e.strerror}); set {VARIABLE} to a "
                              f"writable directory") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise NotADirectoryError(f"mpsk: {_where(path)} is {kind}; set {VARIABLE} to a directory of your own")
    _check_owned(path, st, "the cache directory")
    return path


def _whole_elf(path: Path, size: int) -> bool:
    """A 64-bit little-endian ELF file no shorter than its own section header table says."""
    with open(path, "rb") as f:
        header = f.read(64)
    if len(header) < 64 or header[:4] != _ELF_MAGIC or header[4] != 2 or header[5] != 1:
        return False
    (shoff,) = struct.unpack_from("<Q", header, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", header, 0x3A)
    return shoff + shentsize * shnum <= size


def _with_digest(data: bytes) -> bytes:
    """A library's bytes followed by the marker and their digest; other entries unchanged."""
    if not data.startswith(_ELF_MAGIC):
        return data
    return data + _DIGEST_MARKER + hashlib.sha256(data).digest()


def _digest_matches(path: Path) -> bool:
    """Whether the library at `path` ends with the digest of the bytes before it."""
    data = path.read_bytes()
    body, marker, digest = data[:-_TRAILER_BYTES], data[-_TRAILER_BYTES:-32], data[-32:]
    return marker == _DIGEST_MARKER and hashlib.sha256(body).digest() == digest


def lookup(path: Path, library: bool = True) -> bool:
    """Whether `path` holds a usable entry. A damaged one (empty, truncated, not ELF) is removed so it
    is rebuilt; one that someone else could have written is an error, never loaded."""
    directory()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedCacheError(f"mpsk: cache entry {path} is not a regular file (a symlink?); remove it")
    _check_owned(path, st, "cache entry")
    if library and not (_whole_elf(path, st.st_size) and _digest_matches(path)):
        path.unlink(missing_ok=True)
        return False
    os.utime(path)  # recently used: the last to go when the cache is pruned
    return True


def max_bytes() -> int:
    raw = os.environ.get(SIZE_VARIABLE, "").strip() or str(DEFAULT_MAX_MB)
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{SIZE_VARIABLE} must be a positive number of megabytes, got {raw!r}")
    return int(raw) << 20


def prune(keep: Path) -> None:
    """Removes the least recently used entries of the cache directory until it fits max_bytes(),
    never `keep` (the entry just stored). A library already loaded stays mapped in its process."""
    limit = max_bytes()
    entries = []
    for p in cache_dir().iterdir():
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and not p.name.startswith("."):
            entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries):
        if total <= limit:
            break
        if p != keep:
            p.unlink(missing_ok=True)
            total -= size


def store(path: Path, data: bytes) -> None:
    """Writes `path` whole: an exclusively created staging file beside it, renamed into place (mode
    0644 whatever the umask). Inside the cache directory, that directory is checked first."""
    folder = directory() if path.parent == cache_dir() else path.parent
    staged = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, staged = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(_with_digest(data))
        os.replace(staged, path)
        if folder == cache_dir():
            prune(keep=path)
    except OSError as e:
        if staged is not None:
            Path(staged).unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, f"mpsk: no space left for {_where(folder)}; free some, or set {VARIABLE} "
                                   f"elsewhere") from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise PermissionError(e.errno, f"mpsk: {_where(folder)} is not writable ({e.strerror}); set "
                                           f"{VARIABLE} to a writable directory") from None
        raise
