"""Ollama's bodies to llama-server's OpenAI-compatible ones and the answers back
(``lemonade_jupyter/server/ollama_translate.py``): tools, formats, thinking, raw generate,
streamed tool calls, and what is refused."""

from __future__ import annotations

import json
import time

import pytest

from lemonade_jupyter.errors import InvalidRequestError
from lemonade_jupyter.server.ollama_options import parse_options
from lemonade_jupyter.server.ollama_translate import (
    AnswerBuilder, chat_request, embed_inputs, generate_request,
)

TOOL = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


def test_chat_request_carries_tools_format_thinking_and_sampling():
    body = {"model": "m", "format": {"type": "object"}, "think": False, "tools": [TOOL],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "thinking": "let me look",
                 "tool_calls": [{"function": {"name": "weather",
                                              "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "sunny", "tool_name": "weather"}]}
    out = chat_request(body, parse_options({"temperature": 0}, None), stream=True)
    assert out["tools"] == [TOOL]
    assert out["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": {"type": "object"}}}
    assert out["chat_template_kwargs"] == {"enable_thinking": False}
    assert out["temperature"] == 0 and out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}
    assistant, tool = out["messages"][1], out["messages"][2]
    assert "thinking" not in assistant
    assert assistant["tool_calls"] == [{"id": "call_0", "type": "function", "function": {
        "name": "weather", "arguments": json.dumps({"city": "Paris"})}}]
    assert tool == {"role": "tool", "content": "sunny", "name": "weather"}
    assert chat_request({"model": "m", "messages": [], "format": "json"}, parse_options(
        None, None), stream=False)["response_format"] == {"type": "json_object"}


def test_generate_is_a_chat_turn_or_a_raw_completion():
    path, out = generate_request({"model": "m", "prompt": "hi", "system": "be brief"},
                                 parse_options(None, None), stream=False)
    assert path == "/v1/chat/completions"
    assert out["messages"] == [{"role": "system", "content": "be brief"},
                               {"role": "user", "content": "hi"}]
    path, out = generate_request({"model": "m", "prompt": "2+2=", "raw": True},
                                 parse_options({"num_predict": 3}, None), stream=True)
    assert path == "/v1/completions" and out["prompt"] == "2+2=" and out["max_tokens"] == 3


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
     "images"),
    ({"model": "m", "messages": [{"role": "user", "content": "x", "extra": 1}]}, "extra"),
    ({"model": "m", "messages": [], "think": "high"}, "think"),
    ({"model": "m", "messages": [], "format": 5}, "format"),
    ({"model": "m", "messages": [], "tools": "all"}, "tools"),
    ({"model": "m", "messages": [], "logprobs": True}, "logprobs"),
])
def test_chat_refusals_name_the_parameter(body, param):
    with pytest.raises(InvalidRequestError) as caught:
        chat_request(body, parse_options(None, None), stream=False)
    assert caught.value.param == param


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "prompt": "x", "suffix": "y"}, "suffix"),
    ({"model": "m", "prompt": "x", "context": [1, 2]}, "context"),
    ({"model": "m", "prompt": "x", "template": "{{ .Prompt }}"}, "template"),
    ({"model": "m", "prompt": 5}, "prompt"),
    ({"model": "m", "prompt": "x", "raw": "yes"}, "raw"),
])
def test_generate_refusals_name_the_parameter(body, param):
    with pytest.raises(InvalidRequestError) as caught:
        generate_request(body, parse_options(None, None), stream=False)
    assert caught.value.param == param


def test_embed_inputs():
    assert embed_inputs({"model": "m", "input": "a"}, legacy=False) == ["a"]
    assert embed_inputs({"model": "m", "input": ["a", "b"], "truncate": True},
                        legacy=False) == ["a", "b"]
    assert embed_inputs({"model": "m", "prompt": "a"}, legacy=True) == ["a"]
    for body in ({"model": "m", "input": []}, {"model": "m", "input": [1]},
                 {"model": "m", "input": "a", "dimensions": 8}):
        with pytest.raises(InvalidRequestError):
            embed_inputs(body, legacy=False)


def test_a_whole_answer_becomes_one_done_line():
    answer = {"choices": [{"finish_reason": "length", "message": {
        "content": "Hi", "reasoning_content": "greet",
        "tool_calls": [{"function": {"name": "f", "arguments": "{\"x\": 1}"}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        "timings": {"prompt_n": 3, "prompt_ms": 1.5, "predicted_n": 2, "predicted_ms": 4.0}}
    line = AnswerBuilder("asked", chat=True, from_chat=True, started=time.monotonic(),
                         load_s=0.25).whole(answer)
    assert line["model"] == "asked" and line["done"] is True and line["done_reason"] == "length"
    assert line["message"] == {"role": "assistant", "content": "Hi", "thinking": "greet",
                               "tool_calls": [{"function": {"name": "f",
                                                            "arguments": {"x": 1}}}]}
    assert (line["prompt_eval_count"], line["eval_count"]) == (3, 2)
    assert line["prompt_eval_duration"] == 1_500_000 and line["eval_duration"] == 4_000_000
    assert line["load_duration"] == 250_000_000


def test_a_stream_becomes_lines_and_merges_tool_call_pieces():
    builder = AnswerBuilder("m", chat=True, from_chat=True, started=time.monotonic(), load_s=0)
    events = [
        {"choices": [{"delta": {"role": "assistant"}}]},
        {"choices": [{"delta": {"content": "He"}}]},
        {"choices": [{"delta": {"content": "llo"}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {
            "name": "wea", "arguments": "{\"ci"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {
            "name": "ther", "arguments": "ty\": \"Paris\"}"}}]}}]},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6},
         "timings": {"prompt_n": 4, "predicted_n": 6}},
    ]
    lines = [line for line in map(builder.chunk, events) if line is not None]
    assert [line["message"]["content"] for line in lines] == ["He", "llo"]
    assert all(line["done"] is False for line in lines)
    done = builder.done()
    assert done["done"] is True and done["done_reason"] == "stop" and done["eval_count"] == 6
    assert done["message"]["tool_calls"] == [{"function": {"name": "weather",
                                                           "arguments": {"city": "Paris"}}}]
    generate = AnswerBuilder("m", chat=False, from_chat=False, started=time.monotonic(),
                             load_s=0)
    assert generate.chunk({"choices": [{"text": "4"}]})["response"] == "4"
