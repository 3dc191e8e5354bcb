"""Docker image tars in and out of the VM, streamed: memory stays flat whatever the size.

``load`` reads ``.tar``, ``.tar.gz``, ``.tar.xz``, ``.tar.bz2`` and ``.tar.zst`` (told apart by
their first bytes, not their names), decompresses on the host as it reads, and streams the tar
to dockerd's ``POST /images/load`` over the VM's SSH connection. On the way it reads the tar
headers (not the data), so a file that is not a Docker image, or that is cut short, is refused
*before* the last byte reaches dockerd: the request is broken off, dockerd discards what it
received, and nothing half-loaded is tagged.

Decompressing on the host rather than in the guest: the guest CPU is emulated under TCG, and
the host must read the stream anyway to check it.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import importlib
import json
import lzma
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import attrs

from vmkit.errors import DockerError, FileDamaged, InvalidInput, VmkitError
from vmkit.host import runner
from vmkit.streams import HashingReader, HashingWriter

if TYPE_CHECKING:
    from vmkit.vm import VM

__all__ = [
    "Archive",
    "Expected",
    "ImageInfo",
    "LoadResult",
    "TarCheck",
    "detect_compression",
    "load",
    "read_archive",
    "save",
    "save_archive",
    "write_archive",
]

CHUNK = 1 << 20
Progress = Callable[[int, int], None]  # (bytes of the file done, file size)

_MAGIC = [
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
]


def _no_progress(done: int, total: int) -> None:
    pass


def detect_compression(head: bytes) -> str:
    """``tar``, ``gzip``, ``xz``, ``zstd`` or ``bzip2`` from a file's first 512+ bytes."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise InvalidInput(
        "the file is neither a tar archive nor a gzip/xz/zstd/bzip2-compressed one",
        hint="give a file made by `docker save` (optionally compressed)",
    )


class TarCheck:
    """Follows a tar stream's headers as it passes, without keeping its data.

    After ``feed`` of every chunk, ``finish`` says whether the stream was a whole tar archive
    holding a Docker image (``manifest.json`` or ``repositories`` at the top level).
    """

    #: Members up to this size are kept (``small``): manifest.json, image configs.
    KEEP = 256 << 10
    #: ... and at most this much of them in all, so memory stays flat.
    KEEP_TOTAL = 16 << 20

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ended = False  # a zero block where a header was due: the end-of-archive marker
        self._skip = 0  # data bytes (with padding) before the next header
        self._header = bytearray()
        self.total = 0
        self.small: dict[str, bytes] = {}
        self._kept = 0
        self._want = 0  # bytes of the current member still to keep
        self._data = bytearray()

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        view = memoryview(data)
        while view:
            if self.ended:
                return
            if self._skip:
                n = min(self._skip, len(view))
                if self._want:
                    take = min(self._want, n)
                    self._data += view[:take]
                    self._want -= take
                    if not self._want:
                        self.small[self.names[-1].removeprefix("./")] = bytes(self._data)
                        self._data.clear()
                self._skip -= n
                view = view[n:]
                continue
            need = 512 - len(self._header)
            self._header += view[:need]
            view = view[need:]
            if len(self._header) == 512:
                self._parse(bytes(self._header))
                self._header.clear()

    def _parse(self, block: bytes) -> None:
        if block == bytes(512):
            self.ended = True
            return
        if block[257:262] != b"ustar" and not self.names:
            raise InvalidInput(
                "the file is not a tar archive",
                hint="give a file made by `docker save` (optionally compressed)",
            )
        name = block[:100].split(b"\0", 1)[0].decode(errors="replace")
        prefix = block[345:500].split(b"\0", 1)[0].decode(errors="replace")
        self.names.append(f"{prefix}/{name}" if prefix else name)
        size = _tar_size(block[124:136])
        self._skip = (size + 511) // 512 * 512
        if 0 < size <= self.KEEP and self._kept + size <= self.KEEP_TOTAL:
            self._want = size
            self._kept += size

    def finish(self) -> None:
        """Raise ``InvalidInput`` unless the stream was a complete Docker image archive."""
        if not self.ended:
            raise InvalidInput(
                f"the image archive is cut short (it ends after {self.total} bytes of tar)",
                hint="the file is truncated: copy it again from its source",
            )
        top = {n.removeprefix("./") for n in self.names}
        if not top & {"manifest.json", "repositories"}:
            raise InvalidInput(
                "the tar archive is not a Docker image (no manifest.json or repositories in it)",
                hint="make it with `docker save IMAGE -o FILE.tar`",
            )

    def image_info(self) -> ImageInfo:
        """Image ids, tags and architecture, read from the archive's manifest.json and configs."""
        try:
            manifest = json.loads(self.small.get("manifest.json", b"[]"))
        except ValueError:
            manifest = []
        ids: list[str] = []
        tags: list[str] = []
        arches: set[str] = set()
        for entry in manifest if isinstance(manifest, list) else []:
            config = str(entry.get("Config", ""))
            # Legacy layout: "<hex>.json"; OCI layout (Docker 25+): "blobs/sha256/<hex>".
            digest = config.removesuffix(".json").rsplit("/", 1)[-1]
            if re.fullmatch(r"[0-9a-f]{64}", digest):
                ids.append(f"sha256:{digest}")
            tags += [str(t) for t in entry.get("RepoTags") or []]
            with contextlib.suppress(ValueError, AttributeError):
                arch = json.loads(self.small.get(config, b"{}")).get("architecture")
                if isinstance(arch, str) and arch:
                    arches.add(arch)
        return ImageInfo(ids=ids, tags=tags, arches=sorted(arches))


@attrs.frozen
class ImageInfo:
    """What an image archive holds: image ids (``sha256:...``), tags, CPU architectures."""

    ids: list[str]
    tags: list[str]
    arches: list[str]


def _tar_size(field: bytes) -> int:
    if field[0] & 0x80:  # base-256, for members of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _tar_chunks(src: HashingReader, kind: str) -> Iterator[bytes]:
    """The uncompressed tar bytes read through ``src``, in chunks (``src.count``: file bytes read)."""
    if kind == "zstd":
        yield from _zstd_chunks(src)
        return
    stream: Any = src
    if kind == "gzip":
        stream = gzip.GzipFile(fileobj=src)
    elif kind == "xz":
        stream = lzma.LZMAFile(cast(IO[bytes], src))  # noqa: SIM115 -- read in a generator
    elif kind == "bzip2":
        stream = bz2.BZ2File(src)
    try:
        while True:
            data = stream.read(CHUNK)
            if not data:
                return
            yield data
    except EOFError as e:
        raise InvalidInput(
            f"the {kind} stream is cut short: the file is truncated",
            hint="copy it again from its source",
        ) from e
    except (OSError, lzma.LZMAError) as e:
        raise InvalidInput(
            f"the file is not valid {kind} data ({e})", hint="copy it again from its source"
        ) from e


def _zstandard() -> Any:
    """The optional ``zstandard`` module, or None."""
    try:
        return importlib.import_module("zstandard")
    except ImportError:
        return None


def _zstd_chunks(src: HashingReader) -> Iterator[bytes]:
    zstandard = _zstandard()
    if zstandard is not None:
        reader = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)
        try:
            while True:
                data = reader.read(CHUNK)
                if not data:
                    break
                yield data
        except zstandard.ZstdError as e:
            raise InvalidInput(
                f"the zstd stream is damaged ({e})", hint="copy it again from its source"
            ) from e
        # A cut-off last frame reads as a short stream here; TarCheck notices the missing end.
        return
    # The program reads a pipe that a thread fills from src, so every byte is hashed here.
    feed_r, feed_w = os.pipe()
    proc = runner.pipe_out([runner.which("zstd"), "-dc", "-q"], stdin=feed_r)
    os.close(feed_r)

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError), open(feed_w, "wb") as sink:
            while data := src.read(CHUNK):
                sink.write(data)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while True:
            data = proc.stdout.read(CHUNK)
            if not data:
                break
            yield data
    finally:
        proc.stdout.close()
        code = proc.wait()
        feeder.join()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
    if code != 0:
        raise InvalidInput(
            f"zstd could not decompress the file: {err or f'exit {code}'}",
            hint="the file is truncated or damaged: copy it again from its source",
        )


def open_archive(path: str | os.PathLike[str]) -> tuple[Path, int, str]:
    """``(path, size, compression)`` of an image archive, or ``InvalidInput`` saying why not."""
    p = Path(os.fspath(path)).expanduser()
    try:
        total = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise InvalidInput(f"{p} does not exist") from None
    except IsADirectoryError:
        raise InvalidInput(f"{p} is a folder, not an image archive") from None
    except OSError as e:
        raise InvalidInput(f"cannot read {p}: {e.strerror}") from e
    return p, total, detect_compression(head)


def read_archive(
    path: Path,
    kind: str,
    check: TarCheck,
    *,
    on_read: Callable[[int], None] | None = None,
    expect: Expected | None = None,
) -> Iterator[bytes]:
    """The tar bytes of the archive ``path``, each chunk fed to ``check`` before it is yielded.

    The file is read once. Before the last chunk is given out the tar must be complete
    (``check.finish``) and, with ``expect``, the file's size and sha256 must match: raising
    there keeps a consumer (dockerd) from ever seeing the whole archive.
    """
    try:
        with open(path, "rb") as raw:
            src = HashingReader(raw, on_read=on_read)

            def digest_matches() -> None:
                if expect is not None:
                    src.finish(expect.name, size=expect.size, sha256=expect.sha256)

            pending: bytes | None = None
            try:
                for chunk in _tar_chunks(src, kind):
                    check.feed(chunk)
                    if pending is not None:
                        yield pending
                    pending = chunk
                check.finish()
            except InvalidInput:
                digest_matches()  # a damaged file: say which, expected vs found
                raise
            digest_matches()
            if pending is not None:
                yield pending
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise FileDamaged(f"{path} is missing") from e
        raise FileDamaged(
            f"cannot read {path}: {e.strerror or e}",
            hint="the disk or USB stick went away or is failing: plug it in again and repeat",
        ) from e


@attrs.frozen
class Expected:
    """The size and sha256 a file must have; ``name`` is how errors call it."""

    name: str
    size: int
    sha256: str


@attrs.frozen
class LoadResult:
    """What ``load`` did: the images dockerd reports loaded, and how fast."""

    images: list[str]
    file_bytes: int
    tar_bytes: int
    seconds: float

    @property
    def mib_per_s(self) -> float:
        return self.file_bytes / (1 << 20) / max(self.seconds, 1e-9)


_LOADED = re.compile(r"^Loaded image(?: ID)?: (\S+)", re.MULTILINE)


def load(
    vm: VM,
    path: str | os.PathLike[str],
    *,
    progress: Progress = _no_progress,
    expect: Expected | None = None,
) -> LoadResult:
    """Load a ``docker save`` archive (plain or compressed) into the VM's Docker.

    ``progress(done, total)`` is called with bytes of the file read so far. ``InvalidInput``
    for a file that is not a complete Docker image archive, ``FileDamaged`` if ``expect`` is
    given and the file's size or sha256 differ (checked as it streams); nothing is loaded then.
    """
    p, total, kind = open_archive(path)
    check = TarCheck()
    done = [0, 0.0]

    def on_read(n: int) -> None:
        done[0] += n
        now = time.monotonic()
        if now - done[1] > 0.1:
            progress(int(done[0]), total)
            done[1] = now

    def body() -> Iterator[bytes]:
        yield from read_archive(p, kind, check, on_read=on_read, expect=expect)
        progress(total, total)

    from vmkit.docker.client import docker_client, translate

    # Straight over SSH channels, not through the Docker endpoint's proxy: nothing to
    # intercept in an image load, and the bytes are copied once fewer.
    client = docker_client(vm)
    # dockerd answers only when it has unpacked every layer, which under TCG and a busy host
    # took more than the client's usual 120 s after the last byte of a 510 MiB archive.
    client.api.timeout = max(client.api.timeout, _load_timeout(total))
    started = time.monotonic()
    messages: list[str] = []
    try:
        for msg in client.api.load_image(body()):
            if "error" in msg:
                raise DockerError(f"docker load failed in VM {vm.name!r}: {msg['error']}")
            messages.append(str(msg.get("stream", "")))
    except VmkitError:
        raise
    except Exception as e:
        # requests wraps what the body generator raised; the real reason is in the chain.
        cause = _vmkit_cause(e)
        if cause is not None:
            raise cause from e
        raise translate(e, f"loading {p.name} into VM {vm.name!r}") from e
    finally:
        client.close()
    images = _LOADED.findall("".join(messages))
    return LoadResult(images, total, check.total, time.monotonic() - started)


def _load_timeout(file_bytes: int) -> float:
    """Seconds to wait for dockerd's answer to a load: 5 min plus 2 s per MiB of the file."""
    return 300.0 + 2.0 * file_bytes / (1 << 20)


def _vmkit_cause(e: BaseException) -> VmkitError | None:
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, VmkitError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


_SUFFIXES = {".tar": "tar", ".gz": "gzip", ".tgz": "gzip", ".xz": "xz", ".zst": "zstd"}


def save(
    vm: VM,
    image: str,
    path: str | os.PathLike[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write image ``image`` from the VM to ``path`` (``.tar``, ``.tar.gz``, ``.tar.xz``, ``.tar.zst``).

    The file appears only when complete (written beside it, then renamed). Returns tar bytes.
    """
    return save_archive(vm, image, path, progress=progress).tar_bytes


def save_archive(
    vm: VM,
    image: str,
    path: str | os.PathLike[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> Archive:
    """``save``, returning what was written: size, sha256 and the image's ids and tags."""
    from vmkit.docker.client import require_image, session

    _target(path)
    with session(vm, f"saving {image} from VM {vm.name!r}") as client:
        require_image(client, vm, image, hint="see `vmkit docker -- images`")
        return write_archive(client.api.get_image(image, chunk_size=CHUNK), path, progress=progress)


def _target(path: str | os.PathLike[str]) -> tuple[Path, str]:
    out = Path(os.fspath(path)).expanduser()
    kind = _SUFFIXES.get(out.suffix)
    if kind is None:
        raise InvalidInput(
            f"cannot tell the format of {out.name} from its name",
            hint="end it with .tar, .tar.gz, .tar.xz or .tar.zst",
        )
    if not out.parent.is_dir():
        raise InvalidInput(f"folder {out.parent} does not exist")
    return out, kind


def image_sizes(vm: VM, names: Iterable[str]) -> int:
    """The bytes the images ``names`` take in the VM's Docker (about their tar's size).

    ``DockerError`` naming the first one the VM does not have.
    """
    from vmkit.docker.client import require_image, session

    with session(vm, f"inspecting images in VM {vm.name!r}") as client:
        return sum(
            int(require_image(client, vm, n, hint="see `vmkit docker -- images`").get("Size", 0))
            for n in names
        )


@attrs.frozen
class Archive:
    """An image archive written by ``write_archive``."""

    path: Path
    size: int
    sha256: str
    tar_bytes: int
    info: ImageInfo


def write_archive(
    chunks: Iterable[bytes],
    path: str | os.PathLike[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> Archive:
    """Write the tar stream ``chunks`` to ``path``, compressed as its name says, checked and hashed.

    The tar must be a whole Docker image archive (``TarCheck``); the file appears only then
    (written beside it, then renamed). ``progress(tar bytes so far)``.
    """
    out, kind = _target(path)
    check = TarCheck()
    try:
        # A name no one can guess or plant beforehand (O_EXCL), in the destination folder so
        # the rename is atomic.
        raw = tempfile.NamedTemporaryFile(  # noqa: SIM115 -- closed by the with below
            dir=out.parent, prefix=f".{out.name}.", suffix=".part", delete=False
        )
    except OSError as e:
        raise InvalidInput(f"cannot write {out}: {e.strerror or e}") from e
    tmp = Path(raw.name)
    try:
        with raw:
            hashed = HashingWriter(raw)
            with _compressor(kind, cast(IO[bytes], hashed)) as sink:
                for chunk in chunks:
                    check.feed(chunk)
                    sink.write(chunk)
                    if progress is not None:
                        progress(check.total)
            check.finish()
        os.replace(tmp, out)
    except OSError as e:
        raise InvalidInput(f"cannot write {out}: {e.strerror or e}") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return Archive(out, hashed.count, hashed.hexdigest(), check.total, check.image_info())


@contextlib.contextmanager
def _compressor(kind: str, raw: IO[bytes]) -> Iterator[IO[bytes]]:
    if kind == "tar":
        yield raw
        return
    sink: Any
    if kind == "gzip":
        sink = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6)
    elif kind == "xz":
        sink = lzma.LZMAFile(raw, mode="wb", preset=3)  # noqa: SIM115 -- closed below
    else:
        zstandard = _zstandard()
        if zstandard is None:
            raise InvalidInput(
                "writing .tar.zst needs the Python package zstandard",
                hint="`pip install zstandard`, or save as .tar.gz / .tar.xz",
            )
        sink = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
    with sink:
        yield sink
