"""The TLS config fields: what is accepted, the one-line errors, to_document round trips, certificate files in
the digest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.config import load_config, parse_document
from proxy.errors import ConfigError
from proxy.snapshot import digest_of, first_snapshot, next_snapshot
from tests.tls.pki import Authority

ACME = {"Directory": "https://127.0.0.1:14000/dir", "Email": "ops@example.test", "CaFile": "/etc/ca.pem"}


def tls_app(name: str = "a", **fields: Any) -> dict[str, Any]:
    return {"Name": name, "Hostnames": [f"{name}.example.test"], "Targets": ["127.0.0.1:9000"], **fields}


def document(*apps: dict[str, Any], **tls: Any) -> dict[str, Any]:
    return {"Tls": {"Ports": [8443], **tls}, "Apps": list(apps)}


def test_every_field_survives_to_document() -> None:
    doc = document(
        tls_app("a", Certificate="/c/a.crt", Key="/c/a.key", TlsHandshakeTimeout=2.5),
        tls_app("b", TlsMode="passthrough", Ports=[9443]),
        tls_app("c", TlsMode="terminate"),
        {"Name": "plain", "Ports": [80], "Targets": ["127.0.0.1:1"]},
        Acme=ACME, StateDir="/var/lib/skiff")
    config = parse_document(doc)
    assert parse_document(orjson.loads(orjson.dumps(config.to_document()))) == config
    assert config.ports == frozenset({8443, 9443, 80}) and config.tls_ports == frozenset({8443})
    a = config.apps[0]
    assert a.terminates and a.handshake_timeout == 2.5 and not config.apps[1].terminates
    assert config.apps[2].handshake_timeout == 10.0


BAD = [
    (document(tls_app("a", Hostnames=["*.a.example.test"]), Acme=ACME, StateDir="/s"),
     "Apps[0].Hostnames[0]: \"*.a.example.test\": a wildcard needs Certificate and Key"),
    (document(tls_app("a", Certificate="/x", Key="/y"), tls_app("b", Hostnames=["A.example.test"],
                                                              Certificate="/x", Key="/y")),
     'Apps[1].Hostnames[0]: "a.example.test" already belongs to Apps[0]'),
    ({"Apps": [tls_app("a", Certificate="/x", Key="/y")]}, "Apps[0].Hostnames: needs the top-level Tls.Ports"),
    (document(tls_app("a", Certificate="/x", Key="/y"), {"Name": "p", "Ports": [8443], "Targets": ["h:1"]}),
     "Tls.Ports[0]: port 8443 is already used by Apps[1]"),
    (document(tls_app("a", TlsMode="passthrough", Certificate="/x", Key="/y")),
     "Apps[0].Certificate: not for a passthrough app"),
    (document(tls_app("a", Certificate="/x")), "Apps[0].Key: missing (Certificate and Key go together)"),
    (document(tls_app("a")), "Apps[0].Certificate: missing (a terminated app needs Certificate and Key, or "
                             "Tls.Acme"),
    (document(tls_app("a", TlsMode="mirror")), 'Apps[0].TlsMode: "mirror" is not "terminate" or "passthrough"'),
    (document(tls_app("a", Hostnames=["a..test"])), "Apps[0].Hostnames[0]: \"a..test\" is not a hostname"),
    (document(tls_app("a", Hostnames=["a.*.test"])), "Apps[0].Hostnames[0]: \"a.*.test\" is not a hostname"),
    ({"Apps": [{"Name": "p", "Ports": [1], "Targets": ["h:1"], "TlsMode": "terminate"}]},
     "Apps[0].TlsMode: only for an app with Hostnames"),
    (document(tls_app("a", Certificate="/x", Key="/y"), Acme=ACME), "Tls.StateDir: missing"),
    (document(tls_app("a", Certificate="/x", Key="/y"), Acme={"Directory": "ftp://x"}, StateDir="/s"),
     'Tls.Acme.Directory: "ftp://x" is not an http(s) URL'),
    ({"Tls": {"Ports": [0]}, "Apps": []}, "Tls.Ports[0]: 0 is not a port"),
    ({"Tls": {"Port": [1]}, "Apps": []}, "Tls.Port: unknown field"),
]


@pytest.mark.parametrize(("doc", "expected"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_tls_config_gets_one_line(doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_document(doc)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_certificate_files_are_checked_and_hashed_into_the_digest(tmp_path: Path) -> None:
    """A missing file or a key of another certificate is a one-line error naming the field; a replaced file
    changes the digest (a new snapshot) although the config text is the same."""
    ca = Authority(tmp_path)
    one, two = ca.issue("one", ["a.example.test"]), ca.issue("two", ["a.example.test"])
    cert, key = tmp_path / "a.crt", tmp_path / "a.key"
    config_path = tmp_path / "config.json"
    config_path.write_bytes(orjson.dumps(document(tls_app("a", Certificate=str(cert), Key=str(key)))))
    with pytest.raises(ConfigError, match=r"^Apps\[0\]\.Certificate: cannot read .*a\.crt"):
        load_config(config_path)
    write(cert, one.cert.read_bytes())
    write(key, two.key.read_bytes())
    with pytest.raises(ConfigError, match=r"^Apps\[0\]\.Key: does not match the Certificate's public key$"):
        load_config(config_path)
    write(key, one.key.read_bytes())
    config = load_config(config_path)
    first = first_snapshot(config)
    assert first.certs["a"].cert == one.cert.read_text()
    assert next_snapshot(first, config) is None
    write(cert, two.cert.read_bytes())
    write(key, two.key.read_bytes())
    second = next_snapshot(first, load_config(config_path))
    assert second is not None and second.digest != first.digest and second.digest == digest_of(config)
    assert second.certs["a"].cert == two.cert.read_text()
