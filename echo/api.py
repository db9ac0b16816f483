"""The HTTP API for other services, under /api/: publish, history, presence (django-ninja).

Every endpoint takes an API key (echo.api_keys) as ``Authorization: Bearer KEY``; no session and no
CSRF token. Errors are JSON: ``{"error": "..."}``, with ``errors`` (each field and why) on a 400, and
``record`` (the broadcast kept in the history) on a 503.
"""

import logging
import re
from collections import Counter
from datetime import datetime
from typing import Annotated, Literal

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.db.models import Q
from ninja import Field, NinjaAPI, Query, Schema
from ninja.errors import AuthenticationError, AuthorizationError, HttpError, ValidationError
from ninja.security import HttpBearer
from pydantic import ConfigDict, WithJsonSchema, field_serializer

from echo import api_keys, protocol, services
from echo.channel_layer import REDIS_DOWN
from echo.models import ApiKey, Broadcast

logger = logging.getLogger(__name__)

HISTORY_LIMIT = 100
HISTORY_MAX_LIMIT = 1000
GROUP_PATTERN = rf"^{services.GROUP_NAME.pattern}$"
# A text must have a character other than whitespace (Python's \s: the same test as str.strip()),
# and no NUL (which the database cannot store): what the schema says, services check.
NON_BLANK = re.compile(r"\S")
TEXT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"
# A group name: its pattern in the schema, checked by services (whose message says what a name may be).
GroupName = Annotated[str, WithJsonSchema({"type": "string", "pattern": GROUP_PATTERN})]


class BadInput(Exception):
    """A request the API refuses with 400: which fields, and why."""

    def __init__(self, field: str, reason: str, *more: tuple[str, str]) -> None:
        self.problems = [(field, reason), *more]
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in self.problems))


class ApiKeyAuth(HttpBearer):
    """``Authorization: Bearer KEY``: the request acts as that key (``request.auth``)."""

    def __call__(self, request) -> ApiKey:
        # Not HttpBearer's own: with DEBUG it logs a header it does not understand, key and all.
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if not header:
            raise AuthenticationError(message="no API key: send it as the header 'Authorization: Bearer KEY'")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthenticationError(message="expected the header 'Authorization: Bearer KEY'")
        return self.authenticate(request, key.strip())

    def authenticate(self, request, token: str) -> ApiKey:
        try:
            return api_keys.verify(token)
        except api_keys.KeyRefused as error:
            logger.info("api %s %s refused: %s", request.method, request.path, error)
            raise AuthenticationError(message=str(error)) from None


api = NinjaAPI(
    title="Echo HTTP API",
    version="1",
    description=(
        "Publish to every WebSocket client, a group or a user; read the history of pushes; count who is "
        "online. Authenticate with an API key from the admin: `Authorization: Bearer KEY`."
    ),
    auth=ApiKeyAuth(),
    urls_namespace="api",
)


# --- Schemas ----------------------------------------------------------------------------


class FieldError(Schema):
    field: str = Field(description="the field at fault: text, group, user, after, limit, body")
    reason: str


class BadRequest(Schema):
    error: str
    errors: list[FieldError]


class Refused(Schema):
    error: str


class Unavailable(Schema):
    error: str
    record: int | None = Field(description="the broadcast kept in the history (marked not sent)")
    id: int | None = Field(description="its position, if Redis took it but no replica confirmed it")


def absent(description: str):
    """An optional field that may be left out but not null: its schema has no null and no default."""
    return Field(None, description=description, json_schema_extra=lambda schema: schema.pop("default", None))


class PublishIn(Schema):
    # A group or a user, not both.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"not": {"required": ["group", "user"]}})

    text: str = Field(
        description="what clients get: not blank, no NUL, its frame at most WEBSOCKET_MAX_MESSAGE_SIZE",
        json_schema_extra={"pattern": TEXT_PATTERN},
    )
    group: GroupName = absent("a group's name (default: all, every connection)")
    user: str = absent("a username: every connection of that user")


class Stamped(Schema):
    """A push's ``sent_at`` as its WebSocket envelope has it: isoformat, to the microsecond."""

    sent_at: datetime = Field(json_schema_extra={"format": "date-time"})

    @field_serializer("sent_at")
    def envelope_time(self, sent_at: datetime) -> str:
        return sent_at.isoformat()


class Published(Stamped):
    id: int | None = Field(description="its position in the push log: the id clients see")
    record: int = Field(description="the Broadcast record in the history")
    group: str = Field(description="where it went: a group, or 'user:<id>' for a user")


class HistoryQuery(Schema):
    after: int = Field(0, ge=0, le=services.MAX_BROADCAST_ID, description="the last id you have")
    limit: int = Field(HISTORY_LIMIT, ge=1, le=HISTORY_MAX_LIMIT, description="items on a page")
    group: GroupName = absent("only this group's pushes")
    user: str = absent("only pushes to this user (with group: either)")


class PresenceQuery(Schema):
    group: GroupName = absent("count only this group")


class Push(Stamped):
    id: int = Field(description="its position in the push log")
    kind: Literal["broadcast", "message"]
    text: str
    group: str
    sender: str = Field(description="a username, 'server', 'api:<key name>' or 'guest-<connection>'")


class HistoryPage(Schema):
    items: list[Push]
    next: int | None = Field(description="pass it as 'after' for the next page; null when there is none")


class Presence(Schema):
    online: int = Field(description="live connections (in the group, if one was given)")
    groups: dict[str, int] = Field(description="live connections per group")
    users: int = Field(description="distinct signed-in users among them")


ERRORS = {400: BadRequest, 401: Refused, 503: Unavailable}


# --- Endpoints --------------------------------------------------------------------------


@api.post("/publish", response={201: Published, 403: Refused, **ERRORS}, summary="Publish a push")
def publish(request, payload: PublishIn):
    """Push ``text`` to every connection (no group and no user), to a group, or to one user."""
    key: ApiKey = request.auth
    if key.permission != ApiKey.PUBLISH:
        logger.info("api publish refused: key %s (%s...) may only read", key.name, key.prefix)
        raise AuthorizationError(message=f"the API key {key.name!r} may only read: it cannot publish")
    if not NON_BLANK.search(payload.text):
        raise BadInput("text", "the text is empty: give the message to send")
    if payload.group is not None and payload.user is not None:
        raise BadInput("user", "give a group or a user, not both")
    group = services.ALL_GROUP if payload.group is None else checked_group(payload.group)
    user = None if payload.user is None else found_user(payload.user)
    try:
        sent = services.broadcast_send(
            text=payload.text, group=group, user=user, sender_label=f"api:{key.name}"
        )
    except services.InvalidBroadcast as error:
        raise BadInput("text", str(error)) from None
    except services.BroadcastNotSent as error:
        record = error.broadcast
        logger.warning("api publish by key %s (%s...) not sent: %s", key.name, key.prefix, error)
        if record.position is None:
            down = isinstance(error.__cause__, (*REDIS_DOWN, TimeoutError))
            state = "Redis is unreachable" if down else "Redis refused it"
            message = f"not sent: {state}; the broadcast is kept as record {record.pk}, marked not sent"
        else:
            message = f"broadcast #{record.position} is sent, but no Redis replica confirmed it"
        return 503, {"error": message, "record": record.pk, "id": record.position}
    logger.info(
        "api publish by key %s (%s...): broadcast=%s group=%s",
        key.name,
        key.prefix,
        sent.position,
        sent.group,
    )
    return 201, {"id": sent.position, "record": sent.pk, "group": sent.group, "sent_at": sent.sent_at}


@api.get("/history", response={200: HistoryPage, **ERRORS}, summary="Pushes after a position")
def history(request, filters: Query[HistoryQuery]):
    """The recorded pushes after position ``after``, oldest first, a page at a time."""
    known_parameters(request, HistoryQuery)
    after, limit, group, user = filters.after, filters.limit, filters.group, filters.user
    rows = Broadcast.objects.filter(position__gt=after).select_related("sender").order_by("position")
    where = Q()
    if group is not None:
        where |= Q(group=checked_group(group))
    if user is not None:
        where |= Q(group=services.user_group(found_user(user)))
    rows = list(rows.filter(where)[: limit + 1])
    more = len(rows) > limit
    items = [
        {
            "id": row.position,
            "kind": row.kind,
            "text": row.text,
            "group": row.group,
            "sender": row.sender_name,
            "sent_at": row.sent_at,
        }
        for row in rows[:limit]
    ]
    return {"items": items, "next": items[-1]["id"] if more else None}


@api.get("/presence", response={200: Presence, **ERRORS}, summary="Who is online")
def presence(request, filters: Query[PresenceQuery]):
    """Live connections of every process (as the admin lists them), in all or in one group."""
    known_parameters(request, PresenceQuery)
    group = None if filters.group is None else checked_group(filters.group)
    rows = services.live_connections(group=group or services.ALL_GROUP).values_list("groups", "user_id")
    per_group: Counter[str] = Counter()
    users: set[int] = set()
    for groups, user_id in rows:
        per_group.update(groups.split(",") if groups else ())
        if user_id is not None:
            users.add(user_id)
    online = len(rows)
    # Every connection is in "all"; with a group, only its count.
    counts = {group: online} if group is not None else dict(per_group)
    return {"online": online, "groups": counts, "users": len(users)}


def known_parameters(request, query: type[Schema]) -> None:
    """Refuse query parameters the endpoint does not know (a typo would otherwise go unnoticed)."""
    unknown = sorted(set(request.GET) - set(query.model_fields))
    if unknown:
        reason = f"unknown parameter: expected {', '.join(query.model_fields)}"
        first, *more = [(name[: protocol.SHOWN_CHARS], reason) for name in unknown]
        raise BadInput(*first, *more)


def checked_group(name: str) -> str:
    try:
        return services.validate_group_name(name)
    except services.InvalidGroupName as error:
        raise BadInput("group", str(error)) from None


def found_user(name: str):
    if "\x00" in name:  # no username has one (and PostgreSQL refuses to look one up)
        raise BadInput("user", f"no user named {protocol.shown(name)}")
    try:
        return services.find_user(name)
    except services.InvalidBroadcast as error:
        raise BadInput("user", str(error)) from None


# --- Errors: JSON, in one shape ---------------------------------------------------------


@api.exception_handler(BadInput)
def bad_input(request, error: BadInput):
    return bad_request(request, error.problems)


@api.exception_handler(ValidationError)
def invalid(request, error: ValidationError):
    """Ninja's own 422 (a missing field, a wrong type, JSON that does not parse) as a 400."""
    return bad_request(request, [(field_of(item), reason_of(item)) for item in error.errors])


@api.exception_handler(RequestDataTooBig)
def too_big(request, error: RequestDataTooBig):
    return bad_request(request, [("body", "the request body is too large")])


@api.exception_handler(HttpError)
def refused(request, error: HttpError):
    if error.status_code == 400:  # ninja's: a body that is not JSON
        return bad_request(request, [("body", f"{error.message}: expected a JSON object")])
    return api.create_response(request, {"error": error.message}, status=error.status_code)


@api.exception_handler(DatabaseError)
def database_down(request, error: DatabaseError):
    logger.warning("api %s %s: database error: %s", request.method, request.path, error)
    body = {"error": "the database is unavailable just now; try again", "record": None, "id": None}
    return api.create_response(request, body, status=503)


def bad_request(request, problems: list[tuple[str, str]]):
    errors = [{"field": field, "reason": reason} for field, reason in problems]
    message = "; ".join(f"{field}: {reason}" for field, reason in problems)
    return api.create_response(request, {"error": message, "errors": errors}, status=400)


def field_of(item: dict) -> str:
    """The field an error is about: ninja's location ("body", "payload", "text") less where it was
    ("body" and the body's parameter name, or "query")."""
    loc = [str(part) for part in item.get("loc", ())]
    if loc[:1] == ["body"]:
        loc = loc[2:]
    elif loc[:1] == ["query"]:
        loc = loc[1:]
    return ".".join(loc) or "body"


def reason_of(item: dict) -> str:
    return str(item.get("msg", "invalid")).removeprefix("Value error, ")
