"""Value formats shared by every layer: sizes and durations, the ``ds01.*`` label schema,
Docker timestamps. The bottom package: it imports nothing of DS01's.
"""
