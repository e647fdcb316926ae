"""DS01's image owner record: claims, the race for a name, removals, the file across restarts."""

from __future__ import annotations

import json

import pytest

from ds01d.image_owners import ImageOwners, RecordError, answer_screen
from policy.identity import Identity
from policy.limits import Limits
from policy.routes import parse_route

ALICE = Identity(uid=1001, user="alice")
BOB = Identity(uid=1002, user="bob")
STUDENT = Limits(user="x", group="students", admin=False)
ADMIN = Limits(user="x", group="admins", admin=True)
ID = "sha256:" + "a" * 64


def route(target: str, method: str = "POST"):
    return parse_route(method, target)


def test_claims_survive_a_restart(tmp_path):
    path = tmp_path / "image-owners.json"
    record = ImageOwners(path)
    assert record.claim_writes(route("/build?t=alice/model&t=alice/x:2"), ALICE, STUDENT) is None
    record.claim_ids([ID], "alice")
    again = ImageOwners(path)
    assert again.owners().tags == {
        "docker.io/alice/model:latest": "alice",
        "docker.io/alice/x:2": "alice",
    }
    assert again.owners().ids == {ID: "alice"}
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)  # mkstemp's mode: root reads it


def test_the_second_claim_of_a_name_loses():
    record = ImageOwners()
    target = route("/images/busybox/tag?repo=model")
    assert record.claim_writes(target, ALICE, STUDENT) is None
    lost = record.claim_writes(target, BOB, STUDENT)
    assert lost is not None and lost.message == (
        "ds01: the image name model:latest belongs to another user. "
        "To fix: use a name of your own, e.g. bob/model:latest"
    )
    assert record.tag_owner("docker.io/library/model:latest") == "alice"


def test_admin_writes_and_pulls_record_no_owner():
    record = ImageOwners()
    assert record.claim_writes(route("/build?t=lab/base"), ALICE, ADMIN) is None
    assert record.claim_writes(route("/images/create?fromImage=x&tag=1"), BOB, STUDENT) is None
    assert record.owners().tags == {}


def test_rmi_answer_frees_the_name():
    record = ImageOwners()
    record.claim_writes(route("/images/create?fromSrc=-&repo=alice/m"), ALICE, STUDENT)
    record.claim_ids([ID], "alice")
    screen = answer_screen(record, route("/images/alice/m", "DELETE"), ALICE, STUDENT)
    assert screen is not None
    screen(200, json.dumps([{"Untagged": "alice/m:latest"}, {"Deleted": ID}]).encode())
    assert record.owners().tags == {} and record.owners().ids == {}


def test_commit_answer_records_the_id():
    record = ImageOwners()
    screen = answer_screen(record, route("/commit?container=c"), BOB, STUDENT)
    assert screen is not None
    screen(201, json.dumps({"Id": ID}).encode())
    assert record.owners().ids == {ID: "bob"}


def test_a_failed_save_refuses_the_write_and_keeps_the_old_record(tmp_path):
    path = tmp_path / "state" / "image-owners.json"
    record = ImageOwners(path)
    assert record.claim_writes(route("/build?t=bob/a"), BOB, STUDENT) is None
    path.unlink()
    path.parent.rmdir()
    path.parent.write_text("")  # the state directory is gone, a file in its place
    refused = record.claim_writes(route("/build?t=bob/b"), BOB, STUDENT)
    assert refused is not None and refused.code == "image_record"
    assert record.owners().tags == {"docker.io/bob/a:latest": "bob"}


def test_an_unreadable_record_stops_the_start(tmp_path):
    path = tmp_path / "image-owners.json"
    path.write_text("{not json")
    with pytest.raises(RecordError, match="cannot read the image owner record"):
        ImageOwners(path)
