"""The gateway front door: a Docker API socket framed as HTTP, identity from SO_PEERCRED.

It knows only HTTP framing and its ``Handler`` seam; DS01's side is ``ds01d.gateway_handler``.
"""
