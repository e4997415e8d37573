"""The ClientHello reader on real hellos: whole, cut at every byte, spread over many records; and on garbage."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.clienthello import MAX_HELLO, MAX_PEEK, NOT_TLS, read_hello, wildcard_of
from tests.tls.hellos import make_hello, reframe

HELLO = make_hello("App.Example.TEST.", ["h2", "http/1.1"])


def test_whole_hello_gives_name_and_alpn() -> None:
    hello = read_hello(HELLO)
    assert hello.done and hello.server_name == "app.example.test" and hello.alpn == (b"h2", b"http/1.1")


def test_no_sni_is_done_without_a_name() -> None:
    hello = read_hello(make_hello(None))
    assert hello.done and hello.server_name is None


def test_every_prefix_asks_for_more_and_never_less_than_it_has() -> None:
    """Cut at every byte: each prefix says "more", naming a total beyond what it holds and within the hello."""
    for cut in range(len(HELLO)):
        hello = read_hello(HELLO[:cut])
        assert not hello.done and hello.error is None, cut
        assert cut < hello.wanted <= len(HELLO), (cut, hello.wanted)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 700), min_size=1, max_size=8), extra=st.binary(max_size=40))
def test_any_record_split_reads_the_same(sizes: list[int], extra: bytes) -> None:
    """The same hello in records of any sizes, followed by anything: the same answer once complete, "more"
    (with a reachable total) before, at every cut."""
    wire = reframe(HELLO, sizes)
    whole = read_hello(wire + extra)
    assert whole.done and whole.server_name == "app.example.test" and whole.alpn == (b"h2", b"http/1.1")
    cut = 0
    while True:
        hello = read_hello(wire[:cut])
        if hello.done:
            break
        assert hello.error is None and cut < hello.wanted <= len(wire)
        cut = hello.wanted  # what SO_RCVLOWAT waits for: the reader makes progress at each step
    assert hello == whole


@given(st.binary(min_size=1, max_size=64))
def test_garbage_is_refused_or_waits_never_raises(data: bytes) -> None:
    hello = read_hello(data)
    if data[0] != 0x16:
        assert hello.error == NOT_TLS
    assert hello.done or hello.error is not None or hello.wanted > len(data)


def test_http_is_not_tls() -> None:
    assert read_hello(b"GET / HTTP/1.1\r\n").error == NOT_TLS


def test_huge_hello_is_refused_from_its_header() -> None:
    header = b"\x16\x03\x01\x40\x00" + b"\x01" + (MAX_HELLO + 1).to_bytes(3, "big")
    assert read_hello(header).error == "protocol"


def test_tiny_records_cannot_make_the_peek_unbounded() -> None:
    wire = reframe(HELLO, [1])
    hello = read_hello(wire[:MAX_PEEK])
    assert len(wire) <= MAX_PEEK or hello.error == "protocol"


def test_wildcard_covers_one_label() -> None:
    assert wildcard_of("a.b.example.test") == "*.b.example.test"
    assert wildcard_of("localhost") is None
