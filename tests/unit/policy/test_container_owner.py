"""Who a container belongs to: the ds01.user label, believed only with its user's cgroup parent.

An image's labels become the labels of every container dockerd makes from it by itself (a
legacy build's RUN steps), so a base image labelled ``ds01.user=bob`` would otherwise hand
bob the build containers of everyone who builds FROM it.
"""

from __future__ import annotations

import pytest

from policy.slices import cgroup_parent, container_owner, user_of_cgroup_parent

ROWS = [
    ("label_and_own_parent", {"ds01.user": "bob"}, {"CgroupParent": "/ds01/bob"}, "bob"),
    ("label_and_builders_parent", {"ds01.user": "bob"}, {"CgroupParent": "/ds01/alice"}, None),
    ("label_without_parent", {"ds01.user": "bob"}, {}, None),
    ("label_with_empty_parent", {"ds01.user": "bob"}, {"CgroupParent": ""}, None),
    ("parent_without_label", {}, {"CgroupParent": "/ds01/bob"}, None),
    ("nested_parent", {"ds01.user": "bob"}, {"CgroupParent": "/ds01/bob/x"}, None),
    ("buildkit_parent", {"ds01.user": "bob"}, {"CgroupParent": "/ds01-builds"}, None),
    ("other_root", {"ds01.user": "bob"}, {"CgroupParent": "/docker/bob"}, None),
    ("ds01_root_itself", {"ds01.user": "bob"}, {"CgroupParent": "/ds01/"}, None),
    ("slice", {"ds01.user": "bob"}, {"CgroupParent": "ds01-students-bob.slice"}, "bob"),
    ("slice_other_group", {"ds01.user": "bob"}, {"CgroupParent": "ds01-staff-bob.slice"}, "bob"),
    ("slice_of_another", {"ds01.user": "bob"}, {"CgroupParent": "ds01-students-al.slice"}, None),
    ("group_slice", {"ds01.user": "bob"}, {"CgroupParent": "ds01-students.slice"}, None),
    ("label_not_text", {"ds01.user": 7}, {"CgroupParent": "/ds01/7"}, None),
    ("parent_not_text", {"ds01.user": "bob"}, {"CgroupParent": ["/ds01/bob"]}, None),
]


@pytest.mark.parametrize(
    ("labels", "host", "owner"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_container_owner(labels, host, owner):
    assert container_owner(labels, host) == owner


NAMES = ["bob", "tasks", "memory.max", "a-b", "x\\y", ".hidden"]


@pytest.mark.parametrize(
    ("driver", "user"),
    [("cgroupfs", u) for u in [*NAMES, "émile"]] + [("systemd", u) for u in NAMES],
)
def test_every_parent_ds01_builds_names_its_user_back(driver, user):
    assert user_of_cgroup_parent(cgroup_parent(driver, user, "students")) == user
