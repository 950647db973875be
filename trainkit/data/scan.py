"""The file index of an image folder: paths, labels and pixel sizes, found without decoding a pixel.

A folder of class subfolders (``root/<class>/<image>``) is listed once; each file's header
(PNG's IHDR, JPEG's SOF marker; Pillow for the other formats) gives its size and tells a file
that is not an image at all, so most corrupt files are refused before training starts. The
index is cached (``$TRAINKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/trainkit``, else
``~/.cache/trainkit``; never inside the data folder), keyed by the folder's path and the
modification times of the folder and of every class folder: adding, removing or renaming a
file changes its class folder's mtime, so the next start rescans; a file rewritten in place
under the same name does not (delete the cache file, named in the log, to force a rescan).

Paths are kept as one byte buffer plus offsets, not a list of Python strings: DataLoader
workers share it with the main process page for page, where a list of ``str`` would be copied
into every worker as reference counts are touched (PyTorch issue 13246).
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainkit.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
INDEX_VERSION = 1
CORRUPT = -1  # the height recorded for a file whose header is not an image's


@dataclass(frozen=True)
class FileIndex:
    """Image files of a folder: ``path(i)``, ``labels[i]``, ``sizes[i] = (h, w)``.

    Files whose header is not an image's have size ``(-1, -1)`` (see :attr:`corrupt`).
    """

    root: str
    classes: tuple[str, ...]
    blob: np.ndarray  # uint8: the relative paths, utf-8, back to back
    offsets: np.ndarray  # int64 (N + 1,)
    labels: np.ndarray  # int64 (N,)
    sizes: np.ndarray  # int32 (N, 2): height, width

    def __len__(self) -> int:
        return len(self.labels)

    def relpath(self, i: int) -> str:
        return bytes(self.blob[self.offsets[i] : self.offsets[i + 1]]).decode()

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.relpath(i))

    @property
    def corrupt(self) -> np.ndarray:
        """Indices of the files whose header is not an image's."""
        return np.flatnonzero(self.sizes[:, 0] == CORRUPT)

    def without(self, drop: np.ndarray) -> FileIndex:
        """The index less the files at ``drop``."""
        keep = np.setdiff1d(np.arange(len(self)), drop)
        names = [self.relpath(int(i)).encode() for i in keep]
        blob, offsets = _pack(names)
        return FileIndex(self.root, self.classes, blob, offsets, self.labels[keep], self.sizes[keep])


def _pack(names: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(names) + 1, dtype=np.int64)
    np.cumsum([len(n) for n in names], out=offsets[1:])
    return np.frombuffer(b"".join(names), dtype=np.uint8).copy(), offsets


def cache_dir() -> Path:
    """Where file indexes are cached (see the module docstring)."""
    if os.environ.get("TRAINKIT_CACHE_DIR"):
        return Path(os.environ["TRAINKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trainkit"


def scan_folder(base: Path, classes: tuple[str, ...] | None = None) -> FileIndex:
    """The index of ``base/<class>/<image>``, from the cache when the folders are unchanged.

    Args:
        base: the folder of class subfolders.
        classes: the class names it must have (a ``test/`` folder beside ``train/``).

    Raises:
        ConfigError: (``data.root``) no class subfolders, an empty class folder, other classes
            than ``classes``.
    """
    base = Path(os.path.abspath(base))
    try:
        found = tuple(sorted(e.name for e in os.scandir(base) if e.is_dir()))
    except OSError as e:
        raise ConfigError(f"cannot read {str(base)!r}: {e.strerror}", "data.root") from None
    if not found:
        raise ConfigError(f"{str(base)!r} has no class subfolders (expected {base}/<class>/<image files>)", "data.root")
    if classes is not None and found != classes:
        raise ConfigError(f"{str(base)!r} has classes {list(found)}, the training folder {list(classes)}", "data.root")
    stamp = np.array([os.stat(base).st_mtime_ns] + [os.stat(base / c).st_mtime_ns for c in found], dtype=np.int64)
    cache = cache_dir() / "image_index" / f"{hashlib.sha1(str(base).encode()).hexdigest()[:20]}.npz"
    index = _load(cache, str(base), found, stamp)
    if index is None:
        index = _scan(base, found)
        _save(cache, index, stamp)
    return index


def _scan(base: Path, classes: tuple[str, ...]) -> FileIndex:
    names: list[bytes] = []
    labels: list[int] = []
    sizes: list[tuple[int, int]] = []
    for label, name in enumerate(classes):
        try:
            files = sorted(e.name for e in os.scandir(base / name) if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
        except OSError as e:
            raise ConfigError(f"cannot read {str(base / name)!r}: {e.strerror}", "data.root") from None
        if not files:
            raise ConfigError(f"class folder {str(base / name)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})", "data.root")
        for f in files:
            names.append(f"{name}/{f}".encode())
            labels.append(label)
            sizes.append(image_size(base / name / f) or (CORRUPT, CORRUPT))
    blob, offsets = _pack(names)
    return FileIndex(str(base), classes, blob, offsets, np.asarray(labels, np.int64), np.asarray(sizes, np.int32).reshape(-1, 2))


def _load(cache: Path, root: str, classes: tuple[str, ...], stamp: np.ndarray) -> FileIndex | None:
    try:
        with np.load(cache, allow_pickle=False) as z:
            if int(z["version"]) != INDEX_VERSION or str(z["root"]) != root or not np.array_equal(z["stamp"], stamp):
                return None
            if tuple(str(c) for c in z["classes"]) != classes:
                return None
            index = FileIndex(root, classes, z["blob"], z["offsets"], z["labels"], z["sizes"])
    except (OSError, KeyError, ValueError):
        return None
    log.info("file index of %s from the cache %s (%d files)", root, cache, len(index))
    return index


def _save(cache: Path, index: FileIndex, stamp: np.ndarray) -> None:
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp.npz")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, version=INDEX_VERSION, root=index.root, classes=np.array(index.classes), stamp=stamp,
                 blob=index.blob, offsets=index.offsets, labels=index.labels, sizes=index.sizes)
        os.replace(tmp, cache)  # atomic: ranks scanning at once each write a whole file
        log.info("file index of %s cached in %s", index.root, cache)
    except OSError as e:  # a read-only home is no reason to fail a run
        log.warning("cannot cache the file index of %s in %s: %s", index.root, cache, e)
        tmp.unlink(missing_ok=True)


def image_size(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` from the file's header; None if it is not a readable image.

    PNG and JPEG are parsed here (a read of the first bytes, ~6x cheaper than Pillow's
    ``Image.open`` per file, which counts on folders of a million images); other formats go
    through Pillow. A file with a valid header can still fail to decode (truncated data):
    that is found when a worker decodes it.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            if head[:8] == b"\x89PNG\r\n\x1a\n":
                if head[12:16] != b"IHDR" or len(head) < 24:
                    return None
                w, h = struct.unpack(">II", head[16:24])
                return (h, w) if h and w else None
            if head[:2] == b"\xff\xd8":
                return _jpeg_size(f, head)
    except OSError:
        return None
    return _pillow_size(path)


def _jpeg_size(f, head: bytes) -> tuple[int, int] | None:
    data, i = head, 2
    while True:
        while len(data) < i + 9:  # a marker, its length and a SOF's size fields
            more = f.read(65536)
            if not more:
                return None
            data += more
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return (h, w) if h and w else None
        if marker == 0xD9 or length < 2:
            return None
        i += 2 + length


def _pillow_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001  (Pillow raises many kinds for files that are not images)
        return None
    return (h, w)
