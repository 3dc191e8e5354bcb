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
import lzma
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import attrs

from vmkit.errors import DockerError, InvalidInput, VmkitError
from vmkit.host import runner

if TYPE_CHECKING:
    from vmkit.vm import VM

__all__ = ["LoadResult", "TarCheck", "detect_compression", "load", "save"]

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

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ended = False  # a zero block where a header was due: the end-of-archive marker
        self._skip = 0  # data bytes (with padding) before the next header
        self._header = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        view = memoryview(data)
        while view:
            if self.ended:
                return
            if self._skip:
                n = min(self._skip, len(view))
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


def _tar_size(field: bytes) -> int:
    if field[0] & 0x80:  # base-256, for members of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _tar_chunks(path: Path, kind: str, position: list[int]) -> Iterator[bytes]:
    """The uncompressed tar bytes of ``path``, in chunks; ``position[0]`` is the file offset read."""
    with open(path, "rb") as raw:
        if kind == "zstd":
            yield from _zstd_chunks(raw, position)
            return
        stream: Any = raw
        if kind == "gzip":
            stream = gzip.GzipFile(fileobj=raw)
        elif kind == "xz":
            stream = lzma.LZMAFile(raw)  # noqa: SIM115 -- closed with raw, read in a generator
        elif kind == "bzip2":
            stream = bz2.BZ2File(raw)
        try:
            while True:
                data = stream.read(CHUNK)
                position[0] = raw.tell()
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


def _zstd_chunks(raw: IO[bytes], position: list[int]) -> Iterator[bytes]:
    zstandard = _zstandard()
    if zstandard is not None:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        try:
            while True:
                data = reader.read(CHUNK)
                position[0] = raw.tell()
                if not data:
                    break
                yield data
        except zstandard.ZstdError as e:
            raise InvalidInput(
                f"the zstd stream is damaged ({e})", hint="copy it again from its source"
            ) from e
        # A cut-off last frame reads as a short stream here; TarCheck notices the missing end.
        return
    # The program shares our open file description, so our offset is its offset.
    proc = runner.pipe_out([runner.which("zstd"), "-dc", "-q"], stdin=raw.fileno())
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while True:
            data = proc.stdout.read(CHUNK)
            position[0] = os.lseek(raw.fileno(), 0, os.SEEK_CUR)
            if not data:
                break
            yield data
    finally:
        proc.stdout.close()
        code = proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
    if code != 0:
        raise InvalidInput(
            f"zstd could not decompress the file: {err or f'exit {code}'}",
            hint="the file is truncated or damaged: copy it again from its source",
        )


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


def load(vm: VM, path: str | os.PathLike[str], *, progress: Progress = _no_progress) -> LoadResult:
    """Load a ``docker save`` archive (plain or compressed) into the VM's Docker.

    ``progress(done, total)`` is called with bytes of the file read so far. ``InvalidInput``
    for a file that is not a complete Docker image archive; nothing is loaded then.
    """
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
    kind = detect_compression(head)
    check = TarCheck()
    position = [0]

    def body() -> Iterator[bytes]:
        last = 0.0
        for chunk in _tar_chunks(p, kind, position):
            check.feed(chunk)
            yield chunk
            now = time.monotonic()
            if now - last > 0.1:
                progress(position[0], total)
                last = now
        # Raising here, before the generator ends, keeps the request's last chunk unsent.
        check.finish()
        progress(total, total)

    from vmkit.docker.client import docker_client, translate

    # dockerd answers only after it has unpacked every layer, which follows the last byte
    # sent; under emulation on a busy host that is well under 1 MiB/s.
    vm.require_running()
    client = docker_client(vm, timeout=120 + total / 2**20)
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

    from vmkit.docker.client import require_image, translate

    out = Path(os.fspath(path)).expanduser()
    kind = _SUFFIXES.get(out.suffix)
    if kind is None:
        raise InvalidInput(
            f"cannot tell the format of {out.name} from its name",
            hint="end it with .tar, .tar.gz, .tar.xz or .tar.zst",
        )
    if not out.parent.is_dir():
        raise InvalidInput(f"folder {out.parent} does not exist")
    client = vm.docker()
    tmp = out.with_name(f".{out.name}.part")
    written = 0
    try:
        require_image(client, vm, image, hint="see `vmkit docker -- images`")
        with open(tmp, "wb") as raw, _compressor(kind, raw) as sink:
            for chunk in client.api.get_image(image, chunk_size=CHUNK):
                sink.write(chunk)
                written += len(chunk)
                if progress is not None:
                    progress(written)
        os.replace(tmp, out)
    except VmkitError:
        raise
    except OSError as e:
        raise InvalidInput(f"cannot write {out}: {e.strerror or e}") from e
    except Exception as e:
        raise translate(e, f"saving {image} from VM {vm.name!r}") from e
    finally:
        client.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return written


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
