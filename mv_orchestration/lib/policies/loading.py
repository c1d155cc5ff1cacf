"""Reading a policy file: strict YAML, the models of :mod:`.model`, one-line errors."""

from __future__ import annotations

from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import PlainValidator, ValidationError
from pydantic_core import ErrorDetails

from mv_orchestration.errors import ConfigError
from mv_orchestration.lib.policies.model import KeyPath, PolicyDocument, policy_error, type_name
from mv_orchestration.lib.policies.resolution import PolicyFile

# what a pydantic error type says was expected, for "expected <this>, got <type of the value>"
_EXPECTED = {
    "bool_type": "true or false",
    "dataclass_type": "a mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
    "model_type": "a mapping",
    "string_type": "a string",
}
_UNKNOWN_KEY = ("extra_forbidden", "unexpected_keyword_argument")


def load_policies(path: Path) -> PolicyFile:
    """Read and validate a policy file (see the package docstring for the format)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    return parse_policies(text, path)


def parse_policies(text: str, path: Path) -> PolicyFile:
    """Validate the YAML ``text`` of a policy file; ``path`` names it in errors."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or exc).split())
        raise ConfigError(f"{path}: {line}invalid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from exc
    try:
        doc = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        # not chained: pydantic's message quotes the values, literal alert URLs among them
        raise policy_error(path, *_first_problem(exc, data)) from None
    return PolicyFile(
        path=path,
        defaults=doc.defaults.layer(),
        groups={name: group.layer() for name, group in doc.groups.items()},
        views=tuple((key, view.layer()) for key, view in doc.views.items()),
    )


# --- errors -----------------------------------------------------------------------------------


def _first_problem(exc: ValidationError, data: object) -> tuple[KeyPath, str]:
    """The first problem in the file: in file order, and in a mapping the types of its keys,
    then unknown keys, then missing ones before its values (a misspelt key also makes a
    required one missing: the misspelling is what to report)."""
    explained = [_explain(error) for error in exc.errors()]
    where, _, _, reason = min(explained, key=lambda e: (*_position(data, e[1]), e[2]))
    return where, reason


def _explain(error: ErrorDetails) -> tuple[KeyPath, KeyPath, int, str]:
    """Where in the file, the value checked and the rank of that check among the checks of
    that value, and what is wrong, in the words of the package docstring."""
    loc, kind, value = error["loc"], error["type"], error["input"]
    if kind == "invalid_key" or (kind == "string_type" and loc[-1:] == ("[key]",)):
        where = loc[:-1] if kind == "invalid_key" else loc[:-2]
        return where, where, -3, f"key {value!r} is {type_name(value)}, not a string (quote it)"
    if kind in _UNKNOWN_KEY:
        return loc, loc[:-1], -2, f"unknown key (allowed: {', '.join(_keys_at(loc[:-1]))})"
    if loc[-1:] == ("[key]",):  # a rule of the key itself (tags): the path ends at the key
        loc = loc[:-1]
    if kind == "missing":
        return loc[:-1], loc[:-1], -1, f"missing key {loc[-1]!r}"
    if kind in _EXPECTED:
        return loc, loc, 0, f"expected {_EXPECTED[kind]}, got {type_name(value)}"
    return loc, loc, 0, error["msg"]  # our own rules (error type "policy") say it all


def _position(data: object, where: KeyPath) -> tuple[int, ...]:
    """Where ``where`` is in the file: the index of each key or list item along the path."""
    out: list[int] = []
    for part in where:
        if isinstance(data, dict) and part in data:
            out.append(list(data).index(part))
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            out.append(part)
            data = data[part]
        else:
            break
    return tuple(out)


def _keys_at(loc: KeyPath) -> list[str]:
    """The keys of the mapping at ``loc``: the fields of the model that validated it."""
    tp: Any = PolicyDocument
    for part in loc:
        fields = getattr(tp, "__pydantic_fields__", None)
        tp = _unwrap(fields[part].annotation if fields else get_args(tp)[-1])  # model or dict/list
    return sorted(name for name, f in tp.__pydantic_fields__.items() if not f.exclude)


def _unwrap(tp: Any) -> Any:
    """The model inside ``Annotated[...]`` (a plain validator's input type) or ``X | None``."""
    while True:
        if get_origin(tp) is Annotated:
            plain = [m for m in get_args(tp)[1:] if isinstance(m, PlainValidator)]
            tp = plain[0].json_schema_input_type if plain else get_args(tp)[0]
        elif get_origin(tp) in (Union, UnionType):
            tp = next(a for a in get_args(tp) if hasattr(a, "__pydantic_fields__"))
        else:
            return tp


# --- YAML -------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)
