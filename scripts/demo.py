"""`make demo`: a private dockerd governed by ds01d, and a walk through what users get.

Creates two demo users (a student and a researcher), starts a private dockerd with ds01d as
its AuthZ plugin and gateway, runs ordinary docker commands as each user and prints what
happened and why. Everything it starts is stopped at the end; the users stay (ds01-demo-*).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import textwrap
from pathlib import Path

from tests.harness.users import ensure_user
from tests.stack.ds01 import IMAGE, Ds01Stack

STUDENT, RESEARCHER = "ds01-demo-student", "ds01-demo-researcher"
POLICY = f"""
# The demo's policy: what an admin writes in /etc/ds01/policy.yaml
defaults:
  max_mig_instances: 1
  max_gpus: 0
  max_cpus: 2
  memory: 1g
  max_containers: 5
  gpu_hold_after_stop: 0
groups:
  students:
    members: [{STUDENT}]
  researchers:
    members: [{RESEARCHER}]
    allow_full_gpu: true
    max_gpus: 1
    max_cpus: 4
    memory: 4g
    priority: 50
"""

BOLD, GREEN, RED, DIM, END = (
    ("\033[1m", "\033[32m", "\033[31m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("",) * 5
)


def step(stack: Ds01Stack, user: str, args: list[str], why: str) -> str:
    print(f"\n{BOLD}{user}${END} docker {shlex.join(args)}")
    print(f"{DIM}  ({why}){END}")
    result = stack.docker(*args, user=user)
    out = (result.stdout.strip() or result.stderr.strip()).splitlines()
    colour = GREEN if result.returncode == 0 else RED
    verdict = "allowed" if result.returncode == 0 else "refused"
    print(f"  {colour}{verdict}{END}")
    for line in out[:6]:
        if line.strip() and not line.startswith("Run 'docker"):
            print(textwrap.indent(line, "  | "))
    return result.stdout.strip()


def show_container(stack: Ds01Stack, name: str) -> None:
    info = json.loads(stack.docker("inspect", name, direct=True).stdout)[0]
    host, labels = info["HostConfig"], info["Config"]["Labels"]
    env = [e for e in info["Config"]["Env"] if e.startswith("NVIDIA_")]
    print(
        f"  {DIM}what dockerd was given: owner={labels.get('ds01.user')} group={labels.get('ds01.group')} "
        f"cgroup={host['CgroupParent']} memory={host['Memory'] // 2**20}m cpus={host['NanoCpus'] / 1e9:g} "
        f"{' '.join(env)} devices={labels.get('ds01.devices', '-')}{END}"
    )


def main() -> int:
    if os.geteuid() != 0:
        print("make demo must run as root (it starts a private dockerd and creates demo users)")
        return 2
    for user in (STUDENT, RESEARCHER):
        ensure_user(user)
    base = Path(tempfile.mkdtemp(prefix="ds01demo-", dir="/tmp"))
    stack = Ds01Stack(base, POLICY)
    print(
        f"{BOLD}Starting a private dockerd behind ds01d{END} (AuthZ plugin + gateway on {stack.gateway_socket})"
    )
    print(
        "GPU inventory: config/inventory.example.yaml (2 MIG-split A100s + 2 whole GPUs, no real GPU needed)"
    )
    stack.start()
    try:
        step(
            stack,
            STUDENT,
            ["run", "--rm", IMAGE, "echo", "hello from a governed container"],
            "a plain docker run works unchanged",
        )
        step(
            stack,
            STUDENT,
            ["run", "-d", "--name", "train", "--gpus", "1", IMAGE, "sleep", "600"],
            "--gpus 1 as a student: DS01 picks a MIG instance that nobody holds",
        )
        show_container(stack, "train")
        step(
            stack,
            STUDENT,
            ["run", "--rm", "--gpus", "1", IMAGE, "true"],
            "a second GPU container is over the student's quota",
        )
        step(
            stack,
            RESEARCHER,
            ["run", "-d", "--name", "big", "--gpus", "all", IMAGE, "sleep", "600"],
            "--gpus all means what the policy allows: one whole GPU for a researcher",
        )
        show_container(stack, "big")
        step(
            stack,
            STUDENT,
            ["run", "--rm", "--privileged", IMAGE, "true"],
            "privileged containers are refused",
        )
        step(
            stack,
            STUDENT,
            ["run", "--rm", "-v", "/etc:/host-etc", IMAGE, "true"],
            "bind mounts outside the user's home are refused",
        )
        step(
            stack,
            STUDENT,
            ["run", "--rm", "-v", "/var/run/docker.sock:/s", IMAGE, "true"],
            "mounting the Docker socket is refused",
        )
        step(
            stack,
            STUDENT,
            [
                "run",
                "--rm",
                "-e",
                "NVIDIA_VISIBLE_DEVICES=all",
                IMAGE,
                "printenv",
                "NVIDIA_VISIBLE_DEVICES",
            ],
            "the old bypass: the variable is removed, the container sees no GPU",
        )
        step(
            stack,
            STUDENT,
            ["run", "--rm", "--memory", "8g", IMAGE, "true"],
            "asking for more memory than allowed",
        )
        step(
            stack, STUDENT, ["ps", "--format", "{{.Names}}"], "users see only their own containers"
        )
        step(stack, STUDENT, ["stop", "big"], "another user's container answers like a missing one")
        print(f"\n{BOLD}{STUDENT}$ ds01 limits{END}")
        print(textwrap.indent(stack.ds01("limits", user=STUDENT).stdout.rstrip(), "  | "))
        print(
            f"\n{BOLD}root$ ds01 gpus{END}  "
            f"{DIM}(root is not an admin in this policy: others' names are hidden){END}"
        )
        print(textwrap.indent(stack.ds01("gpus").stdout.rstrip(), "  | "))
        print(
            f"\nThe audit log has {len(stack.audit_events())} events: {stack.state_dir / 'audit.jsonl'}"
        )
    finally:
        stack.stop()
    print(
        f"\n{BOLD}Done.{END} Everything the demo started is stopped. Run the tests with: make test"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
