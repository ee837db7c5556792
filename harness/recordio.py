"""Typed JSON for dataclass records: the one place JSON becomes records and records become JSON.

    record = read_record(RunResults, path)      # RecordError naming the file and the dotted field
    write_record(path, record)                  # atomic: temp file + rename

`from_json` walks the dataclass's type hints (nested dataclasses, list[...], dict[str, ...], X | None, Any,
int, float, str, bool) and checks the data against them; a record class with a `format` field is refused
when the data's format differs.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any


class RecordError(ValueError):
    """A record file is missing, not JSON, of another format, or has a missing or mistyped field."""


def to_json(record) -> dict:
    """A record as plain JSON data (nested dataclasses become objects)."""
    return dataclasses.asdict(record)


def from_json(cls, data: Any, source: str = "<record>"):
    """Build `cls` from JSON data, checking every field's presence and type; RecordError names source + field."""
    expected = _default_format(cls)
    if expected is not None and isinstance(data, dict) and data.get("format") != expected:
        raise RecordError(f"{source}: not a {cls.__name__} record (format {data.get('format')!r}, expected "
                          f"{expected!r}; another kind of file, or written by another version of the harness)")
    return _convert(cls, data, source, "")


def write_record(path: str | Path, record) -> None:
    from harness.artifacts import write_json_atomic

    write_json_atomic(path, to_json(record))


def read_record(cls, path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise RecordError(f"{path}: not UTF-8 text ({err.reason})") from None
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    return from_json(cls, data, str(path))


def _default_format(cls) -> str | None:
    for f in dataclasses.fields(cls):
        if f.name == "format":
            return f.default
    return None


def _convert(tp, value, source: str, where: str):
    """`value` as type `tp`, recursively; `where` is the dotted field path for error messages."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, source, where)
            except RecordError as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else _type_error(source, where, _type_name(tp), value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _type_error(source, where, "an object", value)
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise RecordError(f"{source}: unknown field {_join(where, unknown[0])!r}")
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _convert(hints[f.name], value[f.name], source, _join(where, f.name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{source}: missing field {_join(where, f.name)!r}")
        return tp(**kwargs)
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(source, where, "a list", value)
        (item,) = typing.get_args(tp)
        return [_convert(item, v, source, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(source, where, "an object", value)
        _, item = typing.get_args(tp)
        return {k: _convert(item, v, source, _join(where, k)) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(source, where, "a number", value)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(source, where, "an integer", value)
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise _type_error(source, where, tp.__name__, value)
        return value
    raise TypeError(f"records: no JSON conversion for {tp!r} at {where}")  # a bug in this module, not input


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _type_name(tp) -> str:
    return " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a)) for a in typing.get_args(tp))


def _type_error(source: str, where: str, expected: str, value) -> RecordError:
    shown = json.dumps(value)[:60] if not isinstance(value, str) else repr(value[:60])
    return RecordError(f"{source}: field {where or '(top level)'!r} must be {expected}, got {shown}")
