"""Read a YAML configuration file so that every mistake can name the file, the line, the key and the fix.

Shared by the edge agent's mapping file and the gateway's site file (neither may import the
other). ``YamlFile.load(path)`` keeps the line of every key; ``doc.error("tags[2].address",
"write a number")`` makes the ConfigError ``edge.yaml:14: tags[2].address: write a number``.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]?|[bB])?$")


class ConfigError(ValueError):
    """A configuration mistake; the message says where (file:line: key) and how to fix it."""


class YamlFile:
    def __init__(self, data, path: str | Path = "config", lines: dict[str, int] | None = None):
        self.data, self.path, self.lines = data, str(path), lines or {}

    @classmethod
    def load(cls, path: str | Path) -> "YamlFile":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read it ({e.strerror})") from None
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, path: str | Path = "config") -> "YamlFile":
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        except yaml.YAMLError as e:
            raise yaml_error(path, e, text) from None
        finally:
            loader.dispose()
        lines: dict[str, int] = {}
        if node is not None:
            _walk(node, "", lines)
        return cls(data, path, lines)

    def line(self, key: str) -> int | None:
        """The line of ``key`` or of the nearest enclosing key that has one."""
        while key:
            if key in self.lines:
                return self.lines[key]
            key = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", key) if ("." in key or "[" in key) else ""
        return self.lines.get("")

    def error(self, key: str, fix: str) -> ConfigError:
        line = self.line(key)
        where = f"{self.path}:{line}" if line else self.path
        return ConfigError(f"{where}: {key}: {fix}" if key else f"{where}: {fix}")


def yaml_error(path: str | Path, e: yaml.YAMLError, text: str | None = None) -> ConfigError:
    """PyYAML's parser error as a ConfigError in words: ``file:line: not valid YAML: what is wrong; how to fix it``
    and the line itself.

    The parser notices a mistake where it cannot go on, often a line after it (a missing colon shows at the
    next key): the message names the line that most likely holds the mistake and says what to look for."""
    problem = str(getattr(e, "problem", None) or e)
    context = str(getattr(e, "context", None) or "")
    mark = getattr(e, "problem_mark", None)
    start = getattr(e, "context_mark", None) or mark
    if "'\\t'" in problem or "\t" in problem:
        what = "a tab: YAML indents with spaces only; replace the tab by spaces"
    elif "could not find expected ':'" in problem:
        mark = start
        what = "a key without its colon: write key: value (a space after the colon)"
    elif "mapping values are not allowed" in problem:
        what = ("a colon that YAML does not expect here: this line is indented deeper than the keys above it, or "
                "the line before lacks its colon (key: value), or a value contains ': ' (put that value in quotes)")
    elif "expected <block end>" in problem and "block sequence" in problem:
        what = "bad indentation: this list item (-) does not line up with the items above it"
    elif "expected <block end>" in problem or "expected <block mapping start>" in problem:
        what = ("bad indentation: this line is indented differently from the keys above it; keys of one section "
                "start in the same column (2 spaces per level)")
    elif "quoted scalar" in context and "end of stream" in problem:
        mark = start
        what = "a quote (\" or ') opened here is never closed"
    elif "flow mapping" in context:
        mark = start
        what = "in the { ... } that starts here: a comma or the closing } is missing"
    elif "flow sequence" in context:
        mark = start
        what = "in the [ ... ] that starts here: a comma or the closing ] is missing"
    elif "found undefined alias" in problem:
        what = "a * (alias) without a matching & (anchor); put a value that starts with * in quotes"
    elif "found character" in problem and "cannot start any token" in problem:
        what = f"{problem.split('found ')[-1].split(' that')[0]} cannot start a value; put the value in quotes"
    else:
        what = problem
    if mark is None:
        return ConfigError(f"{path}: not valid YAML: {what}")
    shown = ""
    if text is not None and mark.line < len(lines := text.splitlines()):
        shown = f"  [line {mark.line + 1}: {lines[mark.line].rstrip()!r}]"
    return ConfigError(f"{path}:{mark.line + 1}: not valid YAML: {what}{shown}")


def _walk(node, path: str, lines: dict[str, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            sub = f"{path}.{k.value}" if path else str(k.value)
            lines[sub] = k.start_mark.line + 1
            _walk(v, sub, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _walk(v, f"{path}[{i}]", lines)


def duration(value) -> float | None:
    """Seconds from 250ms, 0.5s, 2m, 1h, 1d or a plain number of seconds; None if it is not one."""
    if isinstance(value, bool):
        return None
    m = _DURATION.match(str(value).strip()) if value is not None else None
    if not m:
        return None
    return float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[m.group(2)]


def size(value) -> int | None:
    """Bytes from 100MB, 512k, 2GiB or a plain number of bytes (powers of 1024); None if it is not one."""
    if isinstance(value, bool):
        return None
    m = _SIZE.match(str(value).strip()) if value is not None else None
    if not m:
        return None
    unit = (m.group(2) or "b")[0].lower()
    return int(float(m.group(1)) * {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit])
