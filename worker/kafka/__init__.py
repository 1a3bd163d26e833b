"""The Kafka client seam: the loop, the publisher, and one adapter per client library."""
