"""The AuthZ front door: dockerd's authorization-plugin protocol (requests, answers, the app).

It knows only the wire protocol; DS01's side is ``ds01d.service``.
"""
