"""Reading and writing Partita files: JSON text <-> validated, migrated dataclasses."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar, overload

from partita.formats.errors import FormatError
from partita.formats.registry import BY_NAME, FormatSpec, spec_for
from partita.formats.schema import decode, encode

T = TypeVar("T")


def _reject_constant(name: str) -> Any:
    raise FormatError(f"{name} is not allowed in a Partita file (numbers must be finite)")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise FormatError(f"the key {key[:60]!r} appears twice in one object")
        document[key] = value
    return document


def _parse_json(data: str | bytes) -> Any:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise FormatError(f"not UTF-8 text (byte {error.start})") from None
    if data.startswith("\ufeff"):  # Python's own message names a Python codec
        raise FormatError("starts with a byte order mark; save it as UTF-8 without one")
    try:
        return json.loads(
            data, parse_constant=_reject_constant, object_pairs_hook=_reject_duplicates
        )
    except json.JSONDecodeError as error:
        what = error.msg.removesuffix(" at")  # "Unterminated string starting at"
        raise FormatError(
            f"not valid JSON: {what} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise FormatError("not valid JSON: nested too deeply") from None
    except FormatError:
        raise
    except ValueError as error:  # e.g. an integer literal longer than Python converts
        raise FormatError(f"not valid JSON: {error}") from None


def _header(document: Any, expected: FormatSpec | None) -> tuple[FormatSpec, int]:
    if not isinstance(document, dict):
        raise FormatError("expected a JSON object with 'format' and 'version' fields")
    name = document.get("format")
    if not isinstance(name, str):
        raise FormatError("missing the 'format' field naming the kind of file", path="format")
    spec = BY_NAME.get(name)
    if spec is None:
        raise FormatError(
            f"unknown format {name[:60]!r} (known: {', '.join(BY_NAME)})", path="format"
        )
    if expected is not None and spec is not expected:
        raise FormatError(f"expected a {expected.name} file, got {spec.name}", path="format")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError("expected a positive integer version", path="version")
    if version > spec.version:
        raise FormatError(
            f"version {version} is newer than the supported version {spec.version} of "
            f"{spec.name}; upgrade partita-formats to read it",
            path="version",
        )
    return spec, version


def _migrate(spec: FormatSpec, version: int, body: dict[str, Any]) -> dict[str, Any]:
    while version < spec.version:
        migration = spec.migrations.get(version)
        assert migration is not None, f"{spec.name} has no migration from version {version}"
        body = migration(body)
        version += 1
    return body


def _validated(spec: FormatSpec, body: Any) -> Any:
    obj: Any = decode(spec.cls, body)
    if spec.check is not None:
        spec.check(obj)
    return obj


def _from_document(document: Any, expected: FormatSpec | None) -> Any:
    spec, version = _header(document, expected)
    body = {key: value for key, value in document.items() if key not in ("format", "version")}
    if version == spec.version:
        return _validated(spec, body)
    migrated = _migrate(spec, version, body)
    try:
        return _validated(spec, migrated)
    except FormatError as error:
        # Field paths are those of the current version; say so, since the file is older.
        raise FormatError(
            f"{error.message} (in the version {spec.version} form of this version {version} file)",
            path=error.path,
            file=error.file,
        ) from None


@overload
def loads(data: str | bytes, cls: type[T], *, source: str = ...) -> T: ...
@overload
def loads(data: str | bytes, cls: None = ..., *, source: str = ...) -> Any: ...
def loads(data: str | bytes, cls: type[T] | None = None, *, source: str = "<text>") -> Any:
    """Parse, migrate and validate a Partita file's text.

    ``cls`` restricts the accepted format (e.g. ``Plan``); without it any format is accepted.
    Raises :class:`FormatError` naming ``source``, the field path and what was expected.
    """
    expected = spec_for(cls) if cls is not None else None
    try:
        return _from_document(_parse_json(data), expected)
    except FormatError as error:
        raise error.in_file(source) from None


@overload
def load(path: str | os.PathLike[str], cls: type[T]) -> T: ...
@overload
def load(path: str | os.PathLike[str], cls: None = ...) -> Any: ...
def load(path: str | os.PathLike[str], cls: type[T] | None = None) -> Any:
    """Read and validate a Partita file from disk (see :func:`loads`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise FormatError(f"cannot read: {error.strerror or error}", file=str(path)) from None
    return loads(data, cls, source=str(path))


def dumps(obj: Any) -> str:
    """Canonical text of a Partita file: header first, fields in declaration order."""
    spec = spec_for(obj)
    # Never write what could not be read back; and write what reading gives (e.g. an int
    # held in a float field becomes a float), so that the text is canonical.
    try:
        body = encode(_validated(spec, encode(obj)))
    except FormatError as error:
        raise error.in_file(f"<{spec.title} being saved>") from None
    document = {"format": spec.name, "version": spec.version, **body}
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` atomically: a crash mid-write leaves any previous file intact."""
    text = dumps(obj)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, _new_file_mode())  # mkstemp makes owner-only files
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def _new_file_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def content_hash(obj_or_path: Any) -> str:
    """SHA-256 of a file's canonical text, for provenance (the same for a file and its object)."""
    if isinstance(obj_or_path, str | os.PathLike):
        obj_or_path = load(obj_or_path)
    return hashlib.sha256(dumps(obj_or_path).encode("utf-8")).hexdigest()
