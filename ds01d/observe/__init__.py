"""What the daemon tells operators: Prometheus metrics, the audit log, the decision recorder."""
