"""Security events: the OWASP-named record of every decision, redacted, off the request path.

::

    make_event(name, ctx=...) -> SecurityEvent -> EventBus.emit -> redact -> sinks
                                                                  (JsonLinesSink, MemorySink...)
    RequestMetrics.observe / .denied -> render() -> Prometheus text
"""

from apiforge.events.metrics import RequestMetrics
from apiforge.events.model import EVENT_NAMES, Level, SecurityEvent, is_event_name, make_event
from apiforge.events.redaction import REDACTED, redact, redact_text
from apiforge.events.sinks import EventBus, EventSink, JsonLinesSink, MemorySink

__all__ = [
    "EVENT_NAMES",
    "REDACTED",
    "EventBus",
    "EventSink",
    "JsonLinesSink",
    "Level",
    "MemorySink",
    "RequestMetrics",
    "SecurityEvent",
    "is_event_name",
    "make_event",
    "redact",
    "redact_text",
]
