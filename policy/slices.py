"""Placeholder until the cgroup module lands (being written now)."""


def cgroup_parent(driver: str, user: str, group: str) -> str:
    if driver == "systemd":
        return f"ds01-{group}-{user}.slice"
    return f"/ds01/{user}"
