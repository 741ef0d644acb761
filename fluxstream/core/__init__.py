"""The floor every other package stands on: settings, logging, metrics, Kafka clients, retries, Redis packing.

Nothing here imports another fluxstream package (the import-linter contract in pyproject.toml says so).
"""
