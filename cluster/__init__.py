"""Ray/MLflow cluster glue: local head and tracking-server scripts (see cluster/local.py)."""
