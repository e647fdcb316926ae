"""``ds01 concepts [TOPIC]``: short explanations of the ideas a DS01 user meets.

Each topic names the policy keys it explains, so a test can check that every key a student
meets (config/policy.schema.json) is explained somewhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    name: str
    title: str
    text: str
    keys: tuple[str, ...] = ()  # the policy keys this topic explains


TOPICS: tuple[Topic, ...] = (
    Topic(
        "gpus",
        "Getting a GPU",
        """\
Ask Docker for a GPU as usual: `docker run --gpus 1 IMAGE`, or `"runArgs": ["--gpus", "1"]`
in a Dev Container. DS01 picks a device you may have and writes it into the container;
you never choose one by number. `--gpus all` means "as many as my limits allow", never
every device. You may name a device you saw in `ds01 gpus` (`--gpus device=MIG-...`,
the full UUID: `ds01 gpus` always shows it whole). `max_gpus` is how many whole GPUs you
may hold at once, `max_gpus_per_container` how many devices one container may get,
`allow_full_gpu` whether you may get whole GPUs at all (else MIG instances only).""",
        ("max_gpus", "max_gpus_per_container", "allow_full_gpu"),
    ),
    Topic(
        "mig",
        "MIG profiles",
        """\
An NVIDIA A100 or H100 can be cut into MIG instances: separate small GPUs with their own
memory and compute, isolated from each other. A profile such as `3g.40gb` says how many of
the GPU's 7 compute slices (3) and how much memory (40 GB) the instance has. A student
usually gets MIG instances rather than whole GPUs: `max_mig_instances` is how many you may
hold at once, `allowed_mig_profiles` which profiles (empty: any). Inside the container a
MIG instance looks like one GPU to CUDA and PyTorch.""",
        ("max_mig_instances", "allowed_mig_profiles"),
    ),
    Topic(
        "gpu-equivalents",
        "GPU-equivalents",
        """\
One number for "how much GPU" across whole GPUs and MIG instances: a whole GPU is 1.0, a
MIG instance is its compute slices / 7 (a 3g instance is 0.43). `max_gpu_equivalents`
caps the total you hold; `ds01 limits` shows what you hold now.""",
        ("max_gpu_equivalents",),
    ),
    Topic(
        "queue",
        "Priority and the GPU queue",
        """\
When every device you may use is taken, a GPU request is refused at once, unless you ask to
wait: `--label ds01.wait=10m` (at most your `gpu_wait`). Waiting requests are served by
`priority` (higher first), then by who waited longest. `ds01 limits` shows your place.
With `preempt_idle`, a request may take the device of an idle container of lower
priority (that container is stopped). Leaving the wait (Ctrl-C) drops the request.""",
        ("priority", "gpu_wait", "preempt_idle"),
    ),
    Topic(
        "idle",
        "Idle stops and time limits",
        """\
A container that does nothing (CPU under `idle_cpu_percent`, GPU under `idle_gpu_percent`,
network under `idle_network_bytes` per sample) for `idle_timeout` is stopped, so its GPU
goes back to others. No idle stop in the first `startup_grace` after a start. When most
devices are busy (`high_demand_threshold`) idle timeouts shrink by
`high_demand_idle_factor`. `max_runtime` stops a container that long after it was created,
busy or not. You are warned at 80% and 95% on your terminal, in /tmp/ds01-notice inside the
container and in `ds01 ps`. Admins may set stricter values per kind of container
(`container_types`: devcontainer, compose, docker) and exempt people for a while
(`exemptions`). `ds01 ps` shows when each of yours stops and why.""",
        (
            "idle_timeout",
            "max_runtime",
            "idle_cpu_percent",
            "idle_gpu_percent",
            "idle_network_bytes",
            "startup_grace",
            "stop_grace",
            "high_demand_threshold",
            "high_demand_idle_factor",
            "container_types",
            "exemptions",
            "sample_interval",
        ),
    ),
    Topic(
        "holds",
        "Holds after a stop",
        """\
A stopped container keeps its GPU for `gpu_hold_after_stop`, so `docker start` gets the same
device back; after that the GPU is free for others and a restart asks again. A stopped
container is removed after `container_hold_after_stop`; a container created but never
started is removed after `created_timeout`. To free a GPU now: `docker rm -f CONTAINER`.""",
        ("gpu_hold_after_stop", "container_hold_after_stop", "created_timeout"),
    ),
    Topic(
        "keepalive",
        "Keep-alives",
        """\
A long job that looks idle (waiting on I/O, a paused notebook) can be kept from an idle
stop: `ds01 keepalive CONTAINER`, or `touch /tmp/ds01-keepalive` inside the container.
One keep-alive counts for `keepalive_max` (24h by default); repeat it (a cron job or a
line in your training loop) for longer. It does not lift `max_runtime`.""",
        ("keepalive_max",),
    ),
    Topic(
        "limits",
        "Per-container and per-user limits",
        """\
`max_cpus`, `memory`, `shm_size` and `pids_limit` are per container: the default when you
ask for nothing, and the most you may ask for (`--cpus`, `-m`, `--shm-size`,
`--pids-limit`). `aggregate` caps all your containers together (the kernel enforces it).
`max_containers` counts your containers in any state, `max_networks` your networks (each
takes one of the server's few address pools). Your values come from `defaults`,
your groups and your own entry; `ds01 limits` shows them and where each comes from.""",
        (
            "max_cpus",
            "memory",
            "shm_size",
            "pids_limit",
            "aggregate",
            "max_containers",
            "max_networks",
            "defaults",
            "groups",
            "users",
            "members",
            "unix_groups",
            "admin",
        ),
    ),
    Topic(
        "refusals",
        "What is refused, and why",
        """\
Your containers run as you (`run_as: user`): DS01 sets every container's user to your
uid:gid with no-new-privileges, so files you write in bind mounts are yours and nothing in
the container can become root on the host. Images must therefore not need root when they
run (install at build time). You may bind-mount only folders under `bind_mounts` (your
home by default). Privileged features (`--privileged`, `--cap-add`, devices, host
namespaces, ports below 1024 or on public addresses...) need an `allow` entry from an
admin. Another user's containers, images and volumes look like they do not exist. Every
refusal says what was refused, why and what to do; `ds01 why CONTAINER` replays the
decisions about one of your containers. `unknown_users` and `direct_access` are how the
admins handle people in no group and root on the raw socket.""",
        ("run_as", "bind_mounts", "allow", "unknown_users", "direct_access", "cgroup_driver"),
    ),
    Topic(
        "builds",
        "Builds",
        """\
`docker build` works as usual; root inside a build is fine, because a build mounts no host
folder. With the classic builder (`DOCKER_BUILDKIT=0`) each RUN step runs in your own
cgroup under your per-container limits. BuildKit steps (`DOCKER_BUILDKIT=1`) all share one
pool capped by the policy's `builds` key (CPUs, memory, processes for every BuildKit build
on the server together): a heavy build can be slow when others build at the same time.
`--network host` and another container's network are refused for both builders.""",
        ("builds",),
    ),
    Topic(
        "projects",
        "Projects, Dev Containers and plain docker",
        """\
`ds01 project init NAME` writes a folder with a Dockerfile from the lab's templates, a
.devcontainer/devcontainer.json that works under DS01 (asks for a GPU, runs as you) and a
README. `ds01 project launch` builds and starts it with plain docker (or
`--devcontainer`; `--print` shows the commands). None of it is required: plain `docker`,
Compose and VS Code Dev Containers work as they are. A container's project is its
`org.ds01.project` label, or the folder a Dev Container was opened from; `ds01 ps` shows it.""",
    ),
)

BY_NAME = {t.name: t for t in TOPICS}
ALIASES = {
    "gpu": "gpus",
    "gpueq": "gpu-equivalents",
    "priority": "queue",
    "idle-stops": "idle",
    "hold": "holds",
    "keep-alive": "keepalive",
    "keepalives": "keepalive",
    "refused": "refusals",
    "run_as": "refusals",
    "project": "projects",
    "build": "builds",
}


def find(name: str) -> Topic | None:
    """The topic called ``name``, an alias of it, or the topic explaining policy key ``name``."""
    name = name.strip().lower()
    name = ALIASES.get(name, name)
    if name in BY_NAME:
        return BY_NAME[name]
    return next((t for t in TOPICS if name in t.keys), None)


def render(topic: Topic) -> str:
    keys = f"\n\nPolicy keys: {', '.join(topic.keys)}" if topic.keys else ""
    return f"{topic.title}\n{'=' * len(topic.title)}\n{topic.text}{keys}"


def overview() -> str:
    width = max(len(t.name) for t in TOPICS)
    lines = ["Topics (ds01 concepts TOPIC; a policy key works too, e.g. ds01 concepts gpu_wait):"]
    lines += [f"  {t.name.ljust(width)}  {t.title}" for t in TOPICS]
    return "\n".join(lines)


def concepts(topic: str | None) -> tuple[int, str]:
    """Exit code and text for ``ds01 concepts [TOPIC]``."""
    if not topic:
        return 0, overview()
    if topic == "all":
        return 0, "\n\n".join(render(t) for t in TOPICS)
    found = find(topic)
    if found is None:
        return 2, f"no topic {topic!r}. To fix: pick one of these.\n{overview()}"
    return 0, render(found)
