"""Read rules.yaml into `RulesFile`, turning every problem into `file:line: field: message`.

pydantic reports errors by path (`triggers.1.actions.0.appliance`), which a person editing
YAML cannot use directly; PyYAML's composer keeps the line of every node, so the loader
walks the node tree along each error's path to find its line. Duplicate keys, which YAML
loaders silently resolve to the last one, are errors here.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from claudio_daemon.rules.schema import CLAP_LABEL, CrossFieldError, RulesFile
from claudio_daemon.rules.secrets import PLAIN_SECRET_KEYS

log = logging.getLogger(__name__)

_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "bytes"})


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file. `line` is 1-based; None when no line applies."""

    line: int | None
    field: str
    message: str

    def format(self, path: str | Path) -> str:
        head = f"{path}:{self.line}" if self.line is not None else f"{path}"
        return f"{head}: {self.field}: {self.message}" if self.field else f"{head}: {self.message}"


class RulesError(Exception):
    """rules.yaml could not be used; str() is one `file:line: field: message` per problem."""

    def __init__(self, path: str | Path, problems: list[Problem]):
        self.path = path
        self.problems = problems
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(p.format(self.path) for p in self.problems)

    def lines(self) -> list[str]:
        return [p.format(self.path) for p in self.problems]


# --------------------------------------------------------------------------- source map


def loc_to_str(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _looks_like_tag(part: str) -> bool:
    """pydantic puts union members and validator names into error paths; they are not keys."""
    return part in _TYPE_TAGS or any(c in part for c in "[]()'-")


class SourceMap:
    """Finds the YAML line (and the printable path) for a pydantic location."""

    def __init__(self, root: Node):
        self.root = root

    def __eq__(self, other: object) -> bool:
        # Where keys sit is not part of what the rules mean: the same rules loaded from a
        # re-indented file must compare equal (RulesFile equality includes private attrs).
        return isinstance(other, SourceMap)

    __hash__ = None  # type: ignore[assignment]

    def locate(self, loc: Sequence[str | int]) -> tuple[int, list[str | int]]:
        node: Node | None = self.root
        line = self.root.start_mark.line + 1
        shown: list[str | int] = []
        for part in loc:
            if isinstance(node, MappingNode):
                key_str = str(part)
                for key, value in node.value:
                    if isinstance(key, ScalarNode) and key.value == key_str:
                        line, node = key.start_mark.line + 1, value
                        shown.append(part)
                        break
                else:
                    if isinstance(part, str) and _looks_like_tag(part):
                        continue
                    shown.append(part)
                    node = None
            elif isinstance(node, SequenceNode) and isinstance(part, int):
                if 0 <= part < len(node.value):
                    node = node.value[part]
                    line = node.start_mark.line + 1
                shown.append(part)
            elif node is None and not (isinstance(part, str) and _looks_like_tag(part)):
                shown.append(part)
            # else: a scalar (or a sequence given a str): the part is a union tag
        return line, shown

    def line_of(self, loc: Sequence[str | int]) -> int:
        return self.locate(loc)[0]


# --------------------------------------------------------------------------- YAML


def _compose(text: str) -> Node | None:
    loader = yaml.SafeLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _construct(node: Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _self_reference(node: Node, inside: set[int] | None = None) -> Node | None:
    """A node that contains itself through an alias (`a: &x [*x]`), or None.

    PyYAML builds such a graph happily; every walk over it (and pydantic) would recurse
    until Python gives up, so it is refused first, with its line.
    """
    inside = set() if inside is None else inside
    if id(node) in inside:
        return node
    if not isinstance(node, MappingNode | SequenceNode):
        return None
    inside.add(id(node))
    children = (
        [n for pair in node.value for n in pair]
        if isinstance(node, MappingNode)
        else list(node.value)
    )
    try:
        for child in children:
            found = _self_reference(child, inside)
            if found is not None:
                return found
    finally:
        inside.discard(id(node))
    return None


def _duplicate_keys(node: Node, path: list[str | int], out: list[Problem]) -> None:
    if isinstance(node, MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                line = key.start_mark.line + 1
                if key.value in seen:
                    out.append(
                        Problem(
                            line,
                            loc_to_str([*path, key.value]),
                            f"duplicate key {key.value!r} (first at line {seen[key.value]}); "
                            "YAML would silently keep only the last one",
                        )
                    )
                else:
                    seen[key.value] = line
                _duplicate_keys(value, [*path, key.value], out)
            else:
                _duplicate_keys(value, path, out)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(item, [*path, i], out)


def _yaml_problem(exc: yaml.YAMLError) -> Problem:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        context = exc.context
        if context and exc.context_mark is not None and exc.context_mark is not mark:
            context += f" started at line {exc.context_mark.line + 1}"
        parts = [p for p in (context, exc.problem) if p]
        message = "YAML syntax error: " + ", ".join(parts)
        return Problem(mark.line + 1 if mark else None, "", message)
    return Problem(None, "", f"YAML error: {exc}")


# --------------------------------------------------------------------------- pydantic errors


def _unwrap(tp: Any) -> Any:
    """The model or container inside Annotated/Optional/Union annotations."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is Union or origin is types.UnionType:
            options = [
                a for a in get_args(tp) if a is not type(None) and get_origin(a) is not Literal
            ]
            if not options:
                return None
            tp = options[0]
        else:
            return tp


def _allowed_keys(parts: Sequence[str | int]) -> list[str] | None:
    """Field names (aliases) of the model at `parts`, for "did you mean" hints."""
    tp: Any = RulesFile
    for part in parts:
        tp = _unwrap(tp)
        if inspect.isclass(tp) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) in (list, tuple):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    if inspect.isclass(tp) and issubclass(tp, BaseModel):
        return [f.alias or name for name, f in tp.model_fields.items() if not f.exclude]
    return None


def _message(err: dict[str, Any], shown: list[str | int]) -> str:
    kind = err["type"]
    msg: str = err["msg"]
    key = shown[-1] if shown else ""
    if kind == "extra_forbidden":
        allowed = _allowed_keys(shown[:-1]) or []
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        if close:
            return f"unknown key {key!r} (did you mean {close[0]!r}?)"
        if allowed:
            return f"unknown key {key!r} (allowed: {', '.join(allowed)})"
        return f"unknown key {key!r}"
    if kind == "missing":
        return "required key is missing"
    if kind == "model_type":
        msg = "expected a mapping of settings (key: value lines)"
    elif kind == "dict_type":
        msg = "expected a mapping (name: value lines)"
    elif kind == "path_type":
        msg = "expected a file path"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    value = err.get("input")
    secret = isinstance(key, str) and key in PLAIN_SECRET_KEYS
    if (
        not secret
        and kind not in ("value_error", "assertion_error")
        and (value is None or isinstance(value, (str, int, float, bool)))
    ):
        msg += f" (got {value!r})"
    return msg


def _problems_from(exc: ValidationError, source: SourceMap) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors():
        cross = (err.get("ctx") or {}).get("error")
        if isinstance(cross, CrossFieldError):
            for loc, message in cross.problems:
                line, shown = source.locate((*err["loc"], *loc))
                problems.append(Problem(line, loc_to_str(shown), message))
            continue
        line, shown = source.locate(err["loc"])
        problems.append(Problem(line, loc_to_str(shown), _message(err, shown)))
    # A bad value for a union field fails once per member; say it once.
    merged: dict[tuple[int | None, str], list[str]] = {}
    for p in problems:
        msgs = merged.setdefault((p.line, p.field), [])
        if p.message not in msgs:
            msgs.append(p.message)
    out = [Problem(line, field, "; or ".join(msgs)) for (line, field), msgs in merged.items()]
    return sorted(out, key=lambda p: p.line if p.line is not None else 0)


# --------------------------------------------------------------------------- public API


def parse_rules(text: str, path: str | Path = "rules.yaml") -> RulesFile:
    """Validate rules given as text; `path` only names the file in messages."""
    try:
        root = _compose(text)
    except yaml.YAMLError as exc:
        raise RulesError(path, [_yaml_problem(exc)]) from None
    if root is None:
        raise RulesError(
            path, [Problem(None, "", "file is empty; start from the example rules.yaml")]
        )
    if not isinstance(root, MappingNode):
        raise RulesError(
            path,
            [
                Problem(
                    root.start_mark.line + 1,
                    "",
                    "the top level must be a mapping of sections (mqtt:, appliances:, "
                    "triggers:, away: ...)",
                )
            ],
        )
    loop = _self_reference(root)
    if loop is not None:
        raise RulesError(
            path,
            [
                Problem(
                    loop.start_mark.line + 1,
                    "",
                    "this YAML anchor (&name) contains an alias to itself (*name): "
                    "a value cannot include itself",
                )
            ],
        )
    dups: list[Problem] = []
    _duplicate_keys(root, [], dups)
    if dups:
        raise RulesError(path, dups)
    try:
        data = _construct(root)
    except yaml.YAMLError as exc:
        raise RulesError(path, [_yaml_problem(exc)]) from None
    source = SourceMap(root)
    try:
        rules = RulesFile.model_validate(data)
    except ValidationError as exc:
        raise RulesError(path, _problems_from(exc, source)) from None
    rules._source = source
    return rules


def load_rules(path: str | Path) -> RulesFile:
    """Read and validate rules.yaml; any problem raises RulesError (never a partial result)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise RulesError(path, [Problem(None, "", f"cannot read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RulesError(path, [Problem(None, "", f"not UTF-8 text ({exc.reason})")]) from None
    rules = _paths_beside(parse_rules(text, path), Path(path).absolute().parent)
    log.debug(
        "loaded %s: %d appliances, %d triggers", path, len(rules.appliances), len(rules.triggers)
    )
    return rules


def _paths_beside(rules: RulesFile, folder: Path) -> RulesFile:
    """Relative `model.path` and `audio.calibration` are read beside rules.yaml, wherever
    the daemon was started from: the service runs in /, `calibrate` in a user's home, and
    both must mean the same file."""
    model, audio = rules.model, rules.audio
    if model.path is not None and not model.path.is_absolute():
        model = model.model_copy(update={"path": folder / model.path})
    if audio.calibration is not None and not audio.calibration.is_absolute():
        audio = audio.model_copy(update={"calibration": folder / audio.calibration})
    if model is rules.model and audio is rules.audio:
        return rules
    return rules.model_copy(update={"model": model, "audio": audio})


def check_labels(rules: RulesFile, labels: Sequence[str]) -> list[Problem]:
    """Sound labels the file names that the model does not know, with close matches."""
    known = set(labels)
    source: SourceMap | None = rules._source
    problems: list[Problem] = []
    for loc, label in rules.sound_labels():
        if label in known or (loc[0] == "away" and label == CLAP_LABEL):
            continue
        close = difflib.get_close_matches(label, list(labels), n=3, cutoff=0.6)
        if close:
            hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
        else:
            shown = ", ".join(sorted(labels)[:8])
            hint = (
                f"the model knows {len(known)} labels: {shown}{', ...' if len(known) > 8 else ''}"
            )
        line, shown_loc = source.locate(loc) if source is not None else (None, list(loc))
        problems.append(
            Problem(line, loc_to_str(shown_loc), f"unknown sound label {label!r} ({hint})")
        )
    return problems


def check_file(path: str | Path, labels: Sequence[str] | None = None) -> list[str]:
    """Validate-only: formatted problems, empty when the file is fine (`claudio-daemon check`)."""
    try:
        rules = load_rules(path)
    except RulesError as exc:
        return exc.lines()
    if labels is None:
        return []
    return [p.format(path) for p in check_labels(rules, labels)]
