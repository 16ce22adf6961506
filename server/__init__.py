"""The coordinator side of a federation: ServerApp, strategy, checkpoints, MLflow logging, hub."""
