"""Differential tests: the same raw bytes sent to dockerd directly and through DS01's gateway.

The reference is dockerd itself (h11's test_against_stdlib_http style): each crafted request is
sent once as root to a reference dockerd (the same docker.io build, started without DS01's AuthZ
plugin, which would refuse some of these bytes from root too and hide how dockerd reads them) and
once through the gateway as a real non-admin user, and what dockerd understood is read back
from what it produced (the container's name, the build's tags, labels and network namespace,
what a prune removed). DS01 must either
refuse, saying why, or have dockerd execute exactly what DS01 decided, which for the cases that
pass is what dockerd reads from the same bytes sent directly.

Cases: form bodies (dockerd merges ``application/x-www-form-urlencoded`` bodies into the query,
body first, whatever the content type's casing or parameters), ``;`` and malformed ``%`` escapes
(Go's ``net/url`` drops such segments, Python keeps them), valid escapes, repeated parameters (Go
reads the first), ``+`` against ``%20``, empty values and keys without ``=``.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass

import pytest

from tests.harness.dockerd import PrivateDockerd
from tests.harness.host_ledger import temp_dir
from tests.harness.images import import_busybox_image
from tests.stack.ds01 import IMAGE
from tests.stack.rawhttp import as_user, request

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ALICE, BOB = "e2e-alice", "e2e-bob"
DOCKERFILE = f'FROM {IMAGE}\nRUN echo "DTNET $(ls -l /proc/self/ns/net)"\n'
SEMICOLON = "a ';' in the query string is read differently by dockerd"
BAD_ESCAPE = "a malformed %-escape in the query string"
FORM = "application/x-www-form-urlencoded"
FORM_BODY = "body is not accepted (dockerd would read it as query parameters)"


def raw_request(target: str, body: bytes, content_type: str | None, *extra: str) -> bytes:
    """The exact bytes of one ``POST target`` on its own connection."""
    lines = [f"POST {target} HTTP/1.1", "Host: docker", "Connection: close"]
    lines.append(f"Content-Length: {len(body)}")
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@pytest.fixture(scope="module")
def reference():
    """dockerd itself, with no plugin in front: the oracle for how it reads the bytes."""
    daemon = PrivateDockerd(temp_dir("ds01ref-"))
    try:
        daemon.start()
        import_busybox_image(daemon.host, IMAGE)
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture
def ref(reference):
    """The reference dockerd with no containers before and after the test."""
    _remove_all(reference.docker)
    yield reference
    _remove_all(reference.docker)


def _remove_all(docker) -> None:
    ids = docker("ps", "-aq").stdout.split()
    if ids:
        docker("rm", "-f", *ids)


def send_direct(ref: PrivateDockerd, raw: bytes) -> tuple[int, dict]:
    """The bytes as root on the reference dockerd's socket (what dockerd reads from them)."""
    return request(str(ref.socket_path), "POST", "/", raw=raw)


def on_stack(stack):
    """The docker CLI as root on the stack's own dockerd (to read back what was produced)."""
    return lambda *args: stack.docker(*args, direct=True)


def send_gateway(stack, raw: bytes, user: str = ALICE) -> tuple[int, dict]:
    """The same bytes through DS01's gateway as a real non-admin user."""
    return as_user(user, lambda: request(str(stack.gateway_socket), "POST", "/", raw=raw))


def assert_refused(status: int, answer: dict, fragment: str) -> None:
    assert 400 <= status < 500, (status, answer)
    assert fragment in answer.get("message", ""), answer


def inspect(docker, ref: str) -> dict:
    result = docker("inspect", ref)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


# --- container names: ?name= variants on POST /containers/create ------------------------------

CREATE_BODY = json.dumps({"Image": IMAGE, "Cmd": ["true"]}).encode()


@dataclass(frozen=True)
class NameCase:
    id: str
    query: str
    # What dockerd reads (seen directly): a name, "<generated>" (none given), "<invalid>" (its
    # 400 for an invalid name) or "<unparsable>" (its 400 where Go's ParseForm reports the query:
    # create calls it first; build reads FormValue, which drops such segments silently).
    go_reads: str
    refusal: str | None = None  # DS01's refusal; None: DS01 forwards what Go reads


NAME_CASES = [
    NameCase("repeated_first_wins", "name=dt-first&name=dt-second", "dt-first"),
    NameCase("valid_escape", "name=dt%2Dpct", "dt-pct"),
    NameCase("escaped_in_key", "n%61me=dt-keyesc", "dt-keyesc"),
    NameCase("empty_value", "name=", "<generated>"),
    NameCase("key_without_equals", "name", "<generated>"),
    NameCase("empty_segments", "&&name=dt-amp&&", "dt-amp"),
    NameCase("plus_is_space", "name=dt+plus", "<invalid>"),
    NameCase("pct20_is_space", "name=dt%20sp", "<invalid>"),
    NameCase("semicolon_segment_dropped", "name=dt-x;&name=dt-semi", "<unparsable>", SEMICOLON),
    NameCase("semicolon_inside_value", "name=dt-y;z", "<unparsable>", SEMICOLON),
    NameCase("bad_escape_dropped", "name=dt%zz&name=dt-esc", "<unparsable>", BAD_ESCAPE),
    NameCase("truncated_escape", "name=dt-t%2", "<unparsable>", BAD_ESCAPE),
]


def name_outcome(docker, status: int, answer: dict) -> str:
    """What dockerd did with a create: the container's name, "<generated>" or "<invalid>"."""
    message = answer.get("message", "")
    if status == 400 and "Invalid container name" in message:
        return "<invalid>"
    if status == 400 and (
        "invalid semicolon separator" in message or "invalid URL escape" in message
    ):
        return "<unparsable>"
    assert status == 201, (status, answer)
    name = inspect(docker, answer["Id"])["Name"].lstrip("/")
    docker("rm", "-f", answer["Id"])
    return name if name.startswith("dt-") else "<generated>"


@pytest.mark.parametrize("case", NAME_CASES, ids=[c.id for c in NAME_CASES])
def test_create_query_is_read_as_dockerd_reads_it(clean, ref, case):
    raw = raw_request(f"/v1.41/containers/create?{case.query}", CREATE_BODY, "application/json")
    assert name_outcome(ref.docker, *send_direct(ref, raw)) == case.go_reads
    status, answer = send_gateway(clean, raw)
    if case.refusal is not None:
        assert_refused(status, answer, case.refusal)
        assert clean.docker("ps", "-aq", direct=True).stdout.strip() == ""
    else:
        assert name_outcome(on_stack(clean), status, answer) == case.go_reads


# --- builds: tags, labels and the RUN step's network as dockerd understood them ------------------


@pytest.fixture(scope="module")
def context_tar() -> bytes:
    """A tiny build context: its RUN step prints the network namespace it ran in."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = DOCKERFILE.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    # Only the header, the data and the two end blocks: dockerd stops reading there, and bytes
    # of tar padding left unread would make its close reset the connection under its answer.
    return out.getvalue()[: 512 + -(-len(data) // 512) * 512 + 1024]


HOST_NETNS = os.readlink("/proc/self/ns/net")  # dockerd runs in this test's namespace


@dataclass(frozen=True)
class BuildOutcome:
    network: str  # "host" or "isolated": where the RUN step ran
    tags: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]


def stream_text(answer: dict) -> str:
    """A build's JSON-lines stream as the text it prints (``raw``: more than one JSON value)."""
    if "raw" not in answer:
        return json.dumps(answer)
    lines = [json.loads(line) for line in answer["raw"].splitlines() if line.strip()]
    return "".join(line.get("stream", "") or json.dumps(line) for line in lines)


def build_outcome(docker, status: int, answer: dict) -> BuildOutcome:
    """What a legacy build produced; its images are removed again."""
    text = stream_text(answer)
    assert status == 200 and "Successfully built" in text, (status, text[-2000:])
    netns = re.search(r"DTNET .*-> (net:\[\d+\])", text)
    assert netns, text[-2000:]
    image_id = re.findall(r"Successfully built ([0-9a-f]+)", text)[-1]
    image = inspect(docker, image_id)
    labels = {k: v for k, v in (image["Config"]["Labels"] or {}).items() if k.startswith("dt.")}
    docker("rmi", "-f", *image["RepoTags"], image_id)
    return BuildOutcome(
        "host" if netns.group(1) == HOST_NETNS else "isolated",
        tuple(sorted(image["RepoTags"])),
        tuple(sorted(labels.items())),
    )


@dataclass(frozen=True)
class BuildCase:
    id: str
    query: str
    go_reads: BuildOutcome
    refusal: str | None = None


def iso(*tags: str, labels: tuple[tuple[str, str], ...] = ()) -> BuildOutcome:
    return BuildOutcome("isolated", tuple(sorted(tags)), labels)


LABELS_QUERY = (
    "labels=%7B%22dt.plus%22:%22a+b%22,%22dt.sp%22:%22a%20b%22,%22dt.lit%22:%22a%2Bb%22,"
    "%22dt.slash%22:%22a%2Fb%22%7D"
)
BUILD_CASES = [
    BuildCase(
        "repeated_tags_all_read",
        "t=e2e-alice/dt:a&t=e2e-alice/dt:b",
        iso("e2e-alice/dt:a", "e2e-alice/dt:b"),
    ),
    BuildCase("escaped_slash_and_colon", "t=e2e-alice%2Fdt%3Apct", iso("e2e-alice/dt:pct")),
    BuildCase(
        "plus_pct20_and_escaped_plus",
        f"t=e2e-alice/dt:lab&{LABELS_QUERY}",
        iso(
            "e2e-alice/dt:lab",
            labels=(("dt.lit", "a+b"), ("dt.plus", "a b"), ("dt.slash", "a/b"), ("dt.sp", "a b")),
        ),
    ),
    BuildCase(
        "repeated_networkmode_first_wins",
        "t=e2e-alice/dt:rep&networkmode=none&networkmode=host",
        iso("e2e-alice/dt:rep"),
    ),
    BuildCase(
        "empty_tag_refused",  # dockerd skips it; DS01 will not guess
        "t=&t=e2e-alice/dt:empty",
        iso("e2e-alice/dt:empty"),
        "'' is not a valid image name",
    ),
    BuildCase(
        "networkmode_without_equals",
        "networkmode&t=e2e-alice/dt:nokey&networkmode=host",
        iso("e2e-alice/dt:nokey"),
    ),
    BuildCase(
        "semicolon_hides_host_network",
        "t=e2e-alice/dt:semi&networkmode=x;&networkmode=host",
        BuildOutcome("host", ("e2e-alice/dt:semi",), ()),
        SEMICOLON,
    ),
    BuildCase(
        "bad_escape_hides_host_network",
        "t=e2e-alice/dt:esc&networkmode=%zz&networkmode=host",
        BuildOutcome("host", ("e2e-alice/dt:esc",), ()),
        BAD_ESCAPE,
    ),
]


@pytest.mark.parametrize("case", BUILD_CASES, ids=[c.id for c in BUILD_CASES])
def test_build_query_is_read_as_dockerd_reads_it(clean, ref, context_tar, case):
    raw = raw_request(f"/v1.41/build?nocache=1&{case.query}", context_tar, "application/x-tar")
    assert build_outcome(ref.docker, *send_direct(ref, raw)) == case.go_reads
    status, answer = send_gateway(clean, raw)
    if case.refusal is not None:
        assert_refused(status, answer, case.refusal)
    else:
        assert build_outcome(on_stack(clean), status, answer) == case.go_reads


def test_build_form_body_is_refused(clean, ref):
    """A form-typed build body: this dockerd's build route takes ``remote`` from the query, not
    from the body (its error names the query's URL, a closed local port); DS01 refuses such a
    body on every route all the same, so no dockerd version's reading of it matters."""
    raw = raw_request(
        "/v1.41/build?t=e2e-alice/dt:form&remote=http://127.0.0.1:9/dt-query",
        b"remote=http://127.0.0.1:9/dt-body&networkmode=host&cgroupparent=/ds01/e2e-bob",
        FORM,
    )
    status, answer = send_direct(ref, raw)
    assert status == 500 and "dt-query" in answer["message"], answer
    assert_refused(*send_gateway(clean, raw), FORM_BODY)


# --- prune with a form body: the body's filters replace the owner filter --------------------------

PRUNE_QUERY = "/v1.41/containers/prune?filters=%7B%22label%22:%5B%22dt-nothing-has-this%22%5D%7D"


@dataclass(frozen=True)
class PruneCase:
    id: str
    content_type: str | None
    go_reads_body: bool  # dockerd takes filters={} from the body: every stopped container goes
    refusal: str


PRUNE_CASES = [
    PruneCase("form", "application/x-www-form-urlencoded", True, FORM_BODY),
    PruneCase("form_odd_case", "Application/X-WWW-Form-URLEncoded", True, FORM_BODY),
    PruneCase("form_charset", "application/x-www-form-urlencoded; charset=utf-8", True, FORM_BODY),
    PruneCase("form_space_param", 'application/x-www-form-urlencoded ;q="x"', True, FORM_BODY),
    # Go's mime parser fails on the parameter, net/http parses the form anyway, moby ignores
    # the "mime:" error.
    PruneCase("form_bad_param", "application/x-www-form-urlencoded; =bad", True, FORM_BODY),
    PruneCase("form_trailing_semicolon", "application/x-www-form-urlencoded;", True, FORM_BODY),
    PruneCase("multipart", "multipart/form-data; boundary=x", False, FORM_BODY),
    PruneCase("json", "application/json", False, "takes no request body"),
    PruneCase("no_type", None, False, "takes no request body"),
    PruneCase("list_of_types", "application/json, application/x-www-form-urlencoded", False, ""),
]


def stopped_containers(stack) -> dict[str, str]:
    """One stopped container each for alice and bob, made through the gateway."""
    made = {}
    for user in (ALICE, BOB):
        created = stack.docker("create", IMAGE, "true", user=user)
        assert created.returncode == 0, created.stderr
        made[user] = created.stdout.strip()
    return made


def stopped_reference(ref: PrivateDockerd) -> dict[str, str]:
    """The same two stopped containers on the reference dockerd."""
    made = {}
    for user in (ALICE, BOB):
        created = ref.docker("create", "--label", f"ds01.user={user}", IMAGE, "true")
        assert created.returncode == 0, created.stderr
        made[user] = created.stdout.strip()
    return made


def existing(docker, ids: dict[str, str]) -> set[str]:
    present = set(docker("ps", "-aq", "--no-trunc").stdout.split())
    return {user for user, cid in ids.items() if cid in present}


@pytest.mark.parametrize("case", PRUNE_CASES, ids=[c.id for c in PRUNE_CASES])
def test_prune_form_body(clean, ref, case):
    """``filters={}`` in the body: dockerd would prune every user's stopped containers."""
    raw = raw_request(PRUNE_QUERY, b"filters={}", case.content_type)
    ids = stopped_reference(ref)
    assert send_direct(ref, raw)[0] == 200
    assert existing(ref.docker, ids) == (set() if case.go_reads_body else {ALICE, BOB})
    ids = stopped_containers(clean)
    assert_refused(*send_gateway(clean, raw), case.refusal)
    assert existing(on_stack(clean), ids) == {ALICE, BOB}


def test_header_order_decides_the_content_type(clean, ref):
    """Go reads the first Content-Type; a form one hidden behind a JSON one is not read as form
    by dockerd, and a form one first is refused by DS01."""
    form_first = raw_request(
        PRUNE_QUERY, b"filters={}", "application/x-www-form-urlencoded", "content-type: text/x"
    )
    json_first = raw_request(
        PRUNE_QUERY,
        b"filters={}",
        "application/json",
        "CONTENT-TYPE: application/x-www-form-urlencoded",
    )
    ids = stopped_reference(ref)
    assert send_direct(ref, json_first)[0] == 200
    assert existing(ref.docker, ids) == {ALICE, BOB}
    assert send_direct(ref, form_first)[0] == 200
    assert existing(ref.docker, ids) == set()
    ids = stopped_containers(clean)
    assert_refused(*send_gateway(clean, form_first), FORM_BODY)
    assert_refused(*send_gateway(clean, json_first), "takes no request body")
    assert existing(on_stack(clean), ids) == {ALICE, BOB}
