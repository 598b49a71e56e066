"""The configuration examples cover every setting, load as they are, and are what the README
shows; every ``LEMONADE_*`` variable the package reads is documented."""

from __future__ import annotations

import re
from pathlib import Path

from traitlets.config import Config

from lemonade_jupyter.kernel.magics import LemonadeMagics
from lemonade_jupyter.server.app import LemonadeApp

from tests.helpers import REPO

DOCS = REPO / "docs"
README = (REPO / "README.md").read_text(encoding="utf-8")


def _load(path: Path) -> tuple[Config, str]:
    text = path.read_text(encoding="utf-8")
    config = Config()
    exec(compile(text, str(path), "exec"), {"get_config": lambda: config})  # noqa: S102
    return config, text


def _named(text: str, cls: str) -> set[str]:
    """Settings of ``cls`` the file sets, or shows in a comment (``# c.Cls.name = ...``)."""
    return set(re.findall(rf"^#? ?c\.{cls}\.(\w+) =", text, re.MULTILINE))


def test_server_config_example_covers_every_setting_with_its_default() -> None:
    config, text = _load(DOCS / "jupyter_server_config.py")
    traits = LemonadeApp.class_own_traits(config=True)
    assert _named(text, "LemonadeApp") == set(traits), "every c.LemonadeApp setting, once"
    app = LemonadeApp(config=config)  # validated by the same rules as at start
    for name, value in config.LemonadeApp.items():
        assert getattr(app, name) == value == traits[name].default(), name


def test_ipython_config_example_covers_every_magics_setting_with_its_default() -> None:
    config, text = _load(DOCS / "ipython_config.py")
    traits = LemonadeMagics.class_own_traits(config=True)
    assert _named(text, "LemonadeMagics") == set(traits)
    assert config.InteractiveShellApp.extensions == ["lemonade_jupyter"]
    magics = LemonadeMagics(None, config=config)
    for name, value in config.LemonadeMagics.items():
        assert getattr(magics, name) == value == traits[name].default_value, name


def test_readme_shows_both_examples_and_every_variable() -> None:
    for name in ("jupyter_server_config.py", "ipython_config.py"):
        assert (DOCS / name).read_text(encoding="utf-8").strip() in README, name
    source = "\n".join(p.read_text(encoding="utf-8")
                       for p in (REPO / "lemonade_jupyter").rglob("*.py"))
    variables = set(re.findall(r"\bLEMONADE_[A-Z_]+[A-Z]\b", source))
    assert "LEMONADE_JUPYTER_URL" in variables
    missing = sorted(v for v in variables if f"`{v}`" not in README)
    assert not missing, f"not in the README's table: {missing}"


def test_readme_has_the_screenshot_and_the_editable_install_note() -> None:
    assert "![" in README and "(docs/dashboard.png)" in README
    assert (DOCS / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    editable = README.index("An **editable install**")
    assert "jupyter server extension enable lemonade_jupyter" in README[editable:editable + 600]
    assert "lemonade_jupyter.openai_client()" in README
