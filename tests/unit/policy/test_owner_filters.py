"""Lists a user may see are narrowed by an owner label filter, in the form the client used."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from policy.engine import decide
from policy.state import Request, State

from .conftest import ALICE, ROOT


def filters_after(limits_of, target: str, who=ALICE) -> dict | None:
    decision = decide(Request("GET", target), who, limits_of(who), State())
    assert decision.allowed, decision.message
    return json.loads(decision.query["filters"][0]) if decision.query else None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, {"label": ["ds01.user=alice"]}),
        ({"status": ["running"]}, {"status": ["running"], "label": ["ds01.user=alice"]}),
        ({"label": ["team=cv"]}, {"label": ["team=cv", "ds01.user=alice"]}),
        # the legacy map form (the CLI's `docker events --filter`): answered in the same form
        (
            {"event": {"start": True}},
            {"event": {"start": True}, "label": {"ds01.user=alice": True}},
        ),
        ({"label": {"team=cv": True}}, {"label": {"team=cv": True, "ds01.user=alice": True}}),
    ],
)
@pytest.mark.parametrize("endpoint", ["/v1.41/containers/json", "/v1.41/events", "/v1.41/volumes"])
def test_owner_filter_is_added_in_the_clients_form(limits_of, endpoint, given, expected):
    """dockerd parses filters in one form or the other, never a mix, so ours matches theirs."""
    target = endpoint + (f"?filters={quote(json.dumps(given))}" if given is not None else "")
    if endpoint.endswith("/events"):  # containers' events only, in the same form
        map_form = isinstance(expected["label"], dict)
        expected = {**expected, "type": {"container": True} if map_form else ["container"]}
    assert filters_after(limits_of, target) == expected


@pytest.mark.parametrize(
    ("given", "allowed"),
    [
        ({"type": ["container"]}, True),
        ({"type": {"container": True, "image": True}}, True),
        ({"type": ["image"]}, False),
        ({"type": ["network", "volume"]}, False),
    ],
)
def test_a_users_events_are_their_containers_only(limits_of, given, allowed):
    """Image events carry the image's labels (anyone's to write): a user sees container
    events only, and asking only for other kinds is refused with the reason."""
    target = f"/v1.41/events?filters={quote(json.dumps(given))}"
    decision = decide(Request("GET", target), ALICE, limits_of(ALICE), State())
    assert decision.allowed == allowed, decision.message
    if allowed:
        shown = json.loads(decision.query["filters"][0])["type"]
        assert shown in (["container"], {"container": True})
    else:
        assert decision.message == (
            "ds01: docker events shows you the events of your containers only. "
            "To fix: drop --filter type=..., or use --filter type=container"
        )


def test_admins_lists_are_not_filtered(limits_of):
    """An admin sees everyone's containers."""
    assert filters_after(limits_of, "/v1.41/containers/json?all=1", who=ROOT) is None


def test_unreadable_filters_are_refused(limits_of):
    """A filters parameter that is not JSON is refused rather than dropped."""
    decision = decide(
        Request("GET", "/v1.41/containers/json?filters=%7Bnope"), ALICE, limits_of(ALICE), State()
    )
    assert not decision.allowed and decision.status == 400
