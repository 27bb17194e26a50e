"""Differential property tests: the C parser and the pure-Python parser agree on any text."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamsock as ss
from conftest import BACKENDS

pytestmark = pytest.mark.skipif("native" not in BACKENDS, reason="the native backend is not built")

native = ss.get_backend("native") if "native" in BACKENDS else None
pure = ss.get_backend("pure")

# Any code point, surrogates and NUL included.
any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
# Characters that steer the parser, weighted in.
syntax_char = st.sampled_from(list(":[]%/.@?#\\ \t\x00\x7f09afAF+-_~") + ["://", "::", "ü", "\udc80", "例"])

known_scheme = st.sampled_from([t.value for t in ss.Transport]).flatmap(
    lambda name: st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(name, upper))
    )
)
# What comes before the host: nothing, a known scheme, or scheme-like noise.
prefix = st.one_of(
    st.just(""),
    known_scheme.map(lambda s: s + "://"),
    st.tuples(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789+.-", max_size=9),
        st.sampled_from(["://", ":/", ":", ""]),
    ).map("".join),
)
host = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9.\-]{0,30}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.tuples(st.ip_addresses(v=6), st.text(alphabet="abcz09._~-%: ", max_size=6)).map(lambda t: f"[{t[0]}%{t[1]}]"),
    st.text(any_char, max_size=12),
    st.lists(syntax_char, max_size=12).map("".join),
    st.integers(250, 300).map(lambda n: "h" * n),
)
port = st.one_of(
    st.integers(0, 70000).map(str),
    st.integers(0, 10**30).map(str),
    st.text(alphabet="0123456789 +-x/:٣８", max_size=8),
    st.just(""),
)
structured = st.builds(
    lambda pre, h, colon, p: f"{pre}{h}{colon}{p}",
    prefix,
    host,
    st.sampled_from([":", ":", "", "::"]),
    port,
)
unix_like = st.builds(
    lambda s, p: f"{s}://{p}",
    st.sampled_from(["unix", "udg", "UNIX", "Udg"]),
    st.one_of(st.text(any_char, max_size=120), st.integers(100, 115).map(lambda n: "\x00" + "p" * n)),
)
address_text = st.one_of(st.text(any_char, max_size=64), structured, unix_like)


def outcome(backend, text):
    try:
        a = backend.parse(text)
    except ss.AddressError as exc:
        return ("error", type(exc), exc.code, exc.offset, exc.length, str(exc))
    return ("ok", tuple(a), str(a), a.secure)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(address_text)
def test_native_equals_pure(text):
    assert outcome(native, text) == outcome(pure, text)


@settings(max_examples=200, deadline=None)
@given(st.text(any_char, min_size=1000, max_size=20000) | st.integers(1, 20000).map(lambda n: "tcp://" + "a" * n + ":1"))
def test_native_equals_pure_on_long_input(text):
    assert outcome(native, text) == outcome(pure, text)


@settings(max_examples=1000, deadline=None)
@given(address_text)
def test_canonical_form_round_trips(text):
    for backend in (native, pure):
        try:
            a = backend.parse(text)
        except ss.AddressError:
            continue
        assert backend.parse(str(a)) == a
        assert ss.Address(*a) == a


@settings(max_examples=300, deadline=None)
@given(st.lists(address_text, max_size=40))
def test_batch_equals_one_by_one(texts):
    def norm(item):
        if isinstance(item, ss.AddressError):
            return (item.code, item.offset, item.length, str(item))
        return item

    expected = [outcome(pure, t) for t in texts]
    assert [outcome(native, t) for t in texts] == expected
    assert [norm(x) for x in native.parse_many(texts, errors="return")] == [
        norm(x) for x in pure.parse_many(texts, errors="return")
    ]
    batch = native.parse_batch(texts)
    assert batch.failed == sum(1 for e in expected if e[0] == "error")
