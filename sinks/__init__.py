"""ClickHouse projections: backends, schema migrations, the batching Kafka sink, retention,
named analytics queries and the read-only query endpoint of a running sink."""
