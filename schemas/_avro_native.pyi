# Types of the compiled codec (_avro_native.c); schemas/native_codec.py is its only user.
from typing import Any

from inboxstream.errors import InboxstreamError

class Fallback(InboxstreamError): ...  # noqa: N818 - a signal to the caller, not an error

class Codec:
    def __init__(self, plan: Any, fields: tuple[str, ...] | None = None) -> None: ...
    def encode(self, record: Any, prefix: bytes = ...) -> bytes: ...
    def decode(self, data: bytes, start: int = 0) -> Any: ...

K_NULL: int
K_BOOL: int
K_LONG: int
K_STRING: int
K_BYTES: int
K_TS_MILLIS: int
K_ARRAY: int
K_RECORD: int
K_NULLABLE: int
