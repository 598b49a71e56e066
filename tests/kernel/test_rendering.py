"""Pool summaries, the pinned-slots warning, and the HTML/text renderings."""

from __future__ import annotations

from typing import Any

import pytest

from lemonade_jupyter.kernel.panel_html import events_html, slots_html, sparkline_svg
from lemonade_jupyter.kernel.pools import (
    catalog_type,
    format_bytes,
    format_seconds,
    idle_seconds,
    pinned_slots_warning,
    pools,
)
from lemonade_jupyter.kernel.rendering import (
    Table, config_report, models_report, stats_line, status_report,
)


def _health(loaded: list[tuple[str, str, bool]], slots: int = 1) -> dict[str, Any]:
    models = [
        {
            "model_name": n,
            "type": t,
            "pinned": p,
            "status": "ready",
            "memory_bytes": 2048,
            "last_use": 1_700_000_000_000,
            "idle_s": 3.0,
            "load_duration_ms": 400.0,
        }
        for n, t, p in loaded
    ]
    types = ["embedding", "llm"]
    return {
        "status": "ok",
        "all_models_loaded": models,
        "max_models": {t: slots for t in types},
        "pinned_models": {t: sum(1 for _, mt, p in loaded if p and mt == t) for t in types},
        "memory": {
            "source": "nvml",
            "devices": [{"name": "GPU0", "total": 8 << 30, "used": 2 << 30}],
        },
    }


def test_pools_counts_slots_and_pins() -> None:
    summary = {
        p["type"]: p for p in pools(_health([("a", "llm", True), ("e", "embedding", False)]))
    }
    assert summary["llm"]["used"] == 1 and summary["llm"]["pinned"] == 1
    assert summary["llm"].full_of_pins and not summary["embedding"].full_of_pins
    assert summary["llm"].slots_text == "1/1"
    unlimited = pools(_health([("a", "llm", True)], slots=-1))[1]
    assert unlimited.slots_text == "1/∞" and not unlimited.full_of_pins


@pytest.mark.parametrize(
    ("loaded", "model", "model_type", "slots", "warns"),
    [
        ([("a", "llm", True)], "b", "llm", 1, True),  # every llm slot pinned
        ([("a", "llm", True)], "a", "llm", 1, False),  # already loaded: no slot needed
        ([("a", "llm", False)], "b", "llm", 1, False),  # an unpinned one can be evicted
        ([("a", "llm", True)], "e", "embedding", 1, False),  # another pool
        ([("a", "llm", True), ("b", "llm", False)], "c", "llm", 2, False),
        ([("a", "llm", True), ("b", "llm", True)], "c", "llm", 2, True),
        ([("a", "llm", True)], "b", "llm", -1, False),  # unlimited
        ([("a", "llm", True)], "zzz", None, 1, False),  # unknown model: server says 404
    ],
)
def test_pinned_slots_warning(
    loaded: list[tuple[str, str, bool]], model: str, model_type: str | None, slots: int, warns: bool
) -> None:
    warning = pinned_slots_warning(_health(loaded, slots), model, model_type)
    assert bool(warning) is warns
    if warning:
        assert "pinned" in warning and model in warning and "409" in warning


def test_idle_and_formatting() -> None:
    assert idle_seconds(1_700_000_000_000, now=1_700_000_010.0) == pytest.approx(10.0)  # ms
    assert idle_seconds(1_700_000_000.0, now=1_700_000_010.0) == pytest.approx(10.0)  # s
    assert idle_seconds("2023-11-14T22:13:20+00:00", now=1_700_000_010.0) == pytest.approx(10.0)
    assert idle_seconds(None) is None and idle_seconds(12.0) is None
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(None) == "—"
    assert format_seconds(75) == "1m 15s" and format_seconds(3.25) == "3.2s"


def test_table_text_and_html_escape() -> None:
    table = Table(["model", "pinned"], [["<b>x</b>", True]], title="T")
    assert table.text().splitlines() == [
        "T",
        "model     pinned",
        "--------  ------",
        "<b>x</b>  yes",
    ]
    assert "&lt;b&gt;x&lt;/b&gt;" in table._repr_html_() and "<b>x</b>" not in table._repr_html_()
    assert "(none)" in Table(["a"], []).text()


def test_status_report_html_and_text() -> None:
    report = status_report(_health([("a", "llm", True)]), "embedded router at http://x/")
    text = repr(report)
    assert "Router: embedded router at http://x/" in text
    assert "Loaded models" in text and "Slots per type" in text and "Memory (nvml)" in text
    assert "GPU0" in text and "25%" in text and "3.0s" in text
    html = report._repr_html_()
    assert (
        html.count("<table") == 4
        and "lemonade-loaded" in html
        and "<td style='text-align:left'>a</td>" in html
    )


def test_models_and_config_reports() -> None:
    models = models_report(
        [
            {
                "id": "m",
                "type": "llm",
                "recipe": "llamacpp",
                "labels": ["llm"],
                "loaded": True,
                "pinned": False,
                "checkpoint": "/m.gguf",
            }
        ]
    )
    assert (
        "m      llm   llamacpp  llm     yes     no" in repr(models)
        and "<table" in models._repr_html_()
    )
    config = config_report(
        {"max_loaded_models": 2, "settable_keys": ["max_loaded_models"]},
        changed=["max_loaded_models"],
    )
    text = repr(config)
    assert "changed" in text and "settable_keys" not in text.split("\n\n", 1)[1]


def test_panel_fragments() -> None:
    assert "all pinned" in slots_html(pools(_health([("a", "llm", True)])))
    assert "collecting" in sparkline_svg([{"GPU0": 0.1}])
    svg = sparkline_svg([{"GPU0": 0.1}, {"GPU0": 0.5}, {"GPU0": 0.9}])
    assert "<polyline" in svg and "GPU0" in svg
    events = [
        {
            "id": 1,
            "time": 1.0,
            "kind": "evict",
            "model": "<m>",
            "reason": "lru",
            "memory_before": 300,
            "memory_after": 100,
        }
    ]
    html = events_html(events, True)
    assert "reason: lru" in html and "&lt;m&gt;" in html and "freed 200 B" in html
    assert "no event stream" in events_html([], False)


def test_loading_a_remote_model_never_warns_of_pinned_slots() -> None:
    """A remote model takes no slot: a pool full of pins cannot refuse it."""
    health = _health([("a", "llm", True)], 1)
    models = [{"id": "user.vllm", "type": "llm", "recipe": "remote"},
              {"id": "user.local", "type": "llm", "recipe": "llamacpp"}]
    assert catalog_type(models, "user.vllm") is None
    assert pinned_slots_warning(health, "user.vllm", catalog_type(models, "user.vllm")) is None
    assert pinned_slots_warning(health, "user.local", catalog_type(models, "user.local"))


def test_status_report_lists_remote_models_with_replicas_that_are_not_up() -> None:
    health = {**_health([("a", "llm", True)]), "remote_models": [{
        "model_name": "user.vllm", "upstream_model": "llama", "status": "ready", "in_flight": 3,
        "replicas": [{"base_url": "https://a/v1", "state": "up", "last_error": None},
                     {"base_url": "https://b/v1", "state": "down",
                      "last_error": "cannot connect"}]}]}
    text = status_report(health, "server").text()
    assert "Remote models (no slot)" in text
    [row] = [line for line in text.splitlines() if "user.vllm" in line]
    assert "llama" in row and "ready" in row and row.rstrip().endswith("3")
    assert "1/2 up; https://b/v1: down (cannot connect)" in row
    assert "Remote models" not in status_report(_health([("a", "llm", True)]), "server").text()


def test_stats_line_of_chat_stats():
    stats = {"model": "m", "route": "/v1/chat/completions", "time_to_first_token": 0.0421,
             "tokens_per_second": 48.26, "input_tokens": 7, "cached_tokens": 24,
             "output_tokens": 4, "finished_at": 1.0}
    assert stats_line(stats) == ("time to first token 0.042 s · 48.3 tokens/s · 7 input tokens "
                                 "(24 cached) · 4 output tokens")
    assert "cached" not in stats_line({**stats, "cached_tokens": 0})
    assert stats_line({k: None for k in stats}) == "No request statistics yet."
