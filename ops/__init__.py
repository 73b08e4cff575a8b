"""Operating the pipeline: the local Kafka broker, the process supervisor, the operator CLI."""
