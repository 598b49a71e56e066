"""The pure parts of hub pulls: checkpoint names, which files a variant picks, the curated
list, the error mapping, the engine's command line and the progress indicator."""

from __future__ import annotations

import errno

import httpx
import pytest

from lemonade_jupyter.core import hub_fetch
from lemonade_jupyter.core.catalog import Catalog, ModelSpec, load_curated
from lemonade_jupyter.core.engines.llamacpp import LlamaCppEngine
from lemonade_jupyter.core.hub import HubEnv, HubRef, RepoFile, parse_checkpoint, plan_pull
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.core.hub_errors import hub_error
from lemonade_jupyter.core.hub_transfer import HubStatusError
from lemonade_jupyter.errors import (
    HubAccessError, HubAuthError, HubError, HubNotFoundError, HubUnavailableError,
    InsufficientStorageError, InvalidRequestError, ModelNotFoundError,
)
from lemonade_jupyter.kernel.progress import ProgressView

LISTING = [RepoFile(p, 10) for p in (
    "README.md", "Qwen3-0.6B-Q4_0.gguf", "Qwen3-0.6B-Q4_K_M.gguf", "Qwen3-0.6B-Q4_K_S.gguf",
    "Qwen3-0.6B-Q8_0.gguf", "mmproj-F16.gguf",
    "Q6_K/Qwen3-0.6B-Q6_K-00001-of-00002.gguf", "Q6_K/Qwen3-0.6B-Q6_K-00002-of-00002.gguf",
    "BF16/Qwen3-0.6B-BF16-00002-of-00003.gguf", "BF16/Qwen3-0.6B-BF16-00001-of-00003.gguf",
)]


@pytest.mark.parametrize("text,expected", [
    ("unsloth/Qwen3-0.6B-GGUF:Q4_0", HubRef("unsloth/Qwen3-0.6B-GGUF", variant="Q4_0")),
    ("org/repo", HubRef("org/repo")),
    ("org/repo/sub/model.Q8_0.gguf", HubRef("org/repo", filename="sub/model.Q8_0.gguf")),
    ("org/repo:model-q4.gguf", HubRef("org/repo", variant="model-q4.gguf")),
])
def test_checkpoints_parse(text, expected):
    assert parse_checkpoint(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", [
    "/abs/model.gguf", "relative/model.gguf", "./x/y.gguf", "~/m.gguf", "model.gguf", "org",
    "org/repo:", "org/repo:Q4 0", "a--b/c:Q4", "org/re..po:Q4", "org/repo/../x.gguf",
    "org/repo/readme.md", "org/repo/x/", "", None, 5, ["org/repo"], "o/r:" + "x" * 200,
])
def test_non_checkpoints_do_not_parse(text):
    assert parse_checkpoint(text) is None


@pytest.mark.parametrize("variant,files", [
    ("Q4_0", ["Qwen3-0.6B-Q4_0.gguf"]),
    ("q4_k_m", ["Qwen3-0.6B-Q4_K_M.gguf"]),  # case-insensitive
    ("Q8", ["Qwen3-0.6B-Q8_0.gguf"]),  # one substring match
    ("qwen3-0.6b-q8_0.gguf", ["Qwen3-0.6B-Q8_0.gguf"]),  # a file name
    ("Q6_K", ["Q6_K/Qwen3-0.6B-Q6_K-00001-of-00002.gguf",
              "Q6_K/Qwen3-0.6B-Q6_K-00002-of-00002.gguf"]),  # every part, first first
])
def test_variant_picks_the_files(variant, files):
    plan = plan_pull(HubRef("o/r", variant=variant), LISTING)
    assert [f.path for f in plan.files] == files
    assert plan.mmproj is None


def test_ambiguous_and_unknown_variants_list_what_there_is():
    with pytest.raises(InvalidRequestError) as info:
        plan_pull(HubRef("o/r", variant="Q4_K"), LISTING)
    assert info.value.param == "checkpoint"
    assert info.value.extra["variants"] == ["Q4_K_M", "Q4_K_S"]
    assert "ambiguous" in info.value.message and "Q4_K_M, Q4_K_S" in info.value.message
    with pytest.raises(InvalidRequestError) as info:
        plan_pull(HubRef("o/r", variant="IQ2_XS"), LISTING)
    assert info.value.extra["variants"] == ["BF16", "Q4_0", "Q4_K_M", "Q4_K_S", "Q6_K", "Q8_0"]
    with pytest.raises(InvalidRequestError):  # several models and no variant
        plan_pull(HubRef("o/r"), LISTING)
    only = [RepoFile("m-Q4_0.gguf", 3), RepoFile("mmproj-f16.gguf", 1)]
    assert [f.path for f in plan_pull(HubRef("o/r"), only).files] == ["m-Q4_0.gguf"]


def test_incomplete_split_file_names_and_mmproj():
    with pytest.raises(HubNotFoundError, match="2 of the 3 parts"):  # a part is missing
        plan_pull(HubRef("o/r", variant="BF16"), LISTING + [RepoFile("BF16/x-00009.gguf")])
    plan = plan_pull(HubRef("o/r", filename="Q6_K/Qwen3-0.6B-Q6_K-00002-of-00002.gguf"), LISTING)
    assert len(plan.files) == 2 and plan.files[0].path.endswith("00001-of-00002.gguf")
    with pytest.raises(HubNotFoundError) as info:
        plan_pull(HubRef("o/r", filename="nope.gguf"), LISTING)
    assert info.value.status_code == 404
    plan = plan_pull(HubRef("o/r", variant="Q4_0"), LISTING, mmproj="mmproj-f16.gguf")
    assert plan.mmproj == RepoFile("mmproj-F16.gguf", 10) and plan.total_size == 20
    with pytest.raises(HubNotFoundError) as info:
        plan_pull(HubRef("o/r", variant="Q4_0"), LISTING, mmproj="mmproj-Q8.gguf")
    assert info.value.param == "mmproj" and "mmproj-F16.gguf" in info.value.message


def test_curated_list_covers_every_kind_of_model():
    curated = load_curated()
    names = [s.name for s in curated]
    assert len(names) == len(set(names)) >= 24
    assert {s.type for s in curated} == {"llm", "embedding", "reranking", "transcription"}
    assert {s.recipe for s in curated if s.type == "transcription"} == {"whispercpp"}
    labels = {label for s in curated for label in s.labels}
    assert {"coding", "vision", "reasoning"} <= labels
    assert all(parse_checkpoint(s.source) for s in curated)
    assert all(s.size_gb and s.size_gb > 0 for s in curated)
    assert all(s.mmproj_source for s in curated if "vision" in s.labels)
    catalog = Catalog(None)
    assert [s.name for s in catalog.all()] == [s.name for s in catalog.all()
                                                if s.builtin or s.name.startswith("user.")]
    listed = catalog.all(include_not_downloaded=True)
    assert {s.name for s in listed} >= set(names)
    assert not catalog.get(names[0]).downloaded and catalog.get(names[0]).checkpoint == ""


def test_bad_curated_entries_are_skipped(tmp_path):
    path = tmp_path / "curated.json"
    path.write_text('[{"model_name": "ok-GGUF", "checkpoint": "o/r:Q4_0"}, 3, {"model_name": 1},'
                    ' {"model_name": "bad", "checkpoint": "/local.gguf"},'
                    ' {"model_name": "lab", "checkpoint": "o/r:Q4_0", "labels": "llm"},'
                    ' {"model_name": "ok-GGUF", "checkpoint": "o/r:Q8_0"}]')
    assert [s.name for s in load_curated(path)] == ["ok-GGUF"]
    path.write_text("{not json")
    assert load_curated(path) == []


def test_pull_requests_are_validated_before_anything(tmp_path):
    catalog = Catalog(tmp_path, curated=[ModelSpec("Tiny-GGUF", "", source="o/r:Q4_0",
                                                   curated=True)])
    request = catalog.prepare_pull("user.x", "o/r:Q4_0", None, ["reranking"], "mmproj.gguf")
    assert (request.ref, request.labels, request.mmproj) == (HubRef("o/r", "Q4_0"),
                                                             ("reranking",), "mmproj.gguf")
    assert catalog.prepare_pull("Tiny-GGUF", None).kind == "curated"
    for args, param in [
        (("x", "o/r:Q4_0"), "model_name"),
        (("user.x", "o/r/readme.md"), "checkpoint"),
        (("user.x", "o/r:Q4_0", "vllm"), "recipe"),
        (("user.x", "o/r:Q4_0", None, "llm"), "labels"),
        (("user.x", "o/r:Q4_0", None, None, "../etc/passwd"), "mmproj"),
        (("user.x", str(tmp_path), None, None, "mmproj.gguf"), "checkpoint"),
        (("Tiny-GGUF", None, None, ["llm"]), "labels"),
    ]:
        with pytest.raises(InvalidRequestError) as info:
            catalog.prepare_pull(*args)
        assert info.value.param == param, args
    with pytest.raises(ModelNotFoundError):
        catalog.prepare_pull("No-Such-GGUF", None)
    assert "user.x" not in catalog and not (tmp_path / "user_models.json").exists()


def test_error_mapping(tmp_path):
    env = HubEnv("http://hub.test", None, False, tmp_path)
    ref = HubRef("o/r", variant="Q4_0")
    full = hub_error(OSError(errno.ENOSPC, "No space left on device"), ref, env)
    assert isinstance(full, InsufficientStorageError) and full.status_code == 507
    assert "full" in full.message
    transports = [ConnectionRefusedError("refused"), httpx.ConnectError("refused"),
                  httpx.ConnectTimeout("slow"), httpx.ReadTimeout("slow"),
                  httpx.RemoteProtocolError("cut"), httpx.ReadError("reset")]
    for exc in transports:
        down = hub_error(exc, ref, env)
        assert down.status_code == 503, exc
        assert "http://hub.test could not be reached" in down.message
        assert "HF_HUB_OFFLINE" in down.message and "network" in down.message
    odd = hub_error(ValueError("odd"), ref, env)
    assert odd.status_code == 502 and "ValueError" not in odd.message


@pytest.mark.parametrize("status,code,token,expected,words", [
    (401, "RepoNotFound", None, HubAuthError, "set HF_TOKEN"),
    (401, "", "t", HubAuthError, "refused the token in HF_TOKEN"),
    (403, "GatedRepo", None, HubAccessError, "is gated"),
    (404, "RepoNotFound", None, HubNotFoundError, "Repository o/r was not found"),
    (404, "EntryNotFound", None, HubNotFoundError, "is not on"),
    (404, "RevisionNotFound", None, HubNotFoundError, "no revision"),
    (429, "", None, HubUnavailableError, "too many requests"),
    (500, "", None, HubUnavailableError, "failed (HTTP 500)"),
    (418, "", None, HubError, "HTTP 418"),
])
def test_hub_status_errors_are_told_in_words(tmp_path, status, code, token, expected, words):
    env = HubEnv("http://hub.test", token, False, tmp_path)
    error = hub_error(HubStatusError(status, code, "file m.gguf of o/r"),
                      HubRef("o/r", variant="Q4_0"), env)
    assert type(error) is expected and words in error.message
    assert "Error" not in error.message  # no Python class name


def test_space_check_refuses_a_pull_that_cannot_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_fetch, "free_bytes", lambda root: 10)
    with pytest.raises(InsufficientStorageError) as info:
        hub_fetch._check_space(HubRef("o/r"), [RepoFile("m.gguf", 2_000_000_000)], tmp_path)
    assert "2.00 GB" in info.value.message and "HF_HUB_CACHE" in info.value.message
    hub_fetch._check_space(HubRef("o/r"), [RepoFile("m.gguf", 5)], tmp_path)


def test_engine_flags_for_reranking_embedding_and_mmproj():
    engine = LlamaCppEngine("/bin/llama-server")
    def argv(**kw):
        return engine.argv(ModelSpec(name="user.m", checkpoint="/m.gguf", **kw), LoadOptions(),
                           port=1)
    rerank = argv(labels=("reranking",))
    assert "--reranking" in rerank and "--embeddings" not in rerank
    emb = argv(labels=("embeddings",))
    assert "--embeddings" in emb and "--reranking" not in emb
    vision = argv(labels=("vision",), mmproj="/p/mmproj.gguf")
    assert vision[vision.index("--mmproj") + 1] == "/p/mmproj.gguf"
    assert "--mmproj" not in argv() and "--reranking" not in argv()


def test_progress_view_is_a_bar_with_a_text_fallback():
    running = ProgressView("Pulling user.x", 1.0, done=25, total=100)
    assert "<progress" in running._repr_html_() and "value='25.0'" in running._repr_html_()
    assert "25 %" in repr(running)
    done = ProgressView("Pulling user.x", 2.0, "done", done=100, total=100)
    assert "100 %" in repr(done) and "✓" in done._repr_html_()
    assert "cancelled" in repr(ProgressView("Pulling user.x", 2.0, "cancelled", 5, 100))
    indeterminate = ProgressView("Loading m", 1.0)
    assert "<progress style" in indeterminate._repr_html_() and "%" not in repr(indeterminate)
