"""Hostile profiles (issue 18): every one ends in one line and exit 2, fast and small.

Each case runs the real `invoke profile.check` as a child process and reads its peak resident
memory from the kernel (`wait4`'s rusage), so a profile that makes the kit allocate gigabytes
fails here even when it ends in an error line.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sglkit import profile as profiles
from sglkit import yamlsafe
from sglkit.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
LIMIT_S = 20.0  # wall-clock budget of one CLI call on a shared 2-core machine (it takes ~1 s)
LIMIT_RSS_MB = 200  # the bound; a plain profile.check peaks near 60 MB
AS_CAP = 3 * 1024**3  # address-space cap of the child, so a regression cannot eat the machine


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_CAP, AS_CAP))


def run_check(path: Path, timeout: float = LIMIT_S) -> tuple[int, str, str, float, float]:
    """(exit code, stdout, stderr, seconds, peak RSS in MB) of `invoke profile.check -p path`."""
    out, err = path.parent / "check.out", path.parent / "check.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", "profile.check", "--profile", str(path)],
            cwd=REPO,
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
            preexec_fn=_cap_memory,
        )
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                pytest.fail(f"profile.check ran past {timeout:g}s on {path.name}")
            time.sleep(0.02)
        seconds = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_mb = usage.ru_maxrss / 1024  # KiB on Linux
    return proc.returncode, out.read_text(), err.read_text(errors="replace"), seconds, rss_mb


def assert_one_line_exit_2(path: Path) -> str:
    code, _, err, seconds, rss = run_check(path)
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}; stderr tail: {err[-600:]}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {err[:600]}"
    assert lines[0].startswith(f"error: {path}:"), lines[0]
    assert rss < LIMIT_RSS_MB, f"peak RSS {rss:.0f} MB"
    assert seconds < 10, f"{seconds:.1f}s"
    return lines[0]


def alias_bomb(width: int = 9, depth: int = 9) -> str:
    """The issue's 414-byte document: anchors `depth` deep, each using the previous `width` times."""
    lines = ['- &a0 ["lol"' + ',"lol"' * (width - 1) + "]"]
    for i in range(1, depth):
        lines.append(f"- &a{i} [{','.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines)


# ---- 1. the alias bomb ---------------------------------------------------------------------------
def test_alias_bomb_is_one_line_fast_and_small(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(alias_bomb() + "\n")
    assert len(path.read_bytes()) == 414
    line = assert_one_line_exit_2(path)
    assert "alias" in line


def test_alias_bomb_under_a_valid_field_is_refused_too(tmp_path):
    bomb = alias_bomb().replace("\n", "\n  ")
    path = tmp_path / "p.yaml"
    path.write_text(f"model:\n  path: org/m\nserver:\n  port:\n  {bomb}\n")
    line = assert_one_line_exit_2(path)
    assert "lol" not in line


def test_type_errors_never_format_the_value_of_a_collection():
    """Even where aliases are allowed, a message names the kind, not the (shared) value."""
    from sglkit.profile.schema import Invalid, validate

    node: list = ["lol"] * 9
    for _ in range(8):
        node = [node] * 9  # 9^9 leaves if it were walked
    t0 = time.monotonic()
    with pytest.raises(Invalid) as e:
        validate({"model": {"path": "m"}, "server": {"port": node}})
    assert time.monotonic() - t0 < 1
    assert str(e.value) == "server.port: expected a port number 1-65535, got a list"


# ---- 3. tracebacks -------------------------------------------------------------------------------
def test_binary_profile_names_the_byte_offset(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"model:\n  path: m\n" + bytes(range(128, 256)))
    line = assert_one_line_exit_2(path)
    assert "not UTF-8" in line and "offset 17" in line


def test_deeply_nested_profile_names_the_depth_limit(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 100_000)
    line = assert_one_line_exit_2(path)
    assert f"limit of {yamlsafe.MAX_DEPTH} levels" in line


def test_nesting_past_the_limit_but_under_libyaml_s_is_ours_to_refuse(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("model:\n  path: m\nserver:\n  args:\n    x: " + "[" * 40 + "]" * 40 + "\n")
    with pytest.raises(ConfigError, match=r"nested deeper than the limit of 32 levels"):
        profiles.load(path)


# ---- 7. messages never echo the file ---------------------------------------------------------------
def test_scalar_profile_does_not_echo_the_file(tmp_path):
    path = tmp_path / "scalar.yaml"
    path.write_text("hf_token_in_file_ABC123 more text line\n")
    line = assert_one_line_exit_2(path)
    assert "ABC123" not in line and "more text" not in line
    assert line == f"error: {path}: profile: expected a mapping, got a string"


@pytest.mark.parametrize(
    ("server", "shown", "hidden"),
    [
        ({"tp": "eight"}, "'eight' (a string)", None),  # short scalar: shown, it helps
        ({"tp": "x" * 40}, "got a string", "xxxx"),  # long: kind only
        ({"tp": "two\nlines"}, "got a string", "lines"),  # not printable on one line
        ({"args": {"api-key": [["sk-1234"]]}}, "api-key: expected a scalar", "sk-1234"),
        ({"args": {"api-key": {"k": "sk-1234"}}}, "got a mapping", "sk-1234"),
        ({"tp": [1, 2]}, "got a list", "[1, 2]"),
    ],
)  # fmt: skip
def test_values_are_shown_only_when_short_scalar_and_not_secret(tmp_path, server, shown, hidden):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": "m"}, "server": server}))
    with pytest.raises(ConfigError) as e:
        profiles.load(path)
    msg = str(e.value)
    assert shown in msg and "\n" not in msg
    if hidden:
        assert hidden not in msg


def test_a_short_value_under_a_secret_like_key_is_not_shown(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("model: {path: m}\nserver:\n  args:\n    api-key: {a: 1}\n")
    with pytest.raises(ConfigError, match="api-key: expected a scalar, true, or a list, got a map"):
        profiles.load(path)
    from sglkit.profile.schema import _type_name

    assert _type_name("hf_abc", key="api-key") == "a string"
    assert _type_name("hf_abc", key="DB_PASSWORD") == "a string"
    assert _type_name(8, key="tp") == "8 (an integer)"


# ---- 8. size and speed ---------------------------------------------------------------------------
def test_a_50_mb_profile_is_refused_at_once_naming_the_limit(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "w") as f:
        f.write("model:\n  path: m\ndescription: >\n")
        line = "  " + "lorem ipsum " * 8 + "\n"
        f.write(line * (50 * 1024 * 1024 // len(line)))
    code, _, err, seconds, _ = run_check(path)
    assert code == 2, err[-600:]
    assert err.strip() == f"error: {path}: profile is larger than the 1 MiB limit"
    assert seconds < 10


def test_the_c_loader_is_used_where_pyyaml_has_it():
    if not yaml.__with_libyaml__:
        pytest.skip("this PyYAML was built without libyaml")
    assert yamlsafe.LOADER is yaml.CSafeLoader


def test_a_profile_just_under_the_limit_loads_in_time(tmp_path):
    path = tmp_path / "near.yaml"
    body = "".join(f"    flag-{i}: value-{i}\n" for i in range(30_000))
    path.write_text("model:\n  path: m\nserver:\n  args:\n" + body)
    assert path.stat().st_size < profiles.PROFILE_MAX_BYTES
    t0 = time.monotonic()
    p = profiles.load(path)
    assert len(p.server["args"]) == 30_000
    assert time.monotonic() - t0 < 5


def test_every_yaml_the_kit_reads_goes_through_yamlsafe():
    """One loader: no module of the kit calls PyYAML's loaders itself."""
    offenders = []
    for f in (REPO / "sglkit").rglob("*.py"):
        if f.name == "yamlsafe.py":
            continue
        text = f.read_text()
        for call in ("yaml.safe_load", "yaml.load(", "yaml.full_load", "yaml.unsafe_load"):
            if call in text:
                offenders.append(f"{f.relative_to(REPO)}: {call}")
    assert offenders == []


def test_an_unknown_cache_kind_with_a_long_name_is_not_echoed(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("model: {path: m}\ncache:\n  dirs:\n    " + "k" * 60 + ": x\n")
    with pytest.raises(ConfigError) as e:
        profiles.load(path).cache_dirs()
    assert "cache.dirs.<a string key>: unknown cache kind" in str(e.value)
    assert "k" * 40 not in str(e.value)
