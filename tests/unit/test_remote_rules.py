"""The rules of a remote registration without a server: the URL rebuilt from its parts, the
host rules as a table, the key variables an admin lends, full-string name checks, and the
settings that carry the admin's lists."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from traitlets import TraitError
from traitlets.config import Config

from lemonade_jupyter.core.remote_rules import (
    DEFAULT_KEY_ENVS, HostRules, is_own_credential, key_env_allowed,
)
from lemonade_jupyter.core.remote_spec import (
    RemoteSpec, ReplicaSpec, check_base_url, parse_remote_pull, url_endpoint,
)
from lemonade_jupyter.core.settings import RouterSettings, validate_setting
from lemonade_jupyter.errors import InvalidRequestError
from lemonade_jupyter.server.remote_hosts import is_local_address, resolve

LENT = "LEMONADE_REMOTE_KEY_A"


# ----------------------------------------------------------------------------- the URL
@pytest.mark.parametrize("url, rebuilt", [
    ("https://vllm.example.org/v1", "https://vllm.example.org/v1"),
    ("https://vllm.example.org/v1/", "https://vllm.example.org/v1"),
    ("HTTP://GPU-A.Example.org:8000/openai/v1//", "http://gpu-a.example.org:8000/openai/v1"),
    ("http://10.0.0.2:8000/v1", "http://10.0.0.2:8000/v1"),
    ("http://[FD00::0002]:8000/v1", "http://[fd00::2]:8000/v1"),
    ("http://gpu_a:8000", "http://gpu_a:8000"),
    ("https://host/a-b_c.d~e/v1", "https://host/a-b_c.d~e/v1"),
])
def test_a_base_url_is_rebuilt_from_its_parts(url, rebuilt):
    assert check_base_url(url) == rebuilt


@pytest.mark.parametrize("url, words", [
    ("http://h.example/v1?", "query or fragment"),
    ("http://h.example/v1#", "query or fragment"),
    ("http://h.example/v1/?#", "query or fragment"),
    ("http://h.example/v1?a=b", "query or fragment"),
    ("http://user@h.example/v1", "credentials"),
    ("http://@h.example/v1", "credentials"),
    ("http://u:p@h.example/v1", "credentials"),
    ("http://evil.example\\@127.0.0.1/v1", "credentials"),
    ("ftp://h.example/v1", "http:// or https://"),
    ("//h.example/v1", "http:// or https://"),
    ("http:///v1", "http:// or https://"),
    ("http://127.1/v1", "DNS name or an IP address"),
    ("http://2130706433/v1", "DNS name or an IP address"),
    ("http://0x7f.0.0.1/v1", "DNS name or an IP address"),
    ("http://0177.0.0.1/v1", "DNS name or an IP address"),
    ("http://[fe80::1%25eth0]/v1", "DNS name or an IP address"),
    ("http://h.example./v1", "DNS name or an IP address"),
    ("http://-h.example/v1", "DNS name or an IP address"),
    ("http://h.example:0/v1", "port from 1 to 65535"),
    ("http://h.example:99999/v1", "not a valid URL"),
    ("http://h.example/v1/../api/kernels", "plain path"),
    ("http://h.example/./v1", "plain path"),
    ("http://h.example/a%2f..%2fapi", "plain path"),
    ("http://h.example/v1\\api", "plain path"),
    ("http://h.example/v1\n", "printable ASCII"),
    ("http://h.example/v1\r", "printable ASCII"),
    ("http://h.example/v1\t", "printable ASCII"),
    ("http://h .example/v1", "printable ASCII"),
    ("http://hé.example/v1", "printable ASCII"),
    ("", "URL string"),
    (None, "URL string"),
])
def test_a_base_url_that_is_not_plain_is_refused(url, words):
    with pytest.raises(InvalidRequestError) as info:
        check_base_url(url)
    assert info.value.param == "base_url" and words in info.value.message


def test_the_endpoint_of_a_rebuilt_url_has_its_default_port():
    assert url_endpoint("https://h.example/v1") == ("h.example", 443)
    assert url_endpoint("http://h.example/v1") == ("h.example", 80)
    assert url_endpoint("http://[::1]:8888/v1") == ("::1", 8888)


# ----------------------------------------------------------------------------- hosts
OWN = HostRules(own_ports=frozenset({8888}), own_names=frozenset({"localhost", "nb-host"}))
LOOP4, LOOP6 = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")
LAN = ipaddress.ip_address("10.1.2.3")
FAR = ipaddress.ip_address("203.0.113.7")


@pytest.mark.parametrize("host, port, addresses, local, refused", [
    ("127.0.0.1", 8888, [], [], True),
    ("127.9.9.9", 8888, [], [], True),
    ("::1", 8888, [], [], True),
    ("::ffff:127.0.0.1", 8888, [], [], True),
    ("0.0.0.0", 8888, [], [], True),
    ("::", 8888, [], [], True),
    ("localhost", 8888, [], [], True),               # by name, even if it does not resolve
    ("nb-host", 8888, [LAN], [LAN], True),           # this machine's hostname
    ("10.1.2.3", 8888, [], [LAN], True),             # one of this machine's addresses
    ("lo.example", 8888, [FAR, LOOP4], [LOOP4], True),  # a name that resolves back here
    ("lo6.example", 8888, [LOOP6], [LOOP6], True),
    ("127.0.0.1", 8000, [], [], False),              # another port on loopback
    ("localhost", 8000, [LOOP4], [LOOP4], False),
    ("10.1.2.4", 8888, [], [], False),               # another machine on the same port
    ("vllm.example", 8888, [FAR], [], False),
    ("unresolved.example", 8888, [], [], False),
])
def test_only_this_server_is_refused_by_default(host, port, addresses, local, refused):
    why = OWN.refusal(host, port, addresses, local)
    assert (why is not None) is refused, why
    if refused:
        assert "this Jupyter server itself" in why


def test_an_allowed_host_lifts_the_own_refusal_and_is_the_whole_list():
    rules = HostRules(allowed=("localhost", "10.0.0.0/8"), own_ports=frozenset({8888}))
    assert rules.refusal("localhost", 8888, [LOOP4], [LOOP4]) is None
    assert rules.refusal("10.1.2.3", 8888, [], [LAN]) is None
    assert rules.refusal("gpu.lan", 80, [LAN], []) is None  # every address in a network
    assert "remote_allowed_hosts" in rules.refusal("gpu.lan", 80, [LAN, FAR], [])
    assert "remote_allowed_hosts" in rules.refusal("vllm.example", 443, [FAR], [])
    assert "remote_allowed_hosts" in rules.refusal("127.0.0.1", 8888, [], [LOOP4])
    assert "remote_allowed_hosts" in rules.refusal("unresolved.example", 443, [], [])


def test_a_denied_host_is_refused_by_name_or_by_any_address_whatever_else_says():
    rules = HostRules(allowed=("vllm.example", "10.0.0.0/8"),
                      denied=("vllm.example", "10.9.0.0/16", "2001:db8::/32"))
    assert "remote_denied_hosts" in rules.refusal("VLLM.example", 443, [FAR], [])
    assert "remote_denied_hosts" in rules.refusal("10.9.1.1", 80, [], [])
    assert "remote_denied_hosts" in rules.refusal("x.lan", 80, [LAN, ipaddress.ip_address(
        "10.9.0.5")], [])
    assert "remote_denied_hosts" in rules.refusal("2001:db8::5", 80, [], [])
    assert rules.refusal("10.1.2.3", 80, [], []) is None


def test_the_system_says_which_addresses_are_this_machines():
    assert is_local_address(LOOP4)
    assert not is_local_address(ipaddress.ip_address("192.0.2.1"))  # TEST-NET-1, never local
    found = asyncio.run(resolve("localhost"))
    assert found and all(a.is_loopback for a in found)
    assert asyncio.run(resolve("10.1.2.3")) == [LAN]


# ----------------------------------------------------------------------------- key variables
@pytest.mark.parametrize("name, allowed, lent", [
    ("LEMONADE_REMOTE_KEY_VLLM", DEFAULT_KEY_ENVS, True),
    ("LEMONADE_REMOTE_KEY_", DEFAULT_KEY_ENVS, False),      # the prefix alone names nothing
    ("LEMONADE_REMOTE_KEYX", DEFAULT_KEY_ENVS, False),
    ("lemonade_remote_key_vllm", DEFAULT_KEY_ENVS, False),  # names are case-sensitive
    ("VLLM_KEY", DEFAULT_KEY_ENVS, False),
    ("VLLM_KEY", ("VLLM_KEY",), True),
    ("VLLM_KEY_2", ("VLLM_KEY",), False),
    ("VLLM_KEY_2", ("VLLM_*",), True),
    ("HOME", DEFAULT_KEY_ENVS, False),
    ("JUPYTER_TOKEN", ("JUPYTER_TOKEN",), False),           # never, even when listed
    ("jupyter_token", ("jupyter_token",), False),
    ("JUPYTERHUB_API_TOKEN", ("JUPYTERHUB_*",), False),
    ("JPY_API_TOKEN", ("JPY_API_TOKEN",), False),
    ("HF_TOKEN", ("HF_TOKEN",), False),
    ("HUGGING_FACE_HUB_TOKEN", ("HUGGING_FACE_HUB_TOKEN",), False),
    ("LEMONADE_JUPYTER_TOKEN", ("LEMONADE_*",), False),
    ("LLAMA_API_KEY", ("LLAMA_API_KEY",), False),
    (LENT + "\n", DEFAULT_KEY_ENVS, False),
])
def test_only_lent_variables_may_be_named(name, allowed, lent):
    assert key_env_allowed(name, allowed) is lent


def test_a_variable_not_lent_gets_one_answer_set_or_not(monkeypatch):
    monkeypatch.setenv("SERVER_SECRET", "sk-x")
    monkeypatch.delenv("NOT_A_SERVER_VARIABLE", raising=False)
    messages = set()
    for name in ("SERVER_SECRET", "NOT_A_SERVER_VARIABLE", "HF_TOKEN"):
        with pytest.raises(InvalidRequestError) as info:
            parse_remote_pull({"model_name": "user.x", "recipe": "remote",
                               "base_url": "http://h.example/v1", "api_key_env": name})
        assert info.value.param == "api_key_env"
        messages.add(info.value.message)
    assert len(messages) == 1 and "SERVER_SECRET" not in messages.pop()


def test_the_servers_own_credentials_are_never_read_even_from_a_state_file(monkeypatch):
    monkeypatch.setenv("JUPYTER_TOKEN", "jupyter-secret")
    monkeypatch.setenv(LENT, "sk-lent")
    assert is_own_credential("JUPYTER_TOKEN")
    assert ReplicaSpec("http://h.example/v1", "JUPYTER_TOKEN").auth_headers() == {}
    assert ReplicaSpec("http://h.example/v1", LENT).auth_headers() == {
        "Authorization": "Bearer sk-lent"}
    entry = {"model_name": "user.x", "upstream_model": "m",
             "replicas": [{"base_url": "http://h.example/v1", "api_key_env": "JUPYTER_TOKEN"}]}
    kept = RemoteSpec.from_json(entry)  # read (and dropped at start, with a note), never used
    assert kept is not None and kept.replicas[0].auth_headers() == {}


# ----------------------------------------------------------------------------- names
@pytest.mark.parametrize("change, param, message", [
    ({"model_name": "user.x\n"}, "model_name", "must look like 'user.NAME'"),
    ({"model_name": "user.x\r"}, "model_name", "must look like 'user.NAME'"),
    ({"upstream_model": "m\n"}, "upstream_model", "the upstream's model name"),
    ({"upstream_model": "m\r"}, "upstream_model", "the upstream's model name"),
    ({"labels": ["llm\n"]}, "labels", "list of short strings"),
    ({"api_key_env": LENT + "\n"}, "api_key_env", "must name an environment variable"),
    ({"api_key_env": LENT + "\r"}, "api_key_env", "must name an environment variable"),
])
def test_every_name_is_matched_whole(monkeypatch, change, param, message):
    monkeypatch.setenv(LENT, "sk-lent")
    body = {"model_name": "user.x", "recipe": "remote", "base_url": "http://h.example/v1",
            "upstream_model": "m", "api_key_env": LENT, **change}
    with pytest.raises(InvalidRequestError) as info:
        parse_remote_pull(body)
    assert info.value.param == param and message in info.value.message


@pytest.mark.parametrize("field, value", [
    ("model_name", "user.x\n"), ("upstream_model", "m\n"), ("labels", ["llm\n"]),
    ("group", "user.g\n"),
])
def test_a_persisted_name_with_a_newline_is_junk(field, value):
    entry = {"model_name": "user.x", "upstream_model": "m", "labels": ["llm"],
             "replicas": [{"base_url": "http://h.example/v1", "api_key_env": LENT}]}
    if field == "group":
        entry.update(group=value, model_name=f"{value}/m")
    else:
        entry[field] = value
    assert RemoteSpec.from_json(entry) is None
    entry = {**entry, "replicas": [{"base_url": "http://h.example/v1", "api_key_env": LENT + "\n"}]}
    assert RemoteSpec.from_json(entry) is None


# ----------------------------------------------------------------------------- settings
def test_the_rules_are_start_up_settings_never_set_at_run_time():
    assert RouterSettings().remote_key_envs == DEFAULT_KEY_ENVS
    for key in ("remote_allowed_hosts", "remote_denied_hosts", "remote_key_envs"):
        with pytest.raises(InvalidRequestError, match="Unknown config key"):
            validate_setting(key, ["*"])


@pytest.mark.parametrize("key, value", [
    ("remote_allowed_hosts", ["bad host"]),
    ("remote_denied_hosts", ["h.example\n"]),
    ("remote_key_envs", ["*"]),                      # lending everything is no entry
    ("remote_key_envs", ["VLLM-KEY"]),
    ("remote_key_envs", ["VLLM_KEY\n"]),
])
def test_a_bad_list_in_the_config_stops_the_start(key, value):
    from lemonade_jupyter.server.app import LemonadeApp

    with pytest.raises(TraitError, match=f"c.LemonadeApp.{key}"):
        LemonadeApp(config=Config({"LemonadeApp": {key: value}}))


def test_a_good_list_in_the_config_reaches_the_router():
    from lemonade_jupyter.server.app import LemonadeApp

    app = LemonadeApp(config=Config({"LemonadeApp": {
        "remote_allowed_hosts": ["gpu-a.lan", "10.0.0.0/8", "fd00::/8"],
        "remote_key_envs": ["VLLM_*"]}}))
    settings = app.router_settings()
    assert settings.remote_allowed_hosts == ("gpu-a.lan", "10.0.0.0/8", "fd00::/8")
    assert settings.remote_key_envs == ("VLLM_*",)


def test_a_node_router_refuses_every_port_of_its_own_machine():
    """On a node router the Hub's API, its proxy's API and users' servers listen on this
    machine too: any port of an own address is refused, not only the server's own."""
    node = HostRules(own_ports=frozenset({8888}), node=True)
    assert "on this node" in node.refusal("127.0.0.1", 8081, [], [])
    assert "on this node" in node.refusal("localhost", 8001, [LOOP4], [LOOP4])
    assert "on this node" in node.refusal("10.1.2.3", 9000, [], [LAN])  # an address of ours
    assert node.refusal("gpu.lan", 8000, [FAR], []) is None  # another machine
    assert HostRules(own_ports=frozenset({8888})).refusal("127.0.0.1", 8081, [], []) is None
    lifted = HostRules(allowed=("127.0.0.1",), own_ports=frozenset({8888}), node=True)
    assert lifted.refusal("127.0.0.1", 8081, [], []) is None
