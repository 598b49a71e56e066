"""The repository documents itself: no pointers outside it, an API reference that covers every
route, and a license.

* No text file of the repository mentions documents that are not in it (``../shared``,
  ``SPEC.md``, ``STYLE.md``, ``SPEC §…``, the words ``SPEC``/``STYLE`` as references) or issue
  numbers (``issue 4``, ``Issue #6``, ``(#12)``): a comment or doc states the fact itself.
* ``docs/api.md`` has a heading for every route of ``ROUTES`` with each method it implements,
  and no heading for a route that does not exist.
* ``LICENSE`` is the MIT license that ``setup.cfg`` declares.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from tornado import web

ROOT = Path(__file__).resolve().parent.parent
API_DOC = ROOT / "docs" / "api.md"
THIS_FILE = Path(__file__).resolve()

#: What a file must not contain, with a name for the failure message.
FORBIDDEN = [
    ("path outside the repository", re.compile(r"\.\./shared")),
    ("SPEC.md", re.compile(r"SPEC\.md")),
    ("STYLE.md", re.compile(r"STYLE\.md")),
    ("SPEC section", re.compile(r"SPEC §")),
    ("SPEC/STYLE reference", re.compile(r"\b(?:SPEC|STYLE)\b")),
    ("issue number", re.compile(r"\b[Ii]ssue ?#?\d+")),
    ("issue/PR number", re.compile(r"\(#\d+\)")),
]

#: A route heading of docs/api.md: "### `GET lemonade/api/v1/health`" (several per line allowed).
_HEADING = re.compile(r"^#{1,6} .*$", re.MULTILINE)
_ROUTE_IN_HEADING = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) lemonade/([^`\s]+)`")


def repo_text_files() -> list[Path]:
    """Tracked files plus new ones git does not ignore, as they are in the work tree."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git work tree (installed from a distribution?)")
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout
    files = []
    for name in sorted(set(out.decode("utf-8", "surrogateescape").split("\0"))):
        if not name:
            continue
        path = ROOT / name
        if path.resolve() == THIS_FILE or not path.is_file():
            continue
        files.append(path)
    return files


def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def forbidden_references(text: str) -> list[tuple[int, str, str]]:
    """(line number, what, the line) for every forbidden reference in ``text``."""
    hits = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in FORBIDDEN:
            if pattern.search(line):
                hits.append((number, what, line.strip()))
                break
    return hits


def doc_path(pattern: str) -> str:
    """A ROUTES pattern as docs/api.md writes it: ``(?P<name>...)`` becomes ``{name}``."""
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)
    path = re.sub(r"\([^)]*\)", "{arg}", path)
    return path.strip("^$").replace("\\", "")


def implemented_methods(handler: type) -> set[str]:
    return {m for m in ("GET", "POST", "PUT", "PATCH", "DELETE")
            if getattr(handler, m.lower()) is not getattr(web.RequestHandler, m.lower())}


def documented_routes() -> set[tuple[str, str]]:
    text = API_DOC.read_text(encoding="utf-8")
    return {(method, path) for heading in _HEADING.findall(text)
            for method, path in _ROUTE_IN_HEADING.findall(heading)}


# -- the checks themselves, so that they can be shown to fail ----------------------------------
def test_the_reference_check_catches_each_kind_of_reference():
    for line in ["The contract is ../shared/SPEC.md.", "see SPEC.md", "(STYLE.md)",
                 "SPEC §3 rule 5", "the guard (SPEC rule 10)", "(STYLE B1)", "issue 4",
                 "Issue #6", "issue#7", "(issue 6)", "fixed in (#2226)"]:
        assert forbidden_references(line), line
    for line in ["a specification", "spec.name", "ModelSpec", "Section 6", "an issue",
                 "colour #1f77b4", "§ 3 of the table", "the shared machine", "tissue 4x"]:
        assert not forbidden_references(line), line


def test_doc_path_normalises_regex_groups():
    assert doc_path("api/v1/health") == "api/v1/health"
    assert doc_path(r"api/v1/models/(?P<model_name>[^/]+)") == "api/v1/models/{model_name}"
    assert doc_path(r"^files/([^/]+)\.gguf$") == "files/{arg}.gguf"


# -- the repository -----------------------------------------------------------------------------
def test_no_file_points_outside_the_repository_or_at_issue_numbers():
    files = repo_text_files()
    assert any(p.name == "README.md" for p in files)
    hits = []
    for path in files:
        text = read_text(path)
        if text is None:
            continue
        for number, what, line in forbidden_references(text):
            hits.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line[:100]}")
    assert not hits, "state the fact instead of pointing at it:\n" + "\n".join(hits)


def test_api_doc_names_every_route_and_method():
    # Imported here: the other checks of this file need no importable server package.
    from lemonade_jupyter.server.routes import ROUTES

    assert API_DOC.is_file()
    text = API_DOC.read_text(encoding="utf-8")
    expected = set()
    for pattern, handler, _kw in ROUTES:
        path = doc_path(pattern)
        assert f"lemonade/{path}" in text, path
        for method in implemented_methods(handler):
            expected.add((method, path))
    documented = documented_routes()
    assert expected - documented == set(), "routes without a heading in docs/api.md"
    assert documented - expected == set(), "docs/api.md documents routes that do not exist"


def test_api_doc_names_every_setting_option_event_kind_and_metric():
    """The reference keeps up with the code: every setting (runtime and start-up only), load
    option, event kind and metric series the code declares is named in docs/api.md."""
    from lemonade_jupyter.core.events import KINDS
    from lemonade_jupyter.core.options import LoadOptions
    from lemonade_jupyter.core.settings import SETTINGS

    text = API_DOC.read_text(encoding="utf-8")
    metrics_source = (ROOT / "lemonade_jupyter" / "core" / "metrics.py").read_text()
    names = {
        "setting": [s.name for s in SETTINGS],
        "load option": list(LoadOptions.__dataclass_fields__),
        "event kind": list(KINDS),
        "metric": sorted(set(re.findall(r"\"(lemonade_[a-z_]+)\"", metrics_source))),
    }
    assert names["metric"], "no metric names found in core/metrics.py"
    missing = [f"{what} {name}" for what, found in names.items() for name in found
               if f"`{name}" not in text]
    assert not missing, "not in docs/api.md: " + ", ".join(missing)


def test_license_is_mit():
    license_file = ROOT / "LICENSE"
    assert license_file.is_file()
    text = license_file.read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in text
    assert re.search(r"^license\s*=\s*MIT\s*$", (ROOT / "setup.cfg").read_text(), re.MULTILINE)
