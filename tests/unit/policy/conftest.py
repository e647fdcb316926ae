"""Shared fixtures for the pure policy tests: a lab policy, its users, and a request builder."""

from __future__ import annotations

import json
from typing import Any

import pytest

from policy.identity import Identity
from policy.limits import Limits, resolve
from policy.loader import parse_policy
from policy.state import ObjectFacts, Request, State

LAB_POLICY = """
unknown_users: allow
defaults:
  max_gpus: 0
  max_mig_instances: 1
  max_cpus: 4
  memory: 16g
  shm_size: 2g
  pids_limit: 2048
  max_containers: 5
  bind_mounts: ["{home}", "/data/shared"]
groups:
  students:
    members: [alice, bob]
  researchers:
    members: [rita]
    max_cpus: 16
    memory: 64g
    allow_full_gpu: true
    max_gpus: 2
  admins:
    admin: true
    members: [root]
    unix_groups: [ds01-admin]
users:
  bob:
    allow: [sysctls]
"""


@pytest.fixture(scope="session")
def lab():
    return parse_policy(LAB_POLICY, "lab.yaml")


def person(name: str, uid: int) -> Identity:
    return Identity(
        uid=uid,
        user=name,
        groups=frozenset({name}),
        home=f"/home/{name}",
        gid=uid,
        gids=(uid,),
    )


ALICE = person("alice", 1001)
BOB = person("bob", 1002)
RITA = person("rita", 1003)
ROOT = Identity(uid=0, user="root", groups=frozenset({"root"}), home="/root")


@pytest.fixture
def limits_of(lab):
    def get(identity: Identity) -> Limits:
        return resolve(lab, identity)

    return get


def cli_create_body(**host: Any) -> dict[str, Any]:
    """A body shaped like what `docker run` (CLI 20.10+) sends for `docker run busybox sh`."""
    host_config: dict[str, Any] = {
        "Binds": None,
        "ContainerIDFile": "",
        "LogConfig": {"Type": "", "Config": {}},
        "NetworkMode": "default",
        "PortBindings": {},
        "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        "AutoRemove": False,
        "VolumeDriver": "",
        "VolumesFrom": None,
        "CapAdd": None,
        "CapDrop": None,
        "CgroupnsMode": "",
        "Dns": [],
        "DnsOptions": [],
        "DnsSearch": [],
        "ExtraHosts": None,
        "GroupAdd": None,
        "IpcMode": "",
        "Cgroup": "",
        "Links": None,
        "OomScoreAdj": 0,
        "PidMode": "",
        "Privileged": False,
        "PublishAllPorts": False,
        "ReadonlyRootfs": False,
        "SecurityOpt": None,
        "UTSMode": "",
        "UsernsMode": "",
        "ShmSize": 0,
        "ConsoleSize": [0, 0],
        "Isolation": "",
        "CpuShares": 0,
        "Memory": 0,
        "NanoCpus": 0,
        "CgroupParent": "",
        "BlkioWeight": 0,
        "BlkioWeightDevice": [],
        "BlkioDeviceReadBps": None,
        "BlkioDeviceWriteBps": None,
        "BlkioDeviceReadIOps": None,
        "BlkioDeviceWriteIOps": None,
        "CpuPeriod": 0,
        "CpuQuota": 0,
        "CpuRealtimePeriod": 0,
        "CpuRealtimeRuntime": 0,
        "CpusetCpus": "",
        "CpusetMems": "",
        "Devices": [],
        "DeviceCgroupRules": None,
        "DeviceRequests": None,
        "KernelMemory": 0,
        "KernelMemoryTCP": 0,
        "MemoryReservation": 0,
        "MemorySwap": 0,
        "MemorySwappiness": None,
        "OomKillDisable": False,
        "PidsLimit": None,
        "Ulimits": None,
        "CpuCount": 0,
        "CpuPercent": 0,
        "IOMaximumIOps": 0,
        "IOMaximumBandwidth": 0,
        "MaskedPaths": None,
        "ReadonlyPaths": None,
    }
    host_config.update(host)
    return {
        "Hostname": "",
        "Domainname": "",
        "User": "",
        "AttachStdin": False,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "Env": [],
        "Cmd": ["sh"],
        "Image": "busybox",
        "Volumes": {},
        "WorkingDir": "",
        "Entrypoint": None,
        "OnBuild": None,
        "Labels": {},
        "HostConfig": host_config,
        "NetworkingConfig": {"EndpointsConfig": {}},
    }


def create_request(body: Any, raw: bytes | None = None) -> Request:
    data = raw if raw is not None else json.dumps(body).encode()
    return Request("POST", "/v1.41/containers/create", {"Content-Type": "application/json"}, data)


def state(**kwargs: Any) -> State:
    return State(**kwargs)


def container(owner: str | None, cid: str = "c0ffee" * 10 + "c0ff", **kw: Any) -> ObjectFacts:
    return ObjectFacts(kind="container", id=cid, owner=owner, **kw)
