"""``ds01d``, the daemon: the composition root (``daemon.py``), the decider (``service.py``),
the DS01 side of both front doors, tickets, identities, the GPU broker, ``lifecycle/``,
``host/`` (cgroups, NVML, DCGM files) and ``observe/`` (metrics, audit).
"""
