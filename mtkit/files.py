"""Putting files in place: whatever mtkit writes for a user arrives whole or not at all.

Every writer goes through here: checkpoints, tokenizer models, the data cache, corpora,
translations, CTranslate2 exports, manifests, configs, pictures, metrics rewrites. New content is
written to a file without a name in the target's folder (Linux's O_TMPFILE; elsewhere a named
`.NAME.PID-XXXX.tmp`), fsynced, given a temporary name, renamed onto the target, and the folder
is fsynced: a crash at any moment leaves the old file or the new one, never a mix, and a process
killed while writing leaves no file behind. A temporary name left by a process killed between
naming and renaming is removed by the next write of that name (`sweep`). A directory (an export)
is filled under `.NAME.PID-XXXX.tmp` and swapped in with one atomic exchange where the system has
one (Linux's renameat2), else with two renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mtkit.errors import OutputError

TMP_SUFFIX = ".tmp"
_RENAME_EXCHANGE = 2  # renameat2 flag, linux/fs.h
_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000  # linux/fcntl.h


def writable_dir(folder: str | Path, what: str, for_path: Path | None = None) -> Path:
    """Create `folder` (and its parents) if missing and check that files can be made in it; run it
    before any work, so a bad output path fails at once, not after the work. `what` names the option
    or key that gave the path in the error (e.g. "-o", "run_dir"); `for_path`: the file or folder
    to be put in `folder`, which the error names."""
    folder = Path(folder)
    said = f"{what} {folder}: " if for_path is None else f"{what} {for_path}: its folder {folder} "
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{said}exists and is not a folder; choose another path") from None
    except OSError as e:
        raise OutputError(f"{said}cannot be created ({e.strerror}); choose a writable place") from None
    try:
        with tempfile.TemporaryFile(dir=folder):  # the one sure test (a permission check misses /proc, ...)
            pass
    except OSError as e:
        raise OutputError(f"{said}cannot be written in ({e.strerror}); choose a writable place") from None
    return folder


def writable_file(path: str | Path, what: str) -> Path:
    """`path`, after writable_dir made its folder: a file can be put there (a folder there cannot be replaced)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder; give a file name")
    writable_dir(path.absolute().parent, what, for_path=path)
    return path


@contextlib.contextmanager
def replacing(path: str | Path, text: bool = False) -> Iterator[IO]:
    """An open file (binary, or UTF-8 text with "\\n" line ends) whose content becomes `path` when the
    block ends without an error; on an error `path` is left as it was and nothing is left behind."""
    new = _NewFile(Path(path), text)
    try:
        yield new.file
        new.place()
    finally:
        new.discard()
    fsync_dir(new.path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    with replacing(path) as f:
        f.write(data)


def write_all(contents: dict[Path, bytes]) -> None:
    """Several files that belong together (a corpus's six files): all are written and fsynced before
    the first is renamed into place, and the renames follow one another at once, so a crash while
    writing leaves every old file; only a crash between two renames can mix old and new."""
    staged: list[_NewFile] = []
    try:
        for path, data in contents.items():
            staged.append(new := _NewFile(Path(path)))
            new.file.write(data)
            new.file.flush()
            os.fsync(new.file.fileno())
        for new in staged:
            new.place()
    finally:
        for new in staged:
            new.discard()
    for folder in {new.path.parent for new in staged}:
        fsync_dir(folder)


def write_text(path: str | Path, text: str) -> None:
    with replacing(path, text=True) as f:
        f.write(text)


def link(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src`: a hard link (no extra disk) where the filesystem allows,
    else a copy; atomically either way. (The link has a temporary name until it is renamed onto
    `dst`: a process killed in between leaves it, for the next link of that name to remove.)"""
    dst = Path(dst)
    sweep(dst)
    tmp = _temp_name(dst)
    try:
        os.link(src, tmp)
    except OSError:
        with replacing(dst) as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out)
        return
    try:
        _before_place(tmp, dst)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dst.parent)


@contextlib.contextmanager
def replacing_dir(path: str | Path) -> Iterator[Path]:
    """An empty directory to fill; it becomes `path` (replacing a file or directory there) when the
    block ends without an error, otherwise it is removed and `path` is left as it was."""
    path = Path(path)
    sweep(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(**_temp_naming(path)))
    except OSError as e:  # about `path`, not the temporary name the user never gave
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.chmod(tmp, 0o777 & ~_umask())  # as mkdir would make it (mkdtemp: 0700)
    try:
        yield tmp
        for folder, _, names in os.walk(tmp):
            for name in names:
                with open(os.path.join(folder, name), "rb") as f:
                    os.fsync(f.fileno())
            fsync_dir(Path(folder))
        _before_place(tmp, path)
        if not path.exists() and not path.is_symlink():
            os.rename(tmp, path)
        elif _exchange(tmp, path):  # tmp now holds the old content
            _remove(tmp)
        else:  # no atomic exchange here: the old one steps aside first
            old = _temp_name(path)
            os.rename(path, old)
            os.rename(tmp, path)
            _remove(old)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            _remove(tmp)


def sweep(path: str | Path) -> list[Path]:
    """Remove the temporaries of `path` (`.NAME.PID-XXXX.tmp`) whose process has ended; returns them."""
    path = Path(path)
    gone = []
    for tmp in path.parent.glob(f".{_glob_escape(path.name)}.*{TMP_SUFFIX}"):
        pid = tmp.name[len(path.name) + 2:].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove(tmp)
            gone.append(tmp)
    return gone


class _NewFile:
    """New content for `path`, written where no reader looks until `place` renames it onto `path`."""

    def __init__(self, path: Path, text: bool = False) -> None:
        self.path = path
        sweep(path)
        try:
            fd, self.named = _new_file(path)
        except OSError as e:  # about `path`, not the temporary name the user never gave
            raise OSError(e.errno, e.strerror, str(path)) from None
        self.file = os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8", "newline": "\n"} if text else {}))

    def place(self) -> None:
        """fsync the content, then rename it onto the path (the folder's fsync is the caller's)."""
        self.file.flush()
        os.fsync(self.file.fileno())
        _before_place(self.named, self.path)
        if self.named is None:
            self.named = _name_anonymous(self.file.fileno(), self.path)
        os.replace(self.named, self.path)
        self.named = None

    def discard(self) -> None:
        """Close the file; remove its temporary name if it was not placed."""
        self.file.close()
        if self.named is not None:
            self.named.unlink(missing_ok=True)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be fsynced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def _before_place(tmp: Path | None, final: Path) -> None:
    """Does nothing; tests replace it to crash or fill the disk between writing and renaming."""


def _new_file(path: Path) -> tuple[int, Path | None]:
    """(fd, None) for a file without a name in path's folder, or (fd, its temporary name)."""
    if _naming(path.parent) is not None:
        return os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o666), None  # the umask applies
    fd, name = tempfile.mkstemp(**_temp_naming(path))
    os.fchmod(fd, 0o666 & ~_umask())  # as a plain open() would create it (mkstemp: 0600)
    return fd, Path(name)


def _name_anonymous(fd: int, path: Path) -> Path:
    """Give a file without a name (O_TMPFILE) a temporary name beside `path`."""
    tmp = _temp_name(path)
    _LINKERS[_naming(path.parent)](fd, tmp)
    return tmp


def _link_empty_path(fd: int, new: Path) -> None:
    """linkat(fd, "", new, AT_EMPTY_PATH)."""
    if _libc().linkat(fd, b"", _AT_FDCWD, os.fsencode(new), _AT_EMPTY_PATH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(new))


def _link_proc(fd: int, new: Path) -> None:
    os.link(f"/proc/self/fd/{fd}", new, follow_symlinks=True)


_LINKERS = {"empty_path": _link_empty_path, "proc": _link_proc}
_NAMING: dict[int, str | None] = {}  # device -> how files without a name get one there (None: they cannot)


def _naming(folder: Path) -> str | None:
    """How a file without a name gets one in `folder`'s filesystem, tried once per device: linkat with
    AT_EMPTY_PATH (needs privileges on older kernels), or through /proc/self/fd; None where neither works
    or O_TMPFILE is missing (then named temporaries are used)."""
    try:
        device = folder.stat().st_dev
    except OSError:
        return None
    if device not in _NAMING:
        _NAMING[device] = None
        for method, linker in ([] if not hasattr(os, "O_TMPFILE") else _LINKERS.items()):
            try:
                fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600)
            except OSError:
                break
            probe = _temp_name(folder / "probe")
            try:
                linker(fd, probe)
                _NAMING[device] = method
                break
            except OSError:
                continue
            finally:
                os.close(fd)
                probe.unlink(missing_ok=True)
    return _NAMING[device]


def _temp_naming(path: Path) -> dict[str, Any]:
    """tempfile's arguments for a temporary of `path`: `.NAME.PID-XXXX.tmp` beside it (what `sweep` reads)."""
    return {"prefix": f".{path.name}.{os.getpid()}-", "suffix": TMP_SUFFIX, "dir": path.parent}


def _temp_name(path: Path) -> Path:
    """A free name `.NAME.PID-XXXX.tmp` beside `path`."""
    fd, name = tempfile.mkstemp(**_temp_naming(path))
    os.close(fd)
    os.unlink(name)
    return Path(name)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        renameat2 = _libc().renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _umask() -> int:
    """The process's umask, read without changing it (Linux); else by setting it back at once."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
