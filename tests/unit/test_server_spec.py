"""The typed server spec: argv derived per SGLang version, overrides, deprecations named."""

from __future__ import annotations

import argparse

import pytest
import yaml

from sglkit import profile as profiles
from sglkit.errors import ConfigError
from sglkit.server import parse
from sglkit.server import spec as server_spec
from sglkit.versions import SGLang


@pytest.fixture
def prof(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"path": "org/m"},
        "server": {"context_length": 4096, "port": 31000,
                   "args": {"load-format": "auto", "cuda-graph-max-bs": 8}},
    }))  # fmt: skip
    return profiles.load(path)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("0.5.16", ["--cuda-graph-backend-decode", "disabled",
                    "--cuda-graph-backend-prefill", "disabled"]),
        ("0.5.23", ["--cuda-graph-backend-decode", "disabled",
                    "--cuda-graph-backend-prefill", "disabled"]),
        ("0.5.10", ["--disable-cuda-graph"]),
        (None, ["--cuda-graph-backend-decode", "disabled",
                "--cuda-graph-backend-prefill", "disabled"]),
    ],
)  # fmt: skip
def test_cuda_graph_off_follows_the_version(prof, version, expected):
    spec = server_spec.build(prof, server_spec.Overrides(disable_cuda_graph=True), SGLang(version))
    argv = spec.argv()
    assert argv[-len(expected) :] == expected


def test_an_override_replaces_the_profiles_own_flag_once(prof):
    spec = server_spec.build(prof, server_spec.Overrides(load_format="dummy", port=32000))
    argv = spec.argv()
    assert argv.count("--load-format") == 1 and argv[argv.index("--load-format") + 1] == "dummy"
    assert spec.url == "http://127.0.0.1:32000" and argv[argv.index("--port") + 1] == "32000"


def test_wildcard_bind_is_reached_on_loopback(prof):
    assert server_spec.build(prof, server_spec.Overrides(host="0.0.0.0")).url.startswith(
        "http://127.0.0.1:"
    )
    # the same address the run's Prometheus scrapes it on (net.client_host, one rule for both)
    assert server_spec.build(prof, server_spec.Overrides(host="::")).url.startswith(
        "http://127.0.0.1:"
    )
    assert server_spec.build(prof, server_spec.Overrides(host="::1")).url.startswith(
        "http://[::1]:"
    )


def test_endpoints_new_name_first_from_0_5_16():
    assert SGLang("0.5.16").endpoints("model_info") == ("/model_info", "/get_model_info")
    assert SGLang("0.5.10").endpoints("server_info") == ("/get_server_info", "/server_info")


class DeprecatedAliasStoreAction(argparse.Action):
    """Shaped as SGLang's own (sglang.srt.server_args): a Deprecated* action with new_flag."""

    def __init__(self, *args, new_flag=None, **kwargs):
        self.new_flag = new_flag
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)


def test_profile_check_warns_for_a_deprecated_flag_naming_its_replacement(prof):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cuda-graph-max-bs", action=DeprecatedAliasStoreAction,
                        new_flag="--cuda-graph-max-bs-decode", dest="x")  # fmt: skip
    parser.add_argument("--load-format")
    spec = server_spec.build(prof, sglang=SGLang("0.5.16"))
    warnings = parse.deprecated_flags(parser, spec)
    assert warnings == [
        "warning: server.args.cuda-graph-max-bs: --cuda-graph-max-bs is deprecated in SGLang "
        "0.5.16; use --cuda-graph-max-bs-decode"
    ]


def test_each_node_of_a_multi_node_profile_has_its_own_rank_and_the_leaders_url():
    p = profiles.load("deepseek-v3-gh200")
    for rank in range(8):
        spec = server_spec.build(p, server_spec.Overrides(node_rank=rank), SGLang("0.5.23"))
        flags = spec.flag_values()
        assert (flags["--nnodes"], flags["--node-rank"]) == ("8", str(rank))
        assert flags["--dist-init-addr"] == "gh200-node0:50000"
        assert spec.node == rank and spec.serves_http == (rank == 0)
        # every node polls the leader: only rank 0 serves HTTP
        expected = "http://127.0.0.1:30000" if rank == 0 else "http://gh200-node0:30000"
        assert spec.url == expected
        # where SGLang is installed, its own parser takes every node's argv
        assert parse.parse_with_sglang(spec)


def test_multi_node_needs_the_leader_and_a_rank_in_range(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": "m"}, "server": {"nnodes": 2}}))
    with pytest.raises(
        ConfigError, match=r"server\.dist_init_addr: required where server\.nnodes is 2"
    ):
        server_spec.build(profiles.load(path), server_spec.Overrides(node_rank=0))
    spec = server_spec.build(
        profiles.load(path), server_spec.Overrides(dist_init_addr="10.0.0.1:5000")
    )
    with pytest.raises(ConfigError, match=r"^--node-rank: required where server\.nnodes is 2"):
        server_spec.require_node_rank(spec)
    with pytest.raises(ConfigError, match=r"^--node-rank: expected 0 to 1 .*got 2"):
        server_spec.build(profiles.load(path),
                          server_spec.Overrides(node_rank=2, dist_init_addr="h:1"))  # fmt: skip


def test_a_rank_on_a_single_node_profile_is_refused(prof):
    with pytest.raises(ConfigError, match=r"^--node-rank: 1 given, but server\.nnodes is 1"):
        server_spec.build(prof, server_spec.Overrides(node_rank=1))
    assert server_spec.build(prof).node is None
