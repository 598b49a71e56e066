"""Write llama-server's ``--help`` flag list from llama.cpp's sources, without building it.

The native engine is built from the ``vendor/llama.cpp`` tree of the ``llama-cpp-python``
sdist (``core/engines/install.py`` pins the version). Its ``common/arg.cpp`` declares every
flag with ``add_opt(common_arg({...}, ...))`` and the programs it applies to
(``set_examples``); llama-server takes the flags of ``LLAMA_EXAMPLE_SERVER`` and of
``LLAMA_EXAMPLE_COMMON`` (the default), less its ``set_excludes``. This script reads those
declarations and prints one entry per flag in the layout ``llama-server --help`` uses, so
that the tests can check the ``llamacpp_args`` allowlist against every flag the engine has::

    pip download --no-binary :all: --no-deps llama-cpp-python==0.3.36 -d /tmp/sdist
    tar xzf /tmp/sdist/llama_cpp_python-0.3.36.tar.gz -C /tmp/sdist
    python scripts/llama_server_flags.py \
        /tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp/common/arg.cpp 0.3.36 \
        > tests/data/llama_server_help.txt

Help texts keep their printf placeholders (``%d``): the defaults are filled in at run time.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class Declared:
    args: list[str]
    negations: list[str]
    hints: list[str]
    help: str
    examples: set[str]
    excludes: set[str]
    sampling: bool
    spec: bool


def _matching(text: str, start: int) -> int:
    """Index just past the bracket that closes the one at ``start`` (strings skipped)."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = [pairs[text[start]]]
    i = start + 1
    while stack:
        c = text[i]
        if c == '"':
            i = _STRING.match(text, i).end()  # type: ignore[union-attr]
            continue
        if c == "'":
            i = text.index("'", i + 2) + 1 if text[i + 1] == "\\" else i + 3
            continue
        if c in pairs:
            stack.append(pairs[c])
        elif c == stack[-1]:
            stack.pop()
        i += 1
    return i


def _top_level_items(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and strings."""
    items, i, start = [], 0, 0
    while i < len(text):
        c = text[i]
        if c == '"':
            i = _STRING.match(text, i).end()  # type: ignore[union-attr]
            continue
        if c in "({[":
            i = _matching(text, i)
            continue
        if c == ",":
            items.append(text[start:i].strip())
            start = i + 1
        i += 1
    items.append(text[start:].strip())
    return [item for item in items if item]


def _strings(item: str) -> list[str]:
    return [s.encode().decode("unicode_escape") for s in _STRING.findall(item)]


def _help(item: str) -> str:
    """The literal text of a help argument: a ``string_format`` keeps its format string, a
    ``cond ? "a" : "b"`` its first branch."""
    if item.startswith("string_format("):
        item = _top_level_items(item[len("string_format("):-1])[0]
    if "?" in item and item.lstrip()[0] != '"':
        item = item.split("?", 1)[1].split(":", 1)[0]
    return "".join(_strings(item)).rstrip("\n")


def _names(item: str, lists: dict[str, list[str]]) -> set[str]:
    if item.startswith("{"):
        return set(re.findall(r"LLAMA_EXAMPLE_\w+", item))
    return set(lists.get(item.strip(), []))


def _without_comments(source: str) -> str:
    """``source`` with its ``//`` and ``/* */`` comments blanked (strings kept)."""
    out, i = [], 0
    while i < len(source):
        c = source[i]
        if c == '"':
            end = _STRING.match(source, i).end()  # type: ignore[union-attr]
            out.append(source[i:end])
            i = end
        elif c == "'":
            end = source.index("'", i + 2) + 1 if source[i + 1] == "\\" else i + 3
            out.append(source[i:end])
            i = end
        elif source.startswith("//", i):
            i = source.find("\n", i)
        elif source.startswith("/*", i):
            i = source.index("*/", i) + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def declarations(source: str) -> list[Declared]:
    """Every ``add_opt(common_arg(...))`` of ``arg.cpp``, in source order."""
    source = _without_comments(source)
    lists = {m.group(1): re.findall(r"LLAMA_EXAMPLE_\w+", m.group(2)) for m in re.finditer(
        r"initializer_list<enum llama_example>\s+(\w+)\s*=\s*\{([^}]*)\}", source)}
    found = []
    for match in re.finditer(r"add_opt\(common_arg\(", source):
        open_at = match.end() - 1
        close_at = _matching(source, open_at)
        items = _top_level_items(source[open_at + 1:close_at - 1])
        args = _strings(items[0])
        negations = _strings(items[1]) if items[1].startswith("{") else []
        rest = items[2 if negations else 1:]
        handler = next(i for i, item in enumerate(rest) if item.startswith("["))
        lambda_params = rest[handler][rest[handler].index("(") + 1:]
        takes = lambda_params.split(")", 1)[0].count(",")
        if "bool" in lambda_params.split(")", 1)[0]:
            takes = 0
        # A hint built at run time (a function call) prints as VALUE here.
        hints = ["".join(_strings(item)) or "VALUE" for item in rest[:takes]]
        help_text = _help(rest[takes]) if takes < handler else ""
        chain_end = _matching(source, match.start() + len("add_opt"))
        chain = source[close_at:chain_end]
        examples, excludes = {"LLAMA_EXAMPLE_COMMON"}, set()
        for call in re.finditer(r"\.set_(examples|excludes)\(", chain):
            arg_text = chain[call.end():_matching(chain, call.end() - 1) - 1]
            if call.group(1) == "examples":
                examples = _names(arg_text, lists)
            else:
                excludes = _names(arg_text, lists)
        found.append(Declared(args, negations, hints, help_text, examples, excludes,
                              ".set_sampling()" in chain, ".set_spec()" in chain))
    return found


def server_flags(source: str) -> list[Declared]:
    """The declarations llama-server takes, first declaration of a spelling winning."""
    seen: set[str] = set()
    kept = []
    for d in declarations(source):
        in_server = ({"LLAMA_EXAMPLE_SERVER", "LLAMA_EXAMPLE_COMMON"} & d.examples
                     and "LLAMA_EXAMPLE_SERVER" not in d.excludes)
        if in_server and not (set(d.args) & seen):
            seen.update(d.args + d.negations)
            kept.append(d)
    return kept


def render(d: Declared) -> str:
    """One flag as ``common_arg::to_string`` prints it (help wrapped at 70 columns)."""
    spellings = d.args + d.negations
    head = (spellings[0] if len(spellings) == 1
            else (spellings[0] + ", ").ljust(7) + ", ".join(spellings[1:]))
    head += "".join(f" {h}" for h in d.hints)
    lines = [line for para in d.help.split("\n") for line in _wrap(para)] or [""]
    pad = " " * 40
    first = (head + "\n" + pad) if len(head) > 37 else head.ljust(40)
    return first + lines[0] + "\n" + "".join(pad + line + "\n" for line in lines[1:])


def _wrap(text: str, width: int = 70) -> list[str]:
    if len(text) <= width:
        return [text]
    out, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return out + ([line] if line else [])


def main(argv: list[str]) -> int:
    path, version = argv[1], argv[2]
    with open(path, encoding="utf-8") as fh:
        flags = server_flags(fh.read())
    print(f"# llama-server --help: the flags of llama.cpp as vendored in llama-cpp-python "
          f"{version}")
    print("# (the sdist the native engine is built from), read from common/arg.cpp by")
    print("# scripts/llama_server_flags.py: add_opt(common_arg(...)) entries for")
    print("# LLAMA_EXAMPLE_SERVER or LLAMA_EXAMPLE_COMMON, less set_excludes(SERVER).")
    print("# Help texts keep their printf placeholders; defaults are filled at run time.")
    print()
    sections = (("common params", lambda d: not d.sampling and not d.spec
                 and "LLAMA_EXAMPLE_SERVER" not in d.examples),
                ("sampling params", lambda d: d.sampling),
                ("speculative params", lambda d: d.spec and not d.sampling),
                ("example-specific params", lambda d: not d.sampling and not d.spec
                 and "LLAMA_EXAMPLE_SERVER" in d.examples))
    for title, wanted in sections:
        print(f"----- {title} -----\n")
        for d in flags:
            if wanted(d):
                sys.stdout.write(render(d))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
