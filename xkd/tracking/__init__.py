"""MLflow runs, data lineage, the model registry and plots."""
