"""Fuzzing the profile loader (issue 18): YAML documents, random bytes and mutations of the
shipped profiles. Every outcome is a valid profile or one ConfigError line (exit 2), each within
2 s and 200 MB, and no message repeats a stretch of the file.

What runs is what `invoke profile.check` runs: `profile.load` then `profile.check.check`, plus
the hash, server argv and environment every other task asks a loaded profile for. The seed and
the number of examples are fixed, so a run is repeatable and bounded (about 20 s here).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import tracemalloc
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from sglkit import paths
from sglkit import profile as profiles
from sglkit.errors import ConfigError
from sglkit.profile.check import check
from sglkit.profile.schema import SCHEMA, Section
from sglkit.server import spec as server_spec

# Hypothesis caches what it learns (source constants, unicode tables) in ./.hypothesis, from the
# moment pytest collects this module; keep that in a temporary folder of its own instead.
_HOME = tempfile.mkdtemp(prefix="sglkit-hypothesis-")
set_hypothesis_home_dir(_HOME)
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)

SHIPPED = sorted(paths.asset("profiles").glob("*.yaml"))
MAX_PEAK = 200 * 1024 * 1024
ECHO = 40  # no stretch of the file this long may appear in a message

FUZZ = settings(
    max_examples=400,
    deadline=timedelta(seconds=2),
    database=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def outcome(folder: Path, data: bytes) -> None:
    """Load `data` as a profile file the way profile.check does, and judge what came of it."""
    path = folder / "fuzzed.yaml"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        try:
            p = profiles.load(path)
            p.hash()
            server_spec.build(p).argv()
            p.environment()
            check(p)
            event("a valid profile")
        except ConfigError as e:
            msg = str(e)
            event(f"refused: {msg[len(str(path)) + 2 :].split(':')[0][:30]}")
            assert e.exit_code == 2
            assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
            assert msg.startswith(f"{path}: "), msg
            assert not echoes(data, msg[len(str(path)) :]), msg
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_PEAK, f"peak {peak / 2**20:.0f} MiB"


def echoes(data: bytes, msg: str) -> bool:
    text = data.decode("utf-8", "replace")
    return any(text[i : i + ECHO] in msg for i in range(len(text) - ECHO + 1))


# ---- strategies ---------------------------------------------------------------------------------
def _field_names(section: Section) -> list[str]:
    out = []
    for name, spec in section.fields.items():
        out.append(name)
        if isinstance(spec, Section):
            out += _field_names(spec)
    return out


KEYS = st.sampled_from(sorted(set(_field_names(SCHEMA)))) | st.text(max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["~", "5s", "127.0.0.1", "0.0.0.0", "gh200", "cpu", "HF_TOKEN", "-1"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)
DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=6) | VALUES

TOKENS = [
    b"&a ", b"*a", b"[", b"]", b"{", b"}", b": ", b"\n  ", b"- ", b"!!python/object:os.system ",
    b"!!binary ", b"!!set ", b"? ", b"---\n", b"'", b'"', b"\t", b"\x00", b"\xff", b"\xc3",
    b"%YAML 1.1\n", b"!!int ", b"!!float ", b"<<: *a\n", b"1e400", b"0x", b"2001-12-14",
]  # fmt: skip


@st.composite
def mutated_shipped(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SHIPPED)).read_bytes())
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["token", "byte", "delete", "duplicate"]))
        if kind == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == "byte":
            data[at:at] = bytes([draw(st.integers(0, 255))])
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        else:
            chunk = data[at : at + draw(st.integers(1, 200))]
            data[at:at] = chunk * draw(st.integers(1, 5))
    return bytes(data)


@st.composite
def token_soup(draw) -> bytes:
    parts = draw(st.lists(st.sampled_from(TOKENS) | st.binary(max_size=8), max_size=60))
    return b"".join(parts)


# ---- the fuzz tests -------------------------------------------------------------------------------
@seed(18)
@FUZZ
@given(doc=DOCUMENTS)
def test_yaml_documents(folder, doc):
    outcome(folder, yaml.safe_dump(doc, allow_unicode=True).encode("utf-8"))


@seed(1818)
@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(folder, data):
    outcome(folder, data)


@seed(181818)
@settings(FUZZ, max_examples=800)
@given(data=mutated_shipped())
def test_mutations_of_the_shipped_profiles(folder, data):
    outcome(folder, data)


@seed(18181818)
@FUZZ
@given(data=token_soup())
def test_yaml_token_soup(folder, data):
    outcome(folder, data)


def test_the_shipped_profiles_are_themselves_valid(folder):
    """The mutation seeds: each loads and checks as it is."""
    assert len(SHIPPED) >= 3
    for p in SHIPPED:
        check(profiles.load(p))
