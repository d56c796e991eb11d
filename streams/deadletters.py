"""Dead-letter routing: the original bytes plus headers naming where they came from and why.

Every record a worker cannot use goes through :func:`dead_letter_headers`, so operators see one
header layout whatever failed (parsing, validation, processing).
"""

from __future__ import annotations

from typing import Final

H_TOPIC: Final = "x-source-topic"
H_PARTITION: Final = "x-source-partition"
H_OFFSET: Final = "x-source-offset"
H_ERROR_CLASS: Final = "x-error-class"
H_ERROR: Final = "x-error-message"
MAX_ERROR_CHARS: Final = 1000


def dead_letter_headers(
    topic: str, partition: int, offset: int, error_class: str, message: str
) -> list[tuple[str, bytes]]:
    """Kafka headers for a dead letter.

    >>> dict(dead_letter_headers("events", 3, 42, "malformed_json", "bad"))["x-source-offset"]
    b'42'
    """
    return [
        (H_TOPIC, topic.encode()),
        (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()),
        (H_ERROR_CLASS, error_class.encode()),
        (H_ERROR, message[:MAX_ERROR_CHARS].encode("utf-8", "replace")),
    ]
