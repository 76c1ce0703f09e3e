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
