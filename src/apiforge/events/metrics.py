"""Request and security-event counters, exported in the Prometheus text format.

Allowed requests are counted, not logged one by one. Counting is a plain dict increment on the
request path; the Prometheus objects are built only when ``/metrics`` is scraped, by a custom
collector over a private registry, so nothing here touches the process-wide default registry.

Exported:

* ``apiforge_requests_total{route, status}``: every answered request, by route template;
* ``apiforge_security_events_total{event}``: every denial or detection, by OWASP event name;
* ``apiforge_events_dropped_total``: events lost because the event queue was full (only when a
  ``dropped`` callback is given).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, Metric

__all__ = ["OVERFLOW_LABEL", "RequestMetrics"]

OVERFLOW_LABEL = "__other__"
"""The route or event label that counts everything beyond ``max_series`` distinct values."""


class _Collector:
    """Turns the counters into metric families at scrape time."""

    def __init__(self, metrics: RequestMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        # dict.copy() runs in C without releasing the GIL: a consistent snapshot even while the
        # event loop keeps counting in another thread.
        answered = m._requests.copy()
        for route, counts in m._routes.copy().items():
            for status, count in counts.copy().items():
                answered[route, status] = answered.get((route, status), 0) + count
        events = m._events.copy()
        family = CounterMetricFamily(
            "apiforge_requests",
            "Requests answered, by route and status.",
            labels=("route", "status"),
        )
        for (route, status), count in sorted(answered.items()):
            family.add_metric((route, str(status)), count)
        yield family
        family = CounterMetricFamily(
            "apiforge_security_events",
            "Security events (denials, detections), by name.",
            labels=("event",),
        )
        for name, count in sorted(events.items()):
            family.add_metric((name,), count)
        yield family
        if m._dropped is not None:
            yield CounterMetricFamily(
                "apiforge_events_dropped",
                "Security events lost because the event queue was full.",
                value=m._dropped(),
            )


class RequestMetrics:
    """Counters of answered requests and security events.

    Both counting methods are meant to be called from one thread (the event loop); they take no
    lock, so concurrent calls from several threads may lose an increment.

    Args:
        dropped: returns the event bus's dropped count (e.g. ``lambda: bus.dropped``); when
            given, ``apiforge_events_dropped_total`` is exported.
        max_series: most distinct routes (and event names) kept; more are counted under
            :data:`OVERFLOW_LABEL`, so unexpected labels can't grow memory or the scrape
            without bound.

    Raises:
        ValueError: if ``max_series`` is below 1.
    """

    content_type = CONTENT_TYPE_PLAIN_0_0_4
    """The ``Content-Type`` of :meth:`render`'s output."""

    def __init__(
        self, *, dropped: Callable[[], int] | None = None, max_series: int = 10_000
    ) -> None:
        if max_series < 1:
            raise ValueError(f"max_series must be at least 1, got {max_series}")
        self._requests: dict[tuple[str, int], int] = {}
        self._routes: dict[str, dict[int, int]] = {}
        """Counts by status of the declared routes that count for themselves (route_counts)."""
        self._events: dict[str, int] = {}
        self._dropped = dropped
        self._max_series = max_series
        self._collector = _Collector(self)
        self._registry = CollectorRegistry()
        self._registry.register(self._collector)

    def observe(self, route: str, status: int) -> None:
        """Count one answered request.

        Args:
            route: the route's key (method and template), never the raw path.
            status: the response status code.
        """
        key = (route, status)
        try:
            self._requests[key] += 1
        except KeyError:
            self._add_request(key)

    def route_counts(self, route: str) -> dict[int, int]:
        """The counts of one declared route by status, for the request path to add to itself.

        ``counts[status] += 1`` on the dict returned is :meth:`observe` without a call or a
        tuple per request. Statuses are three-digit numbers and routes are declared, so these
        dicts stay small.
        """
        return self._routes.setdefault(route, {})

    def _add_request(self, key: tuple[str, int]) -> None:
        if len(self._requests) >= self._max_series:
            key = (OVERFLOW_LABEL, key[1])
        self._requests[key] = self._requests.get(key, 0) + 1

    def denied(self, event_name: str) -> None:
        """Count one security event (a denial or a detection).

        Args:
            event_name: the event's OWASP Logging Vocabulary name.
        """
        events = self._events
        try:
            events[event_name] += 1
        except KeyError:
            if len(events) >= self._max_series:
                event_name = OVERFLOW_LABEL
            events[event_name] = events.get(event_name, 0) + 1

    def request_count(self, route: str, status: int) -> int:
        """How many requests to ``route`` were answered with ``status``."""
        return self._requests.get((route, status), 0) + self._routes.get(route, {}).get(status, 0)

    def event_count(self, event_name: str) -> int:
        """How many events named ``event_name`` were counted."""
        return self._events.get(event_name, 0)

    def collector(self) -> _Collector:
        """The Prometheus collector, to register in another registry (e.g. the default one)."""
        return self._collector

    def render(self) -> bytes:
        """The counters in the Prometheus text exposition format (see :attr:`content_type`)."""
        return generate_latest(self._registry)
