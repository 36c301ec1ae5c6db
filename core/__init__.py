"""The shared ground: settings, contracts (retention, sizes, topic registry), local paths and
Kafka wiring. Imports only the schemas and the root error."""
