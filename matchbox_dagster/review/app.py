"""The review web app (Starlette): routes, sessions, and cross-site request protection.

Every POST carries the session's CSRF token (a hidden field; the session is an HttpOnly,
SameSite=Strict cookie) and must come from this app's own origin (``Origin``, else
``Referer``); every request's ``Host`` must be one the app serves (no DNS rebinding). A refused
request changes nothing and says why on the page.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlsplit

import polars as pl
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from matchbox_dagster.common.errors import MatchboxError
from matchbox_dagster.evaluation.sampling import EvalSample, Strategy
from matchbox_dagster.review import pages
from matchbox_dagster.review.figures import evaluation_html, figures
from matchbox_dagster.review.state import Review, ReviewConfig, ReviewError, Session

COOKIE = "matchbox_review"
MAX_FORM_BYTES = 1_000_000
"""Most bytes of a form read (a judgement of the largest sample is a few kilobytes)."""


def _host_ok(request: Request, review: Review) -> bool:
    host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
    return host in review.config.allowed_hosts


def _same_origin(request: Request) -> bool:
    """The POST comes from a page of this app (``Origin``, else ``Referer``, must match)."""
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == own
    referer = request.headers.get("referer")
    if referer:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}" == own
    return False


def _strategy(value: str | None, default: Strategy) -> Strategy:
    try:
        return Strategy(value) if value else default
    except ValueError:
        raise ReviewError(
            f"Unknown sampling strategy {value!r}; use one of "
            f"{', '.join(s.value for s in Strategy)}."
        ) from None


def create_app(config: ReviewConfig) -> Starlette:
    """The app for ``config`` (a reviewer on one store)."""
    review = Review(config)

    def respond(
        request: Request, body: Callable[[Session], Awaitable[Response]]
    ) -> Callable[[], Awaitable[Response]]:
        async def run() -> Response:
            token, session = review.session(request.cookies.get(COOKIE))
            if not _host_ok(request, review):
                response: Response = HTMLResponse("Unknown host.", status_code=400)
            else:
                try:
                    response = await body(session)
                except ReviewError as exc:
                    response = _error(session, str(exc), exc.status)
                except MatchboxError as exc:
                    response = _error(session, str(exc), 400)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response

        return run

    def _error(session: Session, message: str, status: int) -> HTMLResponse:
        body = '<p><a href="/">back to the collections</a></p>'
        return HTMLResponse(
            pages.page("Refused", body, user=config.user, message=message, error=True),
            status_code=status,
        )

    async def checked_form(request: Request, session: Session) -> dict[str, str]:
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind != "application/x-www-form-urlencoded":
            raise ReviewError("Refused a post that is not a form of this app.", 415)
        body = (await request.body())[:MAX_FORM_BYTES].decode("utf-8", "replace")
        form = dict(parse_qsl(body, keep_blank_values=True))
        if not _same_origin(request):
            raise ReviewError("Refused a request from another site; nothing was changed.", 403)
        if not hmac.compare_digest(form.get("csrf", ""), session.csrf):
            raise ReviewError(
                "The form's security token is missing or out of date (reload the page); "
                "nothing was changed.",
                403,
            )
        return form

    async def home(request: Request) -> Response:
        async def body(session: Session) -> Response:
            names = await run_in_threadpool(review.readable)
            if config.collection and names == [config.collection]:
                return RedirectResponse(f"/review/{config.collection}", status_code=303)
            return HTMLResponse(
                pages.page("Collections", pages.collections(names), user=config.user)
            )

        return await respond(request, body)()

    def records(collection: str, sample: EvalSample) -> pl.DataFrame:
        target = review.target(collection)
        frames = []
        for (source,), part in sample.records.group_by("source", maintain_order=True):
            fields = review.fields(target, str(source)).drop("id")
            frames.append(part.join(fields, on="key", how="left"))
        return pl.concat(frames, how="diagonal_relaxed").sort("source", "key")

    def review_page(
        session: Session, collection: str, strategy: Strategy, error: str | None = None
    ) -> str:
        target = review.target(collection)
        current = review.current(session, collection, strategy)
        shown = records(collection, current[1]) if current else pl.DataFrame()
        body = pages.review(
            collection,
            strategy,
            current,
            shown,
            review.progress(collection),
            session.csrf,
            target.path.name,
        )
        flash, session.flash = session.flash, None
        return pages.page(
            f"Review {collection}",
            body,
            user=config.user,
            message=error or flash,
            error=bool(error),
        )

    async def show(request: Request) -> Response:
        collection = request.path_params["collection"]

        async def body(session: Session) -> Response:
            strategy = _strategy(request.query_params.get("strategy"), config.strategy)
            html = await run_in_threadpool(review_page, session, collection, strategy)
            return HTMLResponse(html)

        return await respond(request, body)()

    def post(
        action: Callable[[Session, str, Strategy, dict[str, str]], str],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            collection = request.path_params["collection"]

            async def body(session: Session) -> Response:
                form = await checked_form(request, session)
                strategy = _strategy(form.get("strategy"), config.strategy)
                try:
                    message = await run_in_threadpool(action, session, collection, strategy, form)
                except ReviewError as exc:
                    if exc.status == 404:
                        raise
                    session.flash = None
                    html = await run_in_threadpool(
                        review_page, session, collection, strategy, str(exc)
                    )
                    return HTMLResponse(html, status_code=exc.status)
                session.flash = message
                url = f"/review/{collection}?strategy={strategy.value}"
                return RedirectResponse(url, status_code=303)

            return await respond(request, body)()

        return handler

    def judge(session: Session, collection: str, strategy: Strategy, form: dict[str, str]) -> str:
        groups: dict[int, str] = {}
        for name, value in form.items():
            if name.startswith("g-"):
                try:
                    groups[int(name[2:])] = str(int(value))
                except ValueError:
                    raise ReviewError(
                        f"Bad group field {name}={value!r}; nothing recorded."
                    ) from None
        judgement = review.judge(session, collection, strategy, form.get("sample", ""), groups)
        n = len(judgement.endorsed)
        verdict = "one entity" if n == 1 else f"{n} entities"
        return f"Recorded: {verdict} of {len(judgement.shown)} records."

    def skip(session: Session, collection: str, strategy: Strategy, form: dict[str, str]) -> str:
        review.target(collection)
        review.skip(session, collection, strategy, form.get("sample", ""))
        return "Skipped."

    def undo(session: Session, collection: str, strategy: Strategy, form: dict[str, str]) -> str:
        review.target(collection)
        deleted = review.undo(session)
        if deleted is None:
            raise ReviewError(
                "You have no judgement to undo in this session; nothing was changed.", 409
            )
        return "Undone: your last judgement was deleted; its sample is back."

    async def evaluation(request: Request) -> Response:
        collection = request.path_params["collection"]

        async def body(session: Session) -> Response:
            target = await run_in_threadpool(review.target, collection)
            found = await run_in_threadpool(figures, review.store, target)
            html = evaluation_html(found, target.path.name, collection)
            return HTMLResponse(pages.page(f"Evaluation of {collection}", html, user=config.user))

        return await respond(request, body)()

    routes = [
        Route("/", home),
        Route("/review/{collection}", show),
        Route("/review/{collection}/judge", post(judge), methods=["POST"]),
        Route("/review/{collection}/skip", post(skip), methods=["POST"]),
        Route("/review/{collection}/undo", post(undo), methods=["POST"]),
        Route("/evaluation/{collection}", evaluation),
    ]
    app = Starlette(routes=routes)
    app.state.review = review
    return app


__all__ = ["COOKIE", "create_app"]
