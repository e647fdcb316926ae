"""The ``ds01`` command line: what users and admins type (the daemon lives elsewhere)."""
