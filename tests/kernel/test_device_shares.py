"""Per-device memory on the notebook side: each model's share in the status report and the
dashboard, and the warning before a load that pinned models leave no room for."""

from __future__ import annotations

from lemonade_jupyter.kernel.panel_html import device_shares_html
from lemonade_jupyter.kernel.pools import device_shares, pinned_memory_warning
from lemonade_jupyter.kernel.rendering import status_report

GIB = 1024 ** 3
MIB = 1024 ** 2


def health(models, devices):
    return {"status": "ok", "all_models_loaded": models, "max_models": {"llm": -1},
            "pinned_models": {"llm": 0}, "loaded_models": {"llm": len(models)},
            "memory": {"source": "nvml", "devices": devices},
            "engine": {"flavour": "cuda", "path": "/c/llama-server", "offload": True}}


def model(name, figures, pinned=False):
    return {"model_name": name, "type": "llm", "status": "ready", "pinned": pinned,
            "memory_by_device": {k: {"bytes": v, "source": "nvml_process"}
                                 for k, v in figures.items()}}


H = health(
    [model("a", {"GPU-0": 10 * GIB, "cpu": 300 * MIB}, pinned=True),
     model("b", {"GPU-0": 20 * GIB}), model("c", {"GPU-1": 5 * GIB}),
     model("d", {"cpu": 200 * MIB})],
    [{"name": "H200 #0", "uuid": "GPU-0", "total": 140 * GIB, "used": 40 * GIB},
     {"name": "H200 #1", "uuid": "GPU-1", "total": 140 * GIB, "used": 5 * GIB},
     {"name": "system", "total": 64 * GIB, "used": 8 * GIB}])


def test_device_shares_split_each_device_into_models_other_and_free():
    shares = {s["key"]: s for s in device_shares(H)}
    gpu0 = shares["GPU-0"]
    assert gpu0["models"] == [("a", 10 * GIB, True), ("b", 20 * GIB, False)]
    assert gpu0["other"] == 10 * GIB and gpu0["free"] == 100 * GIB
    assert shares["GPU-1"]["models"] == [("c", 5 * GIB, False)] and shares["GPU-1"]["other"] == 0
    assert [n for n, _b, _p in shares["cpu"]["models"]] == ["a", "d"]
    page = device_shares_html(list(shares.values()))
    assert page.count("lemonade-device-share") == 3
    assert "a (pinned)" in page and "free" in page and "other" in page


def test_status_report_names_the_engine_and_each_models_share():
    text = status_report(H, "server http://x/").text()
    assert "Engine: cuda (offloads to GPU): /c/llama-server" in text
    assert "Memory by model and device" in text and "H200 #1" in text


def test_load_warns_when_pinned_models_fill_the_budget_or_a_gpu():
    budget = {"memory_budget_mib": 310}
    warning = pinned_memory_warning(H, budget, "e")
    assert warning and "memory budget" in warning and "(a)" in warning
    assert pinned_memory_warning(H, {"memory_budget_mib": 4096}, "e") is None
    assert pinned_memory_warning(H, budget, "a") is None  # already loaded: nothing to admit
    full = health([model("big", {"GPU-0": 130 * GIB}, pinned=True)],
                  [{"name": "H200 #0", "uuid": "GPU-0", "total": 140 * GIB, "used": 131 * GIB}])
    warning = pinned_memory_warning(full, {}, "e")
    assert warning and "H200 #0" in warning and "409" in warning


def test_dashboard_header_says_which_engine_runs():
    from lemonade_jupyter.kernel.panel_html import header_html

    page = header_html("server http://x/", None, engine=H["engine"])
    assert "engine cuda on the GPU" in page and "/c/llama-server" in page
    assert "engine" not in header_html("server http://x/", None)
