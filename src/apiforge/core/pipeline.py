"""The pipeline: the one pure ASGI middleware that runs every layer in a fixed order.

Order, for each HTTP request (each step fail-closed: an exception denies)::

    shield        everything below runs inside it: an ApiError becomes its problem response,
                  any other exception a generic 500 problem (detail to the internal log only)
    request id    keep a well-formed X-Request-ID, else generate one; echoed on every response
    client        address and scheme, across trusted proxies only
    early hooks   layers that run before routing, for every request (host, header limits, ...)
    routing       safe path checks, then the declared route's plan (404 / 405 otherwise)
    route hooks   the plan's own hooks, in layer order (authentication, limits, authorization)
    app           with ``receive`` wrapped only if the plan has body hooks
    response      request id and the plan's response-start hooks; an error answer of the app
                  that is not problem+json is replaced by one

Per-route plans are built once at start-up, so a route pays only for its own checks.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol

from apiforge.core.body import declared_length, drain, read_body, replay, stream_limit
from apiforge.core.client import ClientResolver, normalize_address
from apiforge.core.context import SCOPE_KEY, RequestContext
from apiforge.core.deadlines import DeadlineWatch, Watched
from apiforge.core.problem import PROBLEM_CONTENT_TYPE, send_problem
from apiforge.core.request_id import RequestIds
from apiforge.core.routing import Respond, RoutePlan, RouteTable
from apiforge.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    GatewayTimeout,
    HeadersTooLarge,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from apiforge.events import EventBus, JsonLinesSink, Level, RequestMetrics, make_event

if TYPE_CHECKING:
    from apiforge.policy.models import EventsSettings, Policy

__all__ = ["ASGIApp", "Layer", "Pipeline", "event_bus"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RequestHook = Callable[[RequestContext, Scope], Awaitable[None] | None]
ResponseHook = Callable[[RequestContext, int, list[tuple[bytes, bytes]]], None]

logger = logging.getLogger("apiforge")

# In report-only mode bodies over the limit pass, but are still never buffered without bound.
_REPORT_CEILING = 64 * 1024 * 1024
# A response checked before it leaves is held whole; larger ones are refused, not streamed.
_MAX_TRANSFORMED = 16 * 1024 * 1024
# Headers of an app's error answer that are safe and useful to carry into our problem body.
_KEPT_ERROR_HEADERS = frozenset({b"allow", b"retry-after", b"www-authenticate"})
_ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 408: RequestTimeout,
    413: PayloadTooLarge, 415: UnsupportedMediaType, 422: ValidationFailed,
    429: TooManyRequests, 503: ServiceUnavailable,
}


class Layer(Protocol):
    """A defense layer: a frozen config and the hooks it needs.

    Hooks:
        ``early_hook()``: ``hook(ctx, scope)`` for every request, before routing
            (``ctx.route`` is ``None``). Raise an ``ApiError`` to refuse, or ``Respond`` to
            answer (a CORS preflight); return ``None`` or an awaitable.
        ``response_hook()``: ``hook(ctx, status, headers)`` for every response, ours and the
            app's, errors included: append to ``headers`` (a list of byte pairs).
        ``attach(plan)``: add the layer's hooks for one route to its plan
            (``plan.request_hooks``, ``plan.receive_wrappers``, ``plan.response_start_hooks``),
            or nothing when the layer does not apply to that route.
    Any of them may return ``None`` / do nothing.
    """

    name: str

    def early_hook(self) -> RequestHook | None: ...

    def response_hook(self) -> ResponseHook | None: ...

    def attach(self, plan: RoutePlan) -> None: ...


def event_bus(settings: EventsSettings) -> EventBus:
    """The event bus a policy's ``events`` section describes, started."""
    bus = EventBus([JsonLinesSink()] if settings.sink == "stdout" else [],
                   queue_size=settings.queue_size)
    bus.start()
    return bus


class Pipeline:
    """Wraps an ASGI app in APIForge's layers, as configured by a policy.

    Args:
        app: the protected ASGI app (library mode) or the proxy to the upstream (gateway).
        policy: the loaded policy.
        layers: the layers in pipeline order; their hooks are compiled into per-route plans.
        events: where security events go; by default built from ``policy.events``.
    """

    def __init__(
        self,
        app: ASGIApp,
        policy: Policy,
        *,
        layers: Sequence[Layer] = (),
        events: EventBus | None = None,
    ) -> None:
        self.app = app
        self.policy = policy
        self.routes = RouteTable(policy.routes, policy.trailing_slash)
        self.clients = ClientResolver(policy.trusted_proxies)
        self.owns_events = events is None
        """Close the event bus when the server shuts down (it was made for this pipeline)."""
        if events is None:
            events = event_bus(policy.events)
        self.events = events
        self.metrics = RequestMetrics(dropped=lambda: events.dropped)
        self._type_base = policy.problem_type_base
        self._ids = RequestIds()
        self._deadlines = DeadlineWatch()
        limits = policy.limits
        self._max_header = int(limits.max_header)
        self._max_headers_total = int(limits.max_headers_total)
        # Headers that together fit in this many bytes are within both limits.
        self._headers_fit = min(self._max_header, self._max_headers_total)
        self._report_headers = limits.mode == "report"
        self.layers = tuple(layers)
        self._early: tuple[RequestHook, ...] = tuple(
            hook for hook in (layer.early_hook() for layer in self.layers) if hook is not None
        )
        self._response_hooks: tuple[ResponseHook, ...] = tuple(
            hook for hook in (layer.response_hook() for layer in self.layers) if hook is not None
        )
        from apiforge.policy.models import route_limits, route_timeouts

        for plan in self.routes.plans:
            route_limit = route_limits(policy, plan.settings)
            route_timeout = route_timeouts(policy, plan.settings)
            plan.body_limit = int(route_limit.max_body)
            plan.report_only = route_limit.mode == "report"
            plan.deadline = route_timeout.request
            plan.body_idle = route_timeout.body_idle
            for layer in self.layers:
                layer.attach(plan)
            plan.response_start_hooks = (*self._response_hooks, *plan.response_start_hooks)
            plan.status_counts = self.metrics.route_counts(plan.key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket":  # no declared websocket routes: refuse the handshake
                await receive()
                await send({"type": "websocket.close", "code": 1008})
                return
            if kind == "lifespan":
                await self.app(scope, receive, self._lifespan_send(send))
                return
            await self.app(scope, receive, send)
            return

        raw_headers = scope["headers"]
        headers = dict(raw_headers)
        request_id = self._ids.for_request(headers)
        peer = scope.get("client")
        host = peer[0] if peer else "unknown"
        if ":" in host:
            host = normalize_address(host)
        scheme = scope["scheme"]
        if self.clients.enabled:
            host, scheme = self.clients.resolve(host, scheme, headers)
        ctx = RequestContext(request_id, host, scheme, scope["method"], scope["path"], headers)
        scope[SCOPE_KEY] = ctx
        head = ctx.method == "HEAD"

        try:
            if len(headers) != len(raw_headers):
                _check_repeated_headers(raw_headers)
            size = 0
            for name, value in raw_headers:
                size += len(name) + len(value)
            if size > self._headers_fit:  # usually all headers together fit in one's limit
                self._check_header_sizes(ctx, raw_headers)
            for hook in self._early:
                pending = hook(ctx, scope)
                if pending is not None:
                    await pending
            match = self.routes.match(ctx.method, ctx.path, scope.get("raw_path"))
            plan = ctx.route = match.plan
            ctx.path_params = match.params
            for hook in plan.request_hooks:
                pending = hook(ctx, scope)
                if pending is not None:
                    await pending
        except ApiError as error:
            self._denied(ctx, error)
            await self._send_problem(send, error, ctx, head)
            return
        except Respond as answer:
            await self._send_answer(send, answer, ctx, head)
            return
        except Exception:
            logger.exception("security layer failed; request denied",
                             extra={"request_id": request_id})
            crash = InternalError(reason="layer_exception")
            self._denied(ctx, crash)
            await self._send_problem(send, crash, ctx, head)
            return

        response = _Response(plan.deadline, plan.body_idle)
        self._deadlines.add(response)
        in_app = False
        try:
            if plan.read_body or b"content-length" in headers or b"transfer-encoding" in headers:
                receive = await self._prepare_body(ctx, plan, receive, response)
            for wrap in plan.receive_wrappers:
                receive = wrap(ctx, receive)
            in_app = True
            await self.app(scope, receive, self._sender(send, ctx, plan, head, response))
        except asyncio.CancelledError:
            if response.expired is None:
                raise  # the server is cancelling us: not ours to swallow
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            late = _late(response)
            self._denied(ctx, late)
            if not response.started:
                await self._send_problem(send, late, ctx, head)
            # Otherwise the response is cut short: returning without completing it makes the
            # server abort the connection, so the client cannot mistake it for a whole answer.
        except ApiError as error:  # from a body check, or an app written against our errors
            if response.started:
                logger.error("app raised %s after starting its response", error.code,
                             extra={"request_id": request_id})
            else:
                self._denied(ctx, error)
                await self._send_problem(send, error, ctx, head)
        except Exception:
            if not in_app:
                logger.exception("request body handling failed; request denied",
                                 extra={"request_id": request_id})
                failed: ApiError = InternalError(reason="body_layer_exception")
                self._denied(ctx, failed)
            elif response.refusal is not None:  # our own refusal, raised through the app
                failed = response.refusal
                self._denied(ctx, failed)
            else:
                logger.exception("unhandled exception in the app",
                                 extra={"request_id": request_id})
                self.events.emit(make_event("sys_crash", ctx=ctx, level="CRITICAL",
                                            outcome="error", reason="app_exception"))
                failed = InternalError()
            if not response.started:
                await self._send_problem(send, failed, ctx, head)
            # Once the response has started nothing honest can be sent: returning without
            # completing it makes the server abort the connection.
        finally:
            self._deadlines.release(response)

    def _lifespan_send(self, send: Send) -> Send:
        """Close the layers' connections and our own event writer when the server shuts down."""

        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return lifespan_send

    async def aclose(self) -> None:
        """Close what the layers hold open (store connections) and our own event writer."""
        for layer in self.layers:
            closer = getattr(layer, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:  # one layer failing to close must not keep others open
                    logger.exception("closing layer %s failed", layer.name)
        if self.owns_events:
            self.events.close()

    async def _prepare_body(
        self, ctx: RequestContext, plan: RoutePlan, receive: Receive, response: _Response
    ) -> Receive:
        """Read and check the body when the plan needs it; otherwise limit it as it streams."""
        headers = ctx.headers
        length = declared_length(headers)
        chunked = b"transfer-encoding" in headers
        if not plan.read_body and not chunked and not length:
            return receive  # no body: nothing to wrap (the common GET)
        limit = plan.body_limit
        if plan.report_only:
            if length is not None and length > limit:
                self._report(ctx, PayloadTooLarge(reason=f"body_over_{limit}"))
            limit = _REPORT_CEILING
        if length is not None and length > limit:
            if b"expect" not in headers:  # a client waiting for 100-continue sends nothing
                await drain(receive)
            raise PayloadTooLarge(reason=f"declared_over_{limit}")
        if not plan.read_body:
            response.reading_body()
            return stream_limit(receive, limit, response.refuse, response.reading_body,
                                response.body_done)
        response.reading_body()
        body = await read_body(receive, limit, response.reading_body, response.body_done)
        if plan.report_only and len(body) > plan.body_limit:
            self._report(ctx, PayloadTooLarge(reason=f"body_over_{plan.body_limit}"))
        for hook in plan.body_hooks:
            replaced = hook(ctx, body)
            if replaced is not None:
                body = replaced
        return replay(body, receive)

    def _sender(
        self, send: Send, ctx: RequestContext, plan: RoutePlan, head: bool, response: _Response
    ) -> Send:
        """The ``send`` the app gets: our headers on its answer, its errors made problems, and
        answers that a response check must see held back until their body is whole."""
        id_header = (b"x-request-id", ctx.request_id.encode("ascii"))
        response_hooks = plan.response_start_hooks
        transforms = plan.response_transforms
        observe = self.metrics.observe
        route_key = plan.key
        counts = plan.status_counts

        # A plain function that returns the awaitable to wait on, rather than a coroutine of its
        # own: the common message costs no extra coroutine and no extra frame on every resume.
        def send_wrapper(message: Message) -> Awaitable[None]:
            if response.held is not None:
                return self._release(send, ctx, head, transforms, response, message)
            if response.replaced is not None:
                # Swallow the app's own error body; ours goes out once its body is complete.
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    return self._send_problem(send, response.replaced, ctx, head, count=False)
                return _nothing()
            if message["type"] == "http.response.start":
                response.started = True
                status = message["status"]
                app_headers = message.get("headers") or []
                if response.refusal is not None:  # the app turned our refusal into its own 5xx
                    response.replaced = response.refusal
                    observe(route_key, response.refusal.status)
                    return _nothing()
                if response.expired is not None or monotonic() >= response.deadline:
                    # Work that shields itself from cancellation (a thread) finished late:
                    # its answer is past the deadline and is not sent.
                    response.expired = response.expired or "deadline"
                    late = _late(response)
                    self._denied(ctx, late)
                    response.replaced = late
                    observe(route_key, late.status)
                    return _nothing()
                if status >= 400 and not _is_problem(app_headers):
                    response.replaced = _error_for(status, app_headers)
                    observe(route_key, response.replaced.status)
                    return _nothing()
                try:
                    counts[status] += 1
                except KeyError:
                    counts[status] = 1
                out = [*app_headers, id_header]
                for hook in response_hooks:
                    hook(ctx, status, out)
                message["headers"] = out
                if transforms and 200 <= status < 300:
                    response.held = message
                    response.started = False  # nothing is sent until the body is checked
                    return _nothing()
            return send(message)

        return send_wrapper

    async def _release(
        self, send: Send, ctx: RequestContext, head: bool,
        transforms: Sequence[Callable[..., bytes]], response: _Response, message: Message,
    ) -> None:
        """Collect a held answer's body; once whole, transform it and send it."""
        if message["type"] != "http.response.body":
            return
        body = message.get("body", b"")
        more = message.get("more_body", False)
        held = response.held_body
        if held or more:  # a body in several messages: gather them
            held.append(body)
            size = sum(map(len, held))
        else:
            size = len(body)
        if size > _MAX_TRANSFORMED:
            # Fail closed: an answer too large to check is not sent unchecked.
            response.held = None
            response.replaced = InternalError(reason="response_too_large_to_check")
            self._denied(ctx, response.replaced)
            if not more:
                await self._send_problem(send, response.replaced, ctx, head, count=False)
            return
        if more:
            return
        if held:
            body = b"".join(held)
        start = response.held
        response.held = None
        if start is None:  # _release() runs only while an answer is held
            return
        original = body
        try:
            for transform in transforms:
                body = transform(ctx, start["status"], body)
        except ApiError as error:
            failed: ApiError = error
        except Exception:
            logger.exception("response check failed; answer withheld",
                             extra={"request_id": ctx.request_id})
            failed = InternalError(reason="response_check_exception")
        else:
            if body is not original:
                start["headers"] = [
                    (name, str(len(body)).encode("ascii") if name == b"content-length"
                     else value)
                    for name, value in start["headers"]
                ]
            response.started = True
            await send(start)
            message["body"] = b"" if head else body
            await send(message)
            return
        response.replaced = failed  # the app's answer is dropped, ours goes out
        self._denied(ctx, failed)
        await self._send_problem(send, failed, ctx, head, count=False)

    def _check_header_sizes(
        self, ctx: RequestContext, raw_headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        largest = 0
        total = 0
        for name, value in raw_headers:
            size = len(name) + len(value)
            total += size
            if size > largest:
                largest = size
        if largest > self._max_header or total > self._max_headers_total:
            error = HeadersTooLarge(reason="header_too_large" if largest > self._max_header
                                    else "headers_too_large")
            if not self._report_headers:
                raise error
            self._report(ctx, error)

    async def _send_answer(
        self, send: Send, answer: Respond, ctx: RequestContext, head: bool
    ) -> None:
        self.metrics.observe(ctx.route.key if ctx.route else "unmatched", answer.status)
        out = [*answer.headers, (b"content-length", str(len(answer.body)).encode()),
               (b"x-request-id", ctx.request_id.encode("ascii"))]
        for hook in self._hooks_for(ctx):
            hook(ctx, answer.status, out)
        await send({"type": "http.response.start", "status": answer.status, "headers": out})
        await send({"type": "http.response.body", "body": b"" if head else answer.body})

    async def _send_problem(
        self, send: Send, error: ApiError, ctx: RequestContext, head: bool, *, count: bool = True
    ) -> None:
        if count:
            self.metrics.observe(ctx.route.key if ctx.route else "unmatched", error.status)
        extra: list[tuple[bytes, bytes]] = []
        for hook in self._hooks_for(ctx):
            hook(ctx, error.status, extra)
        await send_problem(send, error, ctx.request_id, type_base=self._type_base,
                           extra_headers=extra, head=head)

    def _hooks_for(self, ctx: RequestContext) -> tuple[ResponseHook, ...]:
        return ctx.route.response_start_hooks if ctx.route is not None else self._response_hooks

    def _denied(self, ctx: RequestContext, error: ApiError) -> None:
        name = error.event
        if name is None:
            return  # the refusing layer emitted a better-named event of its own
        self.metrics.denied(name)
        level: Level = "CRITICAL" if error.status >= 500 else "WARN"
        self.events.emit(make_event(name, ctx=ctx, level=level,
                                    reason=error.reason or error.code, status=error.status))

    def _report(self, ctx: RequestContext, error: ApiError) -> None:
        """Report-only mode: emit what a refusal would have emitted, and let it through."""
        if error.event is not None:
            self.events.emit(make_event(error.event, ctx=ctx, outcome="report",
                                        reason=error.reason or error.code, status=error.status))


async def _nothing() -> None:
    """What a swallowed or held message waits on: nothing (a coroutine, as ``send`` gives)."""


def _late(watched: Watched) -> ApiError:
    late: ApiError = RequestTimeout() if watched.expired == "idle" else GatewayTimeout()
    late.reason = f"{watched.expired}_exceeded"
    return late


class _Response(Watched):
    """What the pipeline knows about the response of one request, and its deadlines."""

    __slots__ = ("held", "held_body", "refusal", "replaced", "started")

    def __init__(self, seconds: float, idle: float) -> None:
        # Watched's fields set here, not by its __init__: one call less on every request.
        self.deadline = monotonic() + seconds
        self.idle = idle
        self.idle_deadline = math.inf
        self.expired = None
        self.task = None
        self.started = False
        self.replaced: ApiError | None = None
        self.refusal: ApiError | None = None
        self.held: Message | None = None
        """The start of a 2xx answer kept back until its body is transformed."""
        self.held_body: list[bytes] = []

    def refuse(self, error: ApiError) -> None:
        self.refusal = error


# Headers whose repetition lets two components read two different values.
_SINGLE_HEADERS = frozenset({
    b"host", b"content-length", b"content-type", b"authorization", b"x-api-key",
    b"x-request-id", b"transfer-encoding", b"forwarded", b"x-forwarded-proto", b"origin",
})


def _check_repeated_headers(raw_headers: Sequence[tuple[bytes, bytes]]) -> None:
    seen: set[bytes] = set()
    for name, _ in raw_headers:
        if name in seen and name in _SINGLE_HEADERS:
            raise BadRequest("repeated_header", "A header that must appear once is repeated.",
                             reason=f"repeated:{name.decode('latin-1')}")
        seen.add(name)


def _is_problem(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.startswith(PROBLEM_CONTENT_TYPE)
    return False


def _error_for(status: int, app_headers: Sequence[tuple[bytes, bytes]]) -> ApiError:
    """Our problem for an app's non-problem error answer; only safe headers carry over."""
    kept = [
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in app_headers
        if name.lower() in _KEPT_ERROR_HEADERS
    ]
    if status == 405:
        allow = next((v for n, v in kept if n == "allow"), "")
        methods = [m.strip() for m in allow.split(",") if m.strip()]
        return MethodNotAllowed(methods, reason="app_status_405")
    if status >= 500:
        error: ApiError = InternalError(reason=f"app_status_{status}")
        if status == 503:
            error = ServiceUnavailable(reason="app_status_503", headers=kept)
        return error
    cls = _ERRORS_BY_STATUS.get(status)
    if cls is ValidationFailed:
        return ValidationFailed((), headers=kept, reason="app_status_422")
    if cls is None:
        # A generic client error: the status is the app's, the text ours.
        error = BadRequest("client_error", "The request was refused.", headers=kept,
                           reason=f"app_status_{status}")
        error.status = status
        return error
    return cls(headers=kept, reason=f"app_status_{status}")
