"""The autoencoder and everything offline: reading recordings, training, scoring, artifacts.

Nothing here imports Kafka; `worker` imports this package, never the reverse.
"""
