"""Gateway tickets: single-use tokens binding an approved request's method, target and body."""

from __future__ import annotations

import pytest

from ds01d import tickets as tickets_module
from ds01d.tickets import TOKEN_HEADER, Tickets, body_digest
from policy.identity import Identity

ALICE = Identity(uid=1001, user="alice", groups=frozenset({"students"}))
TARGET = "/v1.43/containers/create?name=train"
BODY = b'{"Image":"busybox","HostConfig":{"Memory":1073741824}}'


@pytest.fixture
def tickets() -> Tickets:
    return Tickets()


def test_token_header_name() -> None:
    """The gateway's token travels in ``X-Ds01-Token``."""
    assert TOKEN_HEADER == "X-Ds01-Token"


def test_issue_then_redeem_once(tickets: Tickets) -> None:
    """A ticket redeemed with its own method, target and body returns the identity."""
    token = tickets.issue(ALICE, "POST", TARGET, BODY)
    ticket = tickets.redeem(token, "POST", TARGET, BODY)
    assert ticket is not None
    assert ticket.identity == ALICE
    assert (ticket.method, ticket.target) == ("POST", TARGET)
    assert ticket.body_sha256 == body_digest(BODY)
    assert ticket.requests_seen == 1


def test_tokens_are_unique_and_unguessable(tickets: Tickets) -> None:
    """Every issue gives a fresh random token of reasonable length."""
    tokens = {tickets.issue(ALICE, "GET", "/_ping", None) for _ in range(200)}
    assert len(tokens) == 200
    assert all(len(t) >= 32 for t in tokens)
    assert len(tickets) == 200


def test_replay_is_refused(tickets: Tickets) -> None:
    """The same token redeemed a second time, even for the same request, gives None."""
    token = tickets.issue(ALICE, "POST", TARGET, BODY)
    assert tickets.redeem(token, "POST", TARGET, BODY) is not None
    assert tickets.redeem(token, "POST", TARGET, BODY) is None


@pytest.mark.parametrize(
    ("method", "uri", "body"),
    [
        ("GET", TARGET, BODY),
        ("post", TARGET, BODY),
        ("POST", "/v1.43/containers/create?name=other", BODY),
        ("POST", "/v1.43/containers/create", BODY),
        ("POST", "/v1.44/containers/create?name=train", BODY),
        ("POST", TARGET, b'{"Image":"busybox","HostConfig":{"Privileged":true}}'),
        ("POST", TARGET, BODY + b" "),
        ("POST", TARGET, None),
        ("POST", TARGET, b""),
    ],
    ids=[
        "method",
        "method case",
        "query",
        "query dropped",
        "version",
        "body",
        "body whitespace",
        "body missing",
        "body empty",
    ],
)
def test_mismatch_is_refused(tickets: Tickets, method: str, uri: str, body: bytes | None) -> None:
    """A token presented with any other method, URI or body gives None."""
    token = tickets.issue(ALICE, "POST", TARGET, BODY)
    assert tickets.redeem(token, method, uri, body) is None


def test_a_mismatch_uses_up_the_ticket(tickets: Tickets) -> None:
    """After a mismatched attempt the genuine request cannot redeem the token either."""
    token = tickets.issue(ALICE, "POST", TARGET, BODY)
    assert tickets.redeem(token, "POST", TARGET, b"{}") is None
    assert tickets.redeem(token, "POST", TARGET, BODY) is None


@pytest.mark.parametrize("token", [None, "", "not-a-token", "X" * 32])
def test_unknown_token_is_refused(tickets: Tickets, token: str | None) -> None:
    """Missing, empty and never-issued tokens redeem to None."""
    tickets.issue(ALICE, "GET", "/_ping", None)
    assert tickets.redeem(token, "GET", "/_ping", None) is None


def test_ticket_without_body_matches_any_body(tickets: Tickets) -> None:
    """A ticket issued for a streamed (unbuffered) body does not bind the body dockerd forwards."""
    token = tickets.issue(ALICE, "POST", "/v1.43/build", None)
    assert tickets.redeem(token, "POST", "/v1.43/build", b"tar bytes") is not None


def test_ticket_for_an_empty_body_refuses_a_non_empty_one(tickets: Tickets) -> None:
    """A ticket for a request approved with an empty body does not accept a different body."""
    token = tickets.issue(ALICE, "POST", "/v1.43/containers/c1/start", b"")
    body = b'{"Binds":["/:/host"]}'
    assert tickets.redeem(token, "POST", "/v1.43/containers/c1/start", body) is None


def test_finish_removes_the_ticket(tickets: Tickets) -> None:
    """finish returns the ticket once for the AuthZRes; afterwards the token is gone."""
    token = tickets.issue(ALICE, "POST", TARGET, BODY)
    assert tickets.redeem(token, "POST", TARGET, BODY) is not None
    finished = tickets.finish(token)
    assert finished is not None
    assert finished.identity == ALICE
    assert len(tickets) == 0
    assert tickets.finish(token) is None
    assert tickets.redeem(token, "POST", TARGET, BODY) is None


def test_finish_before_redeem_prevents_redeem(tickets: Tickets) -> None:
    """A finished ticket can no longer be redeemed."""
    token = tickets.issue(ALICE, "GET", "/_ping", None)
    assert tickets.finish(token) is not None
    assert tickets.redeem(token, "GET", "/_ping", None) is None


@pytest.mark.parametrize("token", [None, "", "unknown"])
def test_finish_unknown_token(tickets: Tickets, token: str | None) -> None:
    """finish of a missing or unknown token is None and removes nothing."""
    tickets.issue(ALICE, "GET", "/_ping", None)
    assert tickets.finish(token) is None
    assert len(tickets) == 1


def test_discard_removes_without_answer(tickets: Tickets) -> None:
    """discard drops a ticket (connection closed) and ignores unknown tokens."""
    token = tickets.issue(ALICE, "GET", "/_ping", None)
    tickets.discard(token)
    tickets.discard(token)
    tickets.discard("unknown")
    assert len(tickets) == 0
    assert tickets.redeem(token, "GET", "/_ping", None) is None


def test_oldest_tickets_are_evicted_beyond_the_cap(
    tickets: Tickets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the live cap the oldest ticket is dropped first; newer ones still redeem."""
    monkeypatch.setattr(tickets_module, "_MAX_LIVE", 3)
    tokens = [tickets.issue(ALICE, "GET", f"/containers/c{i}/json", None) for i in range(5)]
    assert len(tickets) == 3
    assert tickets.redeem(tokens[0], "GET", "/containers/c0/json", None) is None
    assert tickets.redeem(tokens[1], "GET", "/containers/c1/json", None) is None
    assert tickets.redeem(tokens[4], "GET", "/containers/c4/json", None) is not None


def test_internal_secret(tickets: Tickets) -> None:
    """The internal secret is recognised, is multi-use, and is not a redeemable ticket."""
    assert tickets.is_internal(tickets.internal)
    assert tickets.is_internal(tickets.internal)
    assert not tickets.is_internal(None)
    assert not tickets.is_internal("")
    assert not tickets.is_internal(tickets.internal + "x")
    assert not Tickets().is_internal(tickets.internal)
    assert tickets.redeem(tickets.internal, "GET", "/_ping", None) is None


def test_body_digest() -> None:
    """body_digest is the hex SHA-256 of a body, None when there is none."""
    assert body_digest(None) is None
    assert body_digest(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
