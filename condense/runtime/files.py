"""Files that cannot hurt: the one reading path for HDF5 files and the one writing path for outputs.

Every file a user is handed (a set, a teacher, a store, relabelled labels) may be hostile, and
every output may meet a full or read-only disk, a planted symlink or a second run. The rules
(docs/ARCHITECTURE.md, "File safety"):

Reading (:func:`open_h5`)
    Only a regular file is opened. Every link in it must be a hard link (soft and external links
    are refused before anything follows them); every dataset must keep its bytes inside the file
    (external raw storage and virtual datasets are refused), hold numbers (no references, strings
    or opaque data), use only the standard filters (deflate, shuffle, fletcher32, lzf), and store
    as many bytes as its declared shape needs (a compressed one at most :data:`MAX_RATIO` times
    fewer), so a declared shape can never make a small file allocate or decode much more than
    its own size. :func:`dataset` then checks a dataset's shape and kind against what the reader
    expects before a byte is read.
Writing (:func:`replacing`, :func:`write_h5`, :func:`write_torch`, :func:`append_line`)
    An output is written to a fresh temporary file of ours in its folder (created exclusively,
    so never through a planted symlink) and renamed over the final name, which replaces a
    symlink there rather than writing through it. HDF5 files are built in memory and written
    with plain writes: a full disk is an ordinary error, never a crash inside the HDF5 library.
    Any OSError (no space, read-only, no permission) becomes one :class:`WriteError` line naming
    the path; the temporary file is removed and an earlier file under the final name is intact.
    Appending (logs, ``jobs.jsonl``) refuses a symlink or anything but a regular file.
Locking (:func:`output_lock`)
    A run holds an exclusive lock on its output for its whole life: a second run on the same
    output gets one line naming the holder. The lock is released when the process ends, killed
    or not.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import socket
import stat
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from .errors import CondenseError, FormatError

# A deflate stream inflates at most ~1032 times; a compressed dataset declaring more than this
# many times its stored bytes is lying about its shape.
MAX_RATIO = 1100
# Filters a condense file may use (HDF5 filter ids): deflate, shuffle, fletcher32, lzf. Any
# other id would make HDF5 look for a plugin library.
SAFE_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}
# Our files hold tens to a few thousand objects (a ResNet teacher's weights); a file with more
# is refused before its walk can take long.
MAX_OBJECTS = 100_000
NUMERIC_KINDS = "biuf"


class WriteError(CondenseError):
    """An output could not be written (no space, read-only, no permission, a symlink in the way)."""


def _reason(e: OSError) -> str:
    """An OSError's reason, one line (HDF5 puts whole reports into its messages)."""
    text = e.strerror or (str(e).splitlines()[0] if str(e) else type(e).__name__)
    return {errno.ELOOP: "it is a symbolic link (refusing to follow it)"}.get(e.errno, text)


# --- reading -----------------------------------------------------------------------------------

def regular_file(path: str | os.PathLike, what: str, *, follow: bool = True) -> Path:
    """``path`` as a Path if it names a regular file; FormatError otherwise: a FIFO or device
    would block or never end. A symlink is followed when the user named it (``follow``), refused
    inside a folder of ours (a store), where it could make us read a file nobody named."""
    path = Path(path)
    try:
        if not follow and path.is_symlink():
            raise FormatError(f"{path} is a symbolic link (not followed: it could read a file nobody named)")
        st = os.stat(path)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot read it ({_reason(e)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{path} is not a regular file (expected a {what} file)")
    return path


def _check_dataset(name: str, ds: Any) -> None:
    """Refuse a dataset whose bytes live outside the file, are not numbers, or are fewer than its
    shape declares (see the module docstring)."""
    import h5py

    plist = ds.id.get_create_plist()
    if ds.is_virtual:
        raise FormatError(f"'{name}' is a virtual dataset (refused: it reads other files)")
    if plist.get_external_count():
        raise FormatError(f"'{name}' keeps its data in an external file (refused: it reads other files)")
    if ds.dtype.kind not in NUMERIC_KINDS or ds.dtype.fields is not None or ds.dtype.subdtype is not None:
        raise FormatError(f"'{name}' holds {ds.dtype} data, not numbers")
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    unknown = [f for f in filters if f not in SAFE_FILTERS]
    if unknown:
        raise FormatError(f"'{name}' uses HDF5 filter {unknown[0]} (only {', '.join(SAFE_FILTERS.values())} are read)")
    declared = int(np.prod(ds.shape, dtype=np.float64)) * ds.dtype.itemsize if ds.shape is not None else 0
    stored = ds.id.get_storage_size()
    compressed = any(f in (1, 32000) for f in filters)
    if plist.get_layout() == h5py.h5d.COMPACT:
        stored = declared if declared <= 64 * 1024 else 0  # compact data lives in the header, at most 64 KiB
    if declared > stored * (MAX_RATIO if compressed else 1):
        raise FormatError(f"'{name}' declares shape {ds.shape} ({declared:,} bytes) but stores {stored:,} bytes "
                          "(truncated or forged)")


def check_h5(f: Any) -> None:
    """Walk every link of the open HDF5 file ``f`` without following any, refusing what
    :func:`open_h5` promises to refuse (FormatError naming the object)."""
    import h5py

    links: list[tuple[str, Any]] = []

    def visit(name: str, link: Any) -> bool | None:
        links.append((name, link))
        return True if len(links) > MAX_OBJECTS else None  # a true value stops the walk

    # Exceptions do not cross HDF5's iteration callback cleanly: collect, then judge.
    f.visititems_links(visit)
    if len(links) > MAX_OBJECTS:
        raise FormatError(f"more than {MAX_OBJECTS:,} objects (not a condense file)")
    for name, link in links:
        if isinstance(link, h5py.ExternalLink):
            raise FormatError(f"'{name}' is an external link to {link.filename} (refused: it reads other files)")
        if not isinstance(link, h5py.HardLink):
            raise FormatError(f"'{name}' is a {type(link).__name__} (only hard links are read)")
    for name, _ in links:
        obj = f[name]
        # One name per object: a dataset linked under a thousand names would be read a thousand times.
        names = h5py.h5o.get_info(obj.id).rc
        if names != 1:
            raise FormatError(f"'{name}' has {names} names (condense files name each object once)")
        if isinstance(obj, h5py.Dataset):
            _check_dataset(name, obj)


def check_torch_file(path: str | os.PathLike, what: str) -> Path:
    """Refuse, before ``torch.load``, a torch zip file whose members are compressed (``torch.save``
    never compresses; a deflated member can inflate a thousandfold) or declare more bytes than
    the file holds. Returns ``path`` (a regular file)."""
    import zipfile

    path = regular_file(path, what)
    if zipfile.is_zipfile(path):
        size = path.stat().st_size
        try:
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise FormatError(f"{path}: not a readable torch file ({type(e).__name__})") from None
        if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
            raise FormatError(f"{path}: a compressed torch archive (torch.save writes none; refused)")
        if sum(i.file_size for i in infos) > size:
            raise FormatError(f"{path}: its members declare more bytes than the file holds (truncated or forged)")
    return path


@contextmanager
def open_h5(path: str | os.PathLike, what: str) -> Iterator[Any]:
    """The HDF5 file ``path`` opened read-only and checked (:func:`check_h5`), closed after the
    block. A missing, unreadable, corrupt or refused file, and a FormatError, KeyError,
    ValueError or OSError of the block, are one FormatError line naming the file and ``what``."""
    import h5py

    path = regular_file(path, what)
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError:
        raise FormatError(f"{path} is not a readable HDF5 file (truncated or not a {what})") from None
    try:
        with f:
            check_h5(f)
            yield f
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from None
    except (KeyError, ValueError, TypeError, OSError, RuntimeError, IndexError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise FormatError(f"{path}: corrupt {what} file ({type(e).__name__}: {first[:200]})") from None


def read_h5(path: str | os.PathLike, read: Callable[[Any], Any], what: str) -> Any:
    """``read(f)`` on the checked HDF5 file ``path`` (:func:`open_h5`)."""
    with open_h5(path, what) as f:
        return read(f)


def dataset(group: Any, name: str, shape: tuple[int | None, ...] | None = None, kinds: str = NUMERIC_KINDS,
            dtype: Any = None) -> np.ndarray:
    """Dataset ``name`` of ``group`` read as an array, after checking it is a dataset of ``shape``
    (None entries: any size; None: any shape) and of a dtype kind in ``kinds`` (``"f"``: floats,
    ``"iu"``: integers...); ``dtype`` converts it. FormatError before reading otherwise."""
    import h5py

    ds = group.get(name)
    if ds is None:
        raise FormatError(f"missing '{name}': the file is corrupt or truncated")
    if not isinstance(ds, h5py.Dataset):
        raise FormatError(f"'{name}' is not a dataset")
    if ds.dtype.kind not in kinds:
        raise FormatError(f"'{name}' holds {ds.dtype} values, expected {_kind_words(kinds)}")
    if shape is not None:
        got = tuple(ds.shape or ())
        if len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise FormatError(f"'{name}' has shape {list(got)}, expected {want}")
    return np.asarray(ds[()], dtype=dtype)


def _kind_words(kinds: str) -> str:
    words = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats"}
    return " or ".join(dict.fromkeys(words[k] for k in kinds))


def attr(obj: Any, name: str, kind: type, *, default: Any = ...) -> Any:
    """Attribute ``name`` of an HDF5 object as ``kind`` (str, int, float, list, bool); a missing
    one is ``default`` if given, FormatError otherwise, as is one that is not a ``kind``."""
    if name not in obj.attrs:
        if default is ...:
            raise FormatError(f"missing attribute '{name}': the file is corrupt or not a condense file")
        return default
    value = obj.attrs[name]
    try:
        if kind is str:
            if isinstance(value, bytes):
                value = value.decode()
            if not isinstance(value, str):
                raise TypeError
            return value
        if kind is list:
            arr = np.asarray(value)
            if arr.ndim != 1 or arr.dtype.kind not in NUMERIC_KINDS:
                raise TypeError
            return arr.tolist()
        arr = np.asarray(value)
        if arr.ndim != 0 or arr.dtype.kind not in NUMERIC_KINDS:
            raise TypeError
        if kind is int:
            if arr.dtype.kind == "f" and not float(arr).is_integer():
                raise TypeError
            return int(arr)
        return kind(arr.item())
    except (TypeError, ValueError, UnicodeDecodeError):
        raise FormatError(f"attribute '{name}' is not a {kind.__name__}") from None


def json_attr(obj: Any, name: str, kind: type = dict) -> Any:
    """Attribute ``name`` (a JSON string) parsed, which must give a ``kind``; FormatError for
    anything else, including nesting too deep to parse."""
    text = attr(obj, name, str)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise FormatError(f"attribute '{name}' is not valid JSON") from None
    if not isinstance(value, kind):
        raise FormatError(f"attribute '{name}' is not a JSON {kind.__name__}")
    return value


# --- writing -----------------------------------------------------------------------------------

def _new_temporary(folder: Path, name: str) -> Path:
    """A new, empty temporary file ``.NAME.tmp-PID-N`` in ``folder``, created exclusively (a
    planted file or symlink of that name makes it pick the next N, never write through it)."""
    for n in range(1000):
        tmp = folder / f".{name}.tmp-{os.getpid()}-{n}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise OSError(errno.EEXIST, "no free temporary name")


def _make_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents); a symlink planted where it should be is refused."""
    if folder.is_symlink() and not folder.is_dir():
        raise OSError(errno.ELOOP, "a dangling symbolic link")
    folder.mkdir(parents=True, exist_ok=True)


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; when the block ends without error, the file
    written there is flushed to disk and renamed to ``path`` (replacing whatever is there, a
    symlink included, never writing through it). Any OSError is one :class:`WriteError` naming
    ``path``; the temporary file never outlives the block, and an earlier ``path`` stays intact
    unless the block succeeded."""
    path = Path(path)
    tmp = None
    try:
        _make_folder(path.parent)
        if path.is_dir() and not path.is_symlink():
            raise IsADirectoryError(errno.EISDIR, "it is a folder")
        tmp = _new_temporary(path.parent, path.name)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise WriteError(f"cannot write {path}: {_reason(e)}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def clear_temporaries(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Remove the temporary files a killed writer left in ``folder`` (of output ``name``, or of
    every output). Only safe while the output's lock is held: nobody else writes them then."""
    removed = []
    for p in Path(folder).glob(f".{name}.tmp-*"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`replacing`), with plain writes."""
    write_files({path: data})
    return Path(path)


def write_files(files: Mapping[str | os.PathLike, bytes | memoryview]) -> None:
    """Write every file of ``{path: data}`` or none: each goes to its temporary first (:func:`replacing`),
    and they are renamed into place only once all of them are on disk."""
    with ExitStack() as stack:
        for path, data in files.items():
            tmp = stack.enter_context(replacing(path))
            fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
            try:
                view = memoryview(data).cast("B")
                while view:
                    view = view[os.write(fd, view[: 1 << 26]):]
            finally:
                os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode())


def write_h5(path: str | os.PathLike, build: Callable[[Any], None]) -> Path:
    """Write an HDF5 file: ``build(f)`` fills an in-memory ``h5py.File``, whose bytes are then
    written with :func:`write_bytes`. The HDF5 library never touches the disk, so a full disk is
    one WriteError line rather than a crash in its error path (it can segfault there)."""
    import h5py

    with h5py.File(f"condense-{os.getpid()}-{id(build)}.h5", "w", driver="core", backing_store=False) as f:
        build(f)
        f.flush()
        image = f.id.get_file_image()
    return write_bytes(path, image)


def write_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, serialised in memory first: torch's own file
    writer reports a full disk as an opaque RuntimeError."""
    return write_bytes(path, torch_bytes(obj))


def torch_bytes(obj: Any) -> memoryview:
    """``torch.save(obj)``'s bytes, in memory."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer()


def write_figure(path: str | os.PathLike, fig: Any, **savefig: Any) -> Path:
    """Save a matplotlib figure as PNG to ``path`` atomically."""
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", **savefig)
    return Path(path)


def open_append(path: str | os.PathLike) -> Any:
    """``path`` opened for appending text (created if missing), refusing a symlink or anything but
    a regular file there (a planted link would make the append land in another file); any
    OSError is one WriteError naming ``path``. The caller closes it."""
    path = Path(path)
    try:
        _make_folder(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            return os.fdopen(fd, "a", newline="")
        except BaseException:
            os.close(fd)
            raise
    except OSError as e:
        raise WriteError(f"cannot write {path}: {_reason(e)}") from None


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to ``path`` and flush it to disk (see :func:`open_append`)."""
    f = open_append(path)
    try:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
        raise WriteError(f"cannot write {path}: {_reason(e)}") from None
    finally:
        try:
            f.close()
        except OSError:
            pass


def ensure_folder(folder: str | os.PathLike, what: str = "the folder") -> Path:
    """Create ``folder`` (and its parents) if missing and return it; any OSError is one WriteError."""
    folder = Path(folder)
    try:
        _make_folder(folder)
    except OSError as e:
        raise WriteError(f"cannot write {what} {folder}: {_reason(e)}") from None
    return folder


def run_subfolder(folder: str | os.PathLike) -> Path:
    """Create the folder ``folder`` of a run (``<out>.run/``) and return it; a symlink planted
    under its name is refused (what the run writes there would land elsewhere)."""
    if Path(folder).is_symlink():
        raise WriteError(f"cannot write the run folder {folder}: it is a symbolic link (refusing to follow it)")
    return ensure_folder(folder, "the run folder")


def inside(root: str | os.PathLike, relative: str, what: str) -> Path:
    """``root / relative`` for an output a preset names relative to its run folder ``root``;
    an absolute path or one climbing out with ``..`` is refused (one ConfigError line)."""
    from .errors import ConfigError

    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise ConfigError(f"{what} {relative!r} must be a path inside the run folder {root} "
                          "(no absolute path, no '..')")
    return Path(root) / rel


# --- locking -----------------------------------------------------------------------------------

_HELD: set[str] = set()  # lock files this process holds: a process may nest its own locks


def _lock_path(target: str | os.PathLike) -> Path:
    """The lock file of output ``target``: ``.NAME.lock`` beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _holder(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            text = os.read(fd, 400).decode(errors="replace").strip()
        finally:
            os.close(fd)
    except OSError:
        text = ""
    return text.splitlines()[0][:200] if text else "another process"


@contextmanager
def output_lock(target: str | os.PathLike | None) -> Iterator[None]:
    """Hold an exclusive lock on output ``target`` for the block (a file ``.NAME.lock`` beside it,
    removed at the end; the kernel releases the lock when a process dies, killed or not). A second
    holder gets one WriteError line naming the first; the same process may nest. None: no output,
    no lock."""
    import fcntl

    if target is None:
        yield
        return
    path = _lock_path(target)
    key = str(path.absolute())
    if key in _HELD:  # an outer block of this process holds it and releases it
        yield
        return
    try:
        _make_folder(path.parent)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise WriteError(f"{target} is in use by {_holder(path)}; wait for that run to end "
                                 "or choose another output") from None
            # The previous holder may have removed the file between our open and our lock: lock
            # the file that is there now.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        clear_temporaries(path.parent, Path(target).name)  # a killed run's half-written output
        started = _dt.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}: "
                     f"{' '.join(sys.argv)[:200]}\n".encode())
    except OSError as e:
        raise WriteError(f"cannot lock {target}: {_reason(e)}") from None
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)


def holding_lock(output: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a long-running function so that it holds :func:`output_lock` on its output for
    its whole call; ``output(*args, **kwargs)`` names the output from the call's arguments."""
    import functools

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with output_lock(output(*args, **kwargs)):
                return fn(*args, **kwargs)
        return locked
    return wrap
