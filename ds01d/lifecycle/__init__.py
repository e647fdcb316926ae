"""The lifecycle loop: samples containers and carries out ``policy.lifecycle``'s actions."""
