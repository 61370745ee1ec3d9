"""Where scored records go besides Kafka."""
