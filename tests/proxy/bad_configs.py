"""Malformed config documents and the one line each must produce: shared by the unit and reload tests."""

from __future__ import annotations

GOOD_APP = '{"Name": "a", "Ports": [5001], "Targets": ["127.0.0.1:6001"]}'


def apps(*bodies: str) -> bytes:
    return ('{"Apps": [' + ", ".join(bodies) + "]}").encode()


def one(body: str) -> bytes:
    return apps(body)


# (config bytes, expected error text)
BAD_CONFIGS: list[tuple[bytes, str]] = [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b'{"Apps": []} trailing', "not valid JSON: unexpected content after document"),
    (b"[]", "the document must be an object with an Apps list, not a list"),
    (b'"Apps"', "the document must be an object with an Apps list, not a string"),
    (b"{}", "Apps: missing"),
    (b'{"Apps": {}}', "Apps: must be a list of apps, not an object"),
    (b'{"Apps": null}', "Apps: must be a list of apps, not null"),
    (b'{"Apps": [], "Extra": 1}', 'Extra: unknown field (the document has only "Apps" and "Tls")'),
    (apps('"app"'), "Apps[0]: must be an object, not a string"),
    (apps(GOOD_APP, "[]"), "Apps[1]: must be an object, not a list"),
    (one('{"Ports": [1], "Targets": ["a:1"]}'), "Apps[0].Name: missing"),
    (one('{"Name": "a", "Targets": ["a:1"]}'), "Apps[0].Ports: missing"),
    (one('{"Name": "a", "Ports": [1]}'), "Apps[0].Targets: missing"),
    (one('{"Name": "", "Ports": [1], "Targets": ["a:1"]}'), "Apps[0].Name: must not be empty"),
    (one('{"Name": 7, "Ports": [1], "Targets": ["a:1"]}'), "Apps[0].Name: must be a string, not a number"),
    (one('{"Name": "a", "Ports": [], "Targets": ["a:1"]}'), "Apps[0].Ports: must list at least one port"),
    (one('{"Name": "a", "Ports": 5001, "Targets": ["a:1"]}'), "Apps[0].Ports: must be a list of ports, not a number"),
    (one('{"Name": "a", "Ports": [true], "Targets": ["a:1"]}'), "Apps[0].Ports[0]: true is not a port"),
    (one('{"Name": "a", "Ports": [5001.0], "Targets": ["a:1"]}'), "Apps[0].Ports[0]: 5001.0 is not a port"),
    (one('{"Name": "a", "Ports": ["5001"], "Targets": ["a:1"]}'), 'Apps[0].Ports[0]: "5001" is not a port'),
    (one('{"Name": "a", "Ports": [0], "Targets": ["a:1"]}'), "Apps[0].Ports[0]: 0 is outside 1-65535"),
    (one('{"Name": "a", "Ports": [65536], "Targets": ["a:1"]}'), "Apps[0].Ports[0]: 65536 is outside 1-65535"),
    (one('{"Name": "a", "Ports": [-1], "Targets": ["a:1"]}'), "Apps[0].Ports[0]: -1 is outside 1-65535"),
    (one('{"Name": "a", "Ports": [5001, 5001], "Targets": ["a:1"]}'),
     "Apps[0].Ports[1]: port 5001 is already used earlier in this app"),
    (apps(GOOD_APP, '{"Name": "b", "Ports": [5001], "Targets": ["a:1"]}'),
     "Apps[1].Ports[0]: port 5001 is already used by Apps[0]"),
    (apps(GOOD_APP, '{"Name": "a", "Ports": [5002], "Targets": ["a:1"]}'),
     'Apps[1].Name: "a" is already the name of Apps[0]'),
    (one('{"Name": "a", "Ports": [1], "Targets": []}'), "Apps[0].Targets: must list at least one target"),
    (one('{"Name": "a", "Ports": [1], "Targets": "a:1"}'),
     "Apps[0].Targets: must be a list of host:port targets, not a string"),
    (apps(GOOD_APP, '{"Name": "b", "Ports": [2], "Targets": ["nocolon"]}'),
     'Apps[1].Targets[0]: "nocolon" is not host:port'),
    (one('{"Name": "a", "Ports": [1], "Targets": [":80"]}'), 'Apps[0].Targets[0]: ":80" is not host:port'),
    (one('{"Name": "a", "Ports": [1], "Targets": ["host:"]}'), 'Apps[0].Targets[0]: "host:": "" is not a port'),
    (one('{"Name": "a", "Ports": [1], "Targets": ["host:http"]}'),
     'Apps[0].Targets[0]: "host:http": "http" is not a port'),
    (one('{"Name": "a", "Ports": [1], "Targets": ["host:0"]}'),
     'Apps[0].Targets[0]: "host:0": port 0 is outside 1-65535'),
    (one('{"Name": "a", "Ports": [1], "Targets": ["host:70000"]}'),
     'Apps[0].Targets[0]: "host:70000": port 70000 is outside 1-65535'),
    (one('{"Name": "a", "Ports": [1], "Targets": ["::1:80"]}'),
     'Apps[0].Targets[0]: "::1:80": write an IPv6 target as [address]:port'),
    (one('{"Name": "a", "Ports": [1], "Targets": ["[zz::1]:80"]}'),
     'Apps[0].Targets[0]: "[zz::1]:80": "zz::1" is not an IPv6 address'),
    (one('{"Name": "a", "Ports": [1], "Targets": ["bad host:80"]}'),
     'Apps[0].Targets[0]: "bad host:80": "bad host" is not a hostname or IPv4 address'),
    (one('{"Name": "a", "Ports": [1], "Targets": [8080]}'), "Apps[0].Targets[0]: 8080 is not host:port"),
    (one('{"Name": "a", "Ports": [1], "Targets": ["a:1", "a:1"]}'), 'Apps[0].Targets[1]: "a:1" is listed twice'),
    (one('{"Name": "a", "Ports": [1], "Targets": ["a:1"], "Prots": [2]}'), "Apps[0].Prots: unknown field"),
    (one('{"Name": "a", "Ports": [1], "Targets": ["a:1"], "ConnectTimeout": 0}'),
     "Apps[0].ConnectTimeout: 0 is outside 0.001-300 seconds"),
    (one('{"Name": "a", "Ports": [1], "Targets": ["a:1"], "IdleTimeout": "1h"}'),
     'Apps[0].IdleTimeout: "1h" is not a number of seconds'),
]
