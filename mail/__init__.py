"""Mail formats (RFC 5322 header fields): pure parsing shared by every layer that reads mail."""
