"""DS01's policy engine: pure functions from (request, identity, limits, state) to a Decision.

Nothing in this package performs I/O; the daemon in ``ds01d`` feeds it.
"""
