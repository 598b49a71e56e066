"""Backend log files: naming, the newest file of a model, last lines, following across a
restart, and redaction of secrets."""

from __future__ import annotations

import pytest

from lemonade_jupyter.core.backend_logs import (
    REDACTED, LogFollower, last_lines, latest_log, log_path, redact,
)


def write(path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


def test_latest_log_picks_the_highest_generation_of_exactly_that_model(tmp_path):
    for name, gen in [("user.x", 3), ("user.x", 12), ("user.x.y", 40), ("user.xy", 50)]:
        log_path(tmp_path, name, gen).write_text("")
    assert latest_log(tmp_path, "user.x") == (tmp_path / "user.x.12.log", 12)
    assert latest_log(tmp_path, "user.z") is None
    assert latest_log(tmp_path / "missing", "user.x") is None


def test_last_lines_leaves_a_line_being_written_for_the_follower(tmp_path):
    path = tmp_path / "m.1.log"
    write(path, "one\ntwo\nthree\npart")
    lines, offset = last_lines(path, 2)
    assert lines == ["two", "three"]
    assert offset == len("one\ntwo\nthree\n")
    assert last_lines(path, 0) == ([], offset)
    assert last_lines(tmp_path / "none.log", 5) == ([], 0)


def test_follower_reads_new_lines_then_switches_to_a_new_generation(tmp_path):
    first = log_path(tmp_path, "m", 1)
    write(first, "a\nb\n")
    follower = LogFollower(tmp_path, "m")
    assert follower.start(tail=1) == ["b"]
    assert follower.step() == ([], None, [])
    write(first, "c\nhalf")
    assert follower.step() == (["c"], None, [])
    write(first, " done\n")
    write(log_path(tmp_path, "m", 7), "new 1\nnew 2\n")
    assert follower.step() == (["half done"], 7, ["new 1", "new 2"])
    assert follower.step() == ([], None, [])
    write(log_path(tmp_path, "m", 7), "new 3\n")
    assert follower.step() == (["new 3"], None, [])


def test_follower_of_a_model_that_never_started_waits_for_its_first_file(tmp_path):
    follower = LogFollower(tmp_path, "m")
    assert follower.start(tail=10) == []
    assert follower.step() == ([], None, [])
    write(log_path(tmp_path, "m", 2), "loading\n")
    assert follower.step() == ([], 2, ["loading"])


@pytest.mark.parametrize("line,secret", [
    ("key abcdefSECRET in the middle", "abcdefSECRET"),
    ("Authorization: Bearer sk-live-123", "sk-live-123"),
    ("init: api_keys: ****Y123", "****Y123"),
    ("GET /api?token=0123abcd&x=1", "0123abcd"),
    ('{"api_key": "hunter2"}', "hunter2"),
    ("Authorization: token jupytertoken42", "jupytertoken42"),
])
def test_redact_removes_given_secrets_and_anything_like_a_credential(line, secret):
    out = redact(line, ["abcdefSECRET"])
    assert secret not in out and REDACTED in out


def test_redact_leaves_ordinary_lines_alone():
    line = "srv load_model: initializing, n_slots = 4, n_ctx_slot = 8192, tokens: 12"
    assert redact(line, ["zzz", ""]) == line
