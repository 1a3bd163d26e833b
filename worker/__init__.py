"""The Kafka side: consume windows, validate, score in batches, publish events, commit."""

# Modules, in the order a record meets them: settings, consumer, messages, pipeline,
# publisher; metrics and health watch the loop; service wires them for `faultwatch run`.
