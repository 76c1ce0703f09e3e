"""Text encodings for the CSV components: codec checks, and transcoding of pyarrow's UTF-8 output.

pyarrow reads any encoding (it transcodes on input) but writes only UTF-8, so a writer configured
for another encoding passes pyarrow's output through ``Transcoder`` chunk by chunk (no whole-file
buffering).
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Mapping
from typing import Any

from osiris_flight.errors import Problem


def codec_name(encoding: str) -> str | None:
    """Python's canonical name for ``encoding`` (``latin1`` -> ``iso8859-1``), None if unknown."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        return None


def check_encoding(config: Mapping[str, Any]) -> list[Problem]:
    encoding = config.get("encoding", "utf-8")
    if isinstance(encoding, str) and codec_name(encoding) is None:
        return [
            Problem(
                f"unknown encoding {encoding!r}",
                field="config.encoding",
                hint="use a Python codec name such as utf-8, latin-1, cp1252, utf-16",
            )
        ]
    return []


def bomless(encoding: str, head: bytes) -> str:
    """The codec that continues a file in ``encoding`` without writing another byte-order mark.

    ``head`` is the file's first 4 bytes (its BOM, if any), which fixes the byte order for utf-16/32.
    """
    if encoding == "utf-8-sig":
        return "utf-8"
    if encoding in ("utf-16", "utf-32"):
        little = head.startswith(codecs.BOM_UTF32_LE if encoding == "utf-32" else codecs.BOM_UTF16_LE)
        return f"{encoding}-{'le' if little else 'be'}"
    return encoding


class Transcoder(io.RawIOBase):
    """A write-only file that re-encodes the UTF-8 written to it into ``encoding`` on ``target``.

    A character the encoding lacks raises UnicodeEncodeError from ``write``.
    """

    def __init__(self, target: Any, encoding: str) -> None:
        super().__init__()
        self._target = target
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._encoder = codecs.getincrementalencoder(encoding)()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raw = bytes(data)
        self._target.write(self._encoder.encode(self._decoder.decode(raw)))
        return len(raw)

    def finish(self) -> None:
        """Flush a trailing partial character (there is none unless pyarrow wrote broken UTF-8)."""
        self._target.write(self._encoder.encode(self._decoder.decode(b"", final=True), final=True))


ENCODING_ERRORS = ("strict", "replace", "ignore")
_CHUNK = 1 << 20


class DecodedInput(io.RawIOBase):
    """A read-only file that serves a text file in ``encoding`` as UTF-8, decoding with ``errors``
    (``replace``: U+FFFD for each undecodable sequence; ``ignore``: dropped). For pyarrow's CSV
    reader, which otherwise only rejects (or, for UTF-8, passes on) invalid bytes."""

    def __init__(self, path: Any, encoding: str, errors: str) -> None:
        super().__init__()
        self._raw = open(path, "rb")  # noqa: SIM115 - closed with this object
        self._decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
        self._pending = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending and not self._eof:
            chunk = self._raw.read(_CHUNK)
            self._eof = not chunk
            self._pending = memoryview(self._decoder.decode(chunk, final=self._eof).encode("utf-8"))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def first_invalid(path: Any, encoding: str) -> tuple[int, int, str] | None:
    """Where a file first fails to decode in ``encoding``: (line, byte offset, reason), or None.

    The line is the file's physical line, counted from 1 (header and skipped lines included; a
    quoted value spanning lines counts each); the byte offset is from the start of the file.
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    line, offset = 1, 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(_CHUNK)
            pending = decoder.getstate()[0]  # bytes held back from the previous chunk
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                data = exc.object  # the held-back bytes followed by this chunk
                valid = data[: exc.start].decode(encoding, errors="replace")
                return line + valid.count("\n"), offset - len(pending) + exc.start, exc.reason
            line += text.count("\n")
            offset += len(chunk)
            if not chunk:
                return None
