"""MQTT ingest: subscribe, decode with the device profile, validate, batch-write.

Bad payloads become dead letters with a reason; decoded readings are handed to
a sink (the shell connects it to the rule engine) after they are committed.
"""

from ingest.decode import DeadLetter, DeadLetterReason, DecodedMessage, MessageDecoder
from ingest.topics import Channel, Topic, TopicError, parse_topic

__all__ = [
    "Channel",
    "DeadLetter",
    "DeadLetterReason",
    "DecodedMessage",
    "MessageDecoder",
    "Topic",
    "TopicError",
    "parse_topic",
]
