"""The typed server spec: argv derived per SGLang version, overrides, deprecations named."""

from __future__ import annotations

import argparse

import pytest
import yaml

from sglkit import profile as profiles
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
    assert server_spec.build(prof, server_spec.Overrides(host="::")).url.startswith("http://[::1]:")


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
