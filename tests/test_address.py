"""Address parsing: the vectors in tests/data/addresses.json, the Address type, join, batches."""

from __future__ import annotations

import pickle

import pytest

import streamsock as ss
from streamsock.address import Transport


def _vector_id(vector: dict) -> str:
    text = vector["input"] if "input" in vector else f'{vector["host"]}|{vector["port"]}'
    return ascii(text if len(text) <= 40 else text[:37] + "...")


def _vectors(kind: str) -> list[dict]:
    import json

    from conftest import DATA

    return json.loads((DATA / "addresses.json").read_text())[kind]


VECTORS = _vectors("vectors")
JOIN_VECTORS = _vectors("join")


def test_vector_count_covers_every_error_code():
    assert len(VECTORS) >= 150
    raised_by_parser = {v["error"] for v in VECTORS if "error" in v}
    codes = {name for name, _ in ss.errors.ERROR_CODES.values() if name.startswith("SS_ERR_ADDR_")}
    not_from_parse = {"SS_ERR_ADDR_TOO_LONG", "SS_ERR_ADDR_PORT_MISSING"}
    not_from_parse |= {"SS_ERR_ADDR_PORT_TWICE", "SS_ERR_ADDR_PORT_UNEXPECTED"}
    assert codes - not_from_parse == raised_by_parser
    assert {t.value for t in Transport} <= {v["transport"] for v in VECTORS if "transport" in v}


def _check_error(exc: ss.AddressError, vector: dict) -> None:
    text = vector.get("input", "")
    assert exc.code == vector["error"], str(exc)
    assert (exc.offset, exc.length) == (vector["offset"], vector["length"]), str(exc)
    assert exc.errno == 0
    assert exc.errstr == str(exc)
    if "input" in vector:
        assert exc.address == text
    offending = exc.address[exc.offset : exc.offset + exc.length]
    assert ss.errors.quote(offending) in str(exc)


@pytest.mark.parametrize("vector", VECTORS, ids=_vector_id)
def test_vector(backend, vector):
    text = vector["input"]
    if "error" in vector:
        exception = getattr(ss, vector["exception"])
        with pytest.raises(exception) as info:
            backend.parse(text)
        assert type(info.value) is exception
        _check_error(info.value, vector)
        return
    address = backend.parse(text)
    assert address.transport == vector["transport"]
    assert type(address.transport) is Transport
    assert (address.host, address.port, address.path) == (vector["host"], vector["port"], vector["path"])
    assert str(address) == vector["canonical"]
    assert backend.parse(str(address)) == address
    assert address.secure is Transport(vector["transport"]).secure


@pytest.mark.parametrize("vector", JOIN_VECTORS, ids=_vector_id)
def test_join_vector(backend, vector):
    if "error" in vector:
        with pytest.raises(ss.AddressError) as info:
            backend.join(vector["host"], vector["port"])
        _check_error(info.value, vector)
    else:
        assert str(backend.join(vector["host"], vector["port"])) == vector["canonical"]


def test_join_rejects_a_port_that_is_not_an_int(backend):
    for port in (True, 80.0, "80"):
        with pytest.raises(ss.AddressError, match="port out of range"):
            backend.join("example.com", port)


def test_errors_name_the_offending_text(backend):
    with pytest.raises(ss.AddressError) as info:
        backend.parse("tcp://example.com:99999")
    assert str(info.value) == (
        'Failed to parse address "tcp://example.com:99999": port out of range 0-65535 ("99999" at offset 18)'
    )
    with pytest.raises(ss.AddressError, match=r'^Failed to parse IPv6 address "tcp://\[fe80::1:80": missing'):
        backend.parse("tcp://[fe80::1:80")


def test_unknown_transport_lists_what_is_available(backend):
    with pytest.raises(ss.UnsupportedTransportError) as info:
        backend.parse("http://example.com")
    message = str(info.value)
    assert message.startswith('Unable to find the socket transport "http"; available: tcp, udp, ssl, tls')
    for name in backend.available_transports():
        assert name in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, OSError)


def test_control_characters_are_escaped_in_messages(backend):
    with pytest.raises(ss.AddressError) as info:
        backend.parse("exa\x00mple\n:80")
    assert "\x00" not in str(info.value) and "\\x00" in str(info.value)


def test_long_input_is_cut_in_messages(backend):
    with pytest.raises(ss.AddressError) as info:
        backend.parse("h" * 10_000 + " ")
    assert len(str(info.value)) < 400
    assert info.value.offset == 10_000


def test_parse_refuses_non_str(backend):
    for value in (b"tcp://h:1", None, 80):
        with pytest.raises(TypeError):
            backend.parse(value)


# --- Address -------------------------------------------------------------------


def test_address_is_immutable_hashable_and_picklable(backend):
    a = backend.parse("tls://[::1]:443")
    with pytest.raises(AttributeError):
        a.port = 1
    with pytest.raises(AttributeError):
        a.anything = 1
    assert {a: 1}[backend.parse("TLS://[::1]:443")] == 1
    assert pickle.loads(pickle.dumps(a)) == a
    assert tuple(a) == (Transport.TLS, "::1", 443, None)
    assert repr(a) == "Address(transport='tls', host='::1', port=443)"
    assert repr(backend.parse("unix:///s")) == "Address(transport='unix', path='/s')"


def test_address_constructor_validates():
    assert ss.Address("tcp", "fe80::1", 80) == ss.parse("tcp://[fe80::1]:80")
    assert ss.Address(Transport.UNIX, path="\0abs").abstract
    with pytest.raises(ss.UnsupportedTransportError):
        ss.Address("http", "h", 80)
    with pytest.raises(ss.AddressError, match="port out of range"):
        ss.Address("tcp", "h", 70000)
    with pytest.raises(ss.AddressError, match="not a valid IPv6"):
        ss.Address("tcp", "a:b", 80)
    with pytest.raises(ss.AddressError, match="reads back"):
        ss.Address("tcp", "h", 80, path="/x")
    with pytest.raises(ss.AddressError, match="invalid character"):
        ss.Address("tcp", "h/x", 80)


def test_with_port(backend):
    a = backend.parse("udp://[::1]")
    assert str(a.with_port(53)) == "udp://[::1]:53"
    assert a.with_port(53).with_port(None) == a


def test_transport_properties():
    assert [t.value for t in Transport if t.secure] == [
        "ssl", "tls", "sslv2", "sslv3", "tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3",
    ]
    assert [t.value for t in Transport if t.local] == ["unix", "udg"]
    assert [t.value for t in Transport if t.datagram] == ["udp", "udg"]


# --- many at once ----------------------------------------------------------------


def test_parse_many_matches_parse(backend):
    texts = [v["input"] for v in VECTORS]
    one_by_one = []
    for text in texts:
        try:
            one_by_one.append(backend.parse(text))
        except ss.AddressError as exc:
            one_by_one.append((type(exc), exc.code, exc.offset, exc.length, str(exc)))
    many = backend.parse_many(texts, errors="return")
    assert [
        m if isinstance(m, ss.Address) else (type(m), m.code, m.offset, m.length, str(m)) for m in many
    ] == one_by_one


def test_parse_many_raises_the_first_error_with_its_index(backend):
    with pytest.raises(ss.AddressError) as info:
        backend.parse_many(["a:1", "b:2", "c:x", "d:y"])
    assert info.value.index == 2
    assert info.value.address == "c:x"


def test_parse_many_takes_any_iterable_and_empty(backend):
    assert backend.parse_many(iter(["a:1", "[::1]:2"])) == [backend.parse("a:1"), backend.parse("[::1]:2")]
    assert backend.parse_many([]) == []
    assert len(backend.parse_batch([])) == 0
    with pytest.raises(ValueError, match="errors must be"):
        backend.parse_many(["a"], errors="ignore")
    with pytest.raises(TypeError):
        backend.parse_many(["a:1", b"b:2"])


def test_parse_batch_is_a_sequence_of_addresses_and_errors(backend):
    batch = backend.parse_batch(["a:1", "bad:port", "unix:///s", "ü:1", "ü ü:1"])
    assert len(batch) == 5 and batch.failed == 2
    assert batch[0] == backend.parse("a:1")
    assert isinstance(batch[1], ss.AddressError) and batch[1].code == "SS_ERR_ADDR_PORT_SYNTAX"
    assert batch[-3].path == "/s"
    assert batch[3].host == "ü"
    assert batch[4].offset == 1
    assert [i for i, _ in batch.errors()] == [1, 4]
    assert batch[1:3][1] == backend.parse("unix:///s")
    with pytest.raises(IndexError):
        batch[5]


def test_large_batch_spans_several_c_calls(backend):
    texts = [f"h{i}:{i % 65536}" for i in range(150_000)]
    texts[131_072] = "h:bad"
    batch = backend.parse_batch(texts)
    assert batch.failed == 1
    assert [i for i, _ in batch.errors()] == [131_072]
    assert batch[140_000] == backend.parse(texts[140_000])
    addresses = batch.addresses("return")
    assert addresses[-1].port == 149_999 % 65536
    with pytest.raises(ss.AddressError) as info:
        batch.addresses()
    assert info.value.index == 131_072
