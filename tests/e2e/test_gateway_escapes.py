"""The escape table, through the real gateway as a normal user: each crafted request is refused.

These are requests the docker CLI would never send but a user can: case-variant and duplicate
keys, encoded paths, spoofed owner labels and headers, binds of the gateway socket.
"""

from __future__ import annotations

import json

import pytest

from tests.stack.ds01 import IMAGE
from tests.stack.rawhttp import as_user, request

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ALICE, BOB = "e2e-alice", "e2e-bob"
BASE = {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"Privileged": False}}
CREATE = "/v1.41/containers/create"


def body(text: str) -> bytes:
    return text.encode()


# (row id, method, path, body, headers, status, message fragment)
ESCAPES = [
    (
        "case_variant_duplicate",
        "POST",
        CREATE,
        body(json.dumps(BASE)[:-1] + ', "hostconfig": {"Privileged": true}}'),
        None,
        400,
        "keys 'HostConfig' and 'hostconfig' name the same field",
    ),
    (
        "nested_case_variant",
        "POST",
        CREATE,
        body(f'{{"Image":"{IMAGE}","HostConfig":{{"Privileged":false,"privileged":true}}}}'),
        None,
        400,
        "keys 'Privileged' and 'privileged' name the same field",
    ),
    (
        "duplicate_key",
        "POST",
        CREATE,
        body(f'{{"Image":"{IMAGE}","HostConfig":{{"Privileged":false,"Privileged":true}}}}'),
        None,
        400,
        "duplicate key 'Privileged'",
    ),
    (
        "legacy_top_level_privileged",
        "POST",
        CREATE,
        body(f'{{"Image":"{IMAGE}","Privileged":true}}'),
        None,
        400,
        "unknown field 'Privileged'",
    ),
    (
        "encoded_path",
        "POST",
        "/v1.41/containers%2Fcreate",
        body(json.dumps(BASE)),
        None,
        400,
        "percent-encoded characters in the request path are not accepted",
    ),
    (
        "doubled_slash",
        "POST",
        "/v1.41//containers/create",
        body(json.dumps(BASE)),
        None,
        400,
        "not in canonical form",
    ),
    ("bind_gateway_socket", "POST", CREATE, None, None, 403, "would expose the Docker/DS01 socket"),
    ("no_body", "POST", CREATE, b"", None, 400, "arrived without its JSON body"),
    (
        "cl_and_te",
        "POST",
        "/v1.41/containers/prune",
        b"",
        {"Transfer-Encoding": "chunked"},
        400,
        "",
    ),
    (
        "plugin_install",
        "POST",
        "/v1.41/plugins/pull?remote=evil",
        b"[]",
        None,
        403,
        "is for admins only",
    ),
]


@pytest.mark.parametrize("row", ESCAPES, ids=[r[0] for r in ESCAPES])
def test_crafted_request_is_refused(clean, row):
    """Each crafted request is refused with its reason, and nothing reaches dockerd."""
    _, method, path, data, headers, status, fragment = row
    if data is None:  # the gateway's own socket, bind-mounted
        data = json.dumps(
            {**BASE, "HostConfig": {"Binds": [f"{clean.gateway_socket}:/var/run/docker.sock"]}}
        ).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    got_status, answer = as_user(
        ALICE, lambda: request(str(clean.gateway_socket), method, path, data, hdrs)
    )
    assert got_status == status, answer
    assert fragment in answer.get("message", ""), answer
    assert clean.docker("ps", "-aq", direct=True).stdout.strip() == ""


def test_spoofed_owner_label_is_replaced(clean):
    """A `ds01.user=e2e-bob` label set by alice is replaced by her own name."""
    data = json.dumps(
        {**BASE, "Labels": {"ds01.user": BOB, "ds01.uid": "0", "DS01.GROUP": "admins"}}
    ).encode()
    status, answer = as_user(
        ALICE, lambda: request(str(clean.gateway_socket), "POST", CREATE, data)
    )
    assert status == 201, answer
    labels = json.loads(clean.docker("inspect", answer["Id"], direct=True).stdout)[0]["Config"][
        "Labels"
    ]
    assert labels["ds01.user"] == ALICE and labels["ds01.uid"] != "0"
    assert "DS01.GROUP" not in labels and labels["ds01.group"] == "students"


def test_spoofed_identity_headers_change_nothing(clean):
    """X-Ds01-User / X-Ds01-Token from the client are stripped before anything reads them."""
    clean.docker("run", "-d", "--name", "bobs-box", IMAGE, "sleep", "300", user=BOB)
    headers = {"X-Ds01-User": BOB, "X-Ds01-Token": "made-up", "X-Forwarded-User": BOB}
    status, answer = as_user(
        ALICE,
        lambda: request(
            str(clean.gateway_socket), "POST", "/v1.41/containers/bobs-box/stop", b"", headers
        ),
    )
    assert status == 404 and answer["message"] == "No such container: bobs-box"


def test_malformed_requests_get_an_error_and_others_are_still_served(clean):
    """Garbage, oversized headers and a hang-up mid-body leave the gateway serving everyone."""
    sock = str(clean.gateway_socket)
    garbage = as_user(ALICE, lambda: request(sock, "", "", raw=b"NOT HTTP AT ALL\r\n\r\n"))
    assert garbage[0] == 400
    huge = as_user(
        ALICE,
        lambda: request(
            sock, "", "", raw=b"GET /_ping HTTP/1.1\r\nX: " + b"a" * 200_000 + b"\r\n\r\n"
        ),
    )
    assert huge[0] in (400, 431)  # refused before any of it reaches dockerd

    def hang_up() -> str:
        import socket as s

        with s.socket(s.AF_UNIX) as c:
            c.connect(sock)
            c.sendall(
                b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"Image":'
            )
        return "closed"

    assert as_user(ALICE, hang_up) == "closed"
    assert (
        clean.docker("run", "--rm", IMAGE, "echo", "still serving", user=BOB).stdout.strip()
        == "still serving"
    )


def test_create_without_content_type_still_works(clean):
    """A JSON body sent without Content-Type (dockerd accepts it) is labelled by the gateway,
    so the plugin sees and checks it."""
    data = json.dumps(BASE).encode()
    status, answer = as_user(
        ALICE, lambda: request(str(clean.gateway_socket), "POST", CREATE, data, {})
    )
    assert status == 201, answer
