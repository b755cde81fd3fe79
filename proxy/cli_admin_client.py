"""The admin CLI's connection: the command-line options every admin command shares, an SDK client whose
failures become one line and an exit code, and the "no such user" answer that names where the id does exist."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from proxy.cli_admin_output import EXIT_AUTH, EXIT_NOT_FOUND, EXIT_UNREACHABLE, fail

if TYPE_CHECKING:
    from rapport import Rapport
    from rapport.types import User

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TENANT = "default"
# Pages of the user list read when the CLI must look through all of it (`--search`, the tenant hint).
SCAN_PAGE = 1000
SCAN_MAX_USERS = 100_000

UrlOption = Annotated[
    str, typer.Option("--url", envvar="RAPPORT_URL", help="The Rapport server (its root or its /v1 base).")
]
AdminKeyOption = Annotated[
    str | None,
    typer.Option(
        "--admin-key",
        envvar="RAPPORT_ADMIN_KEY",
        show_default=False,
        help="The admin key; prefer the RAPPORT_ADMIN_KEY environment variable (a flag lands in shell history).",
    ),
]
TenantOption = Annotated[
    str, typer.Option("--tenant", "-t", envvar="RAPPORT_TENANT", help="The user's tenant (a user id is per tenant).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the admin API's JSON instead of a table.")]
LimitOption = Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="At most this many rows.")]
OffsetOption = Annotated[int, typer.Option("--offset", min=0, help="Skip this many rows (paging).")]
FullOption = Annotated[bool, typer.Option("--full", help="Show whole texts instead of one clipped line.")]
UserArg = Annotated[str, typer.Argument(help="The user id.", show_default=False)]

# -- the connection and its errors ---------------------------------------------------------------------------


@contextmanager
def admin(url: str, admin_key: str | None, tenant: str = DEFAULT_TENANT) -> Iterator[Rapport]:
    """An SDK client whose failures become one line and an exit code; a 404 is left to the command."""
    from rapport import NotFoundError, Rapport, RapportError

    client = Rapport(url, admin_key=admin_key, tenant=tenant, timeout=60.0)
    try:
        yield client
    except NotFoundError as exc:
        fail(exc.message, EXIT_NOT_FOUND)
    except RapportError as exc:
        _fail_request(exc, client.base_url, admin_key)
    finally:
        client.close()


def _fail_request(exc: Any, base_url: str, admin_key: str | None) -> NoReturn:
    if exc.status is None:
        fail(f"{exc.message} (is the server running? set --url or RAPPORT_URL)", EXIT_UNREACHABLE)
    if exc.status == 401:
        hint = "set RAPPORT_ADMIN_KEY" if not admin_key else "check RAPPORT_ADMIN_KEY"
        fail(f"the admin key was refused by {base_url}: {exc.message} ({hint})", EXIT_AUTH)
    if exc.status == 403:
        fail(f"{base_url} refused the admin call: {exc.message}", EXIT_AUTH)
    if exc.status >= 500:
        fail(f"{base_url} failed ({exc.status}): {exc.message}", EXIT_UNREACHABLE)
    where = f" ({exc.param})" if exc.param else ""
    fail(f"{exc.message}{where}", EXIT_NOT_FOUND)


def all_users(rp: Rapport, tenant: str | None) -> Iterator[User]:
    offset = 0
    while offset < SCAN_MAX_USERS:
        page = rp.users.list(tenant=tenant, limit=SCAN_PAGE, offset=offset)
        yield from page.data
        offset += len(page.data)
        if not page.data or offset >= page.total:
            return


def no_such_user(rp: Rapport, user: str, tenant: str) -> NoReturn:
    elsewhere = sorted({u.tenant for u in all_users(rp, None) if u.user == user and u.tenant != tenant})
    hint = f"; tenants that have it: {', '.join(elsewhere)} (pass --tenant)" if elsewhere else ""
    fail(f"no user {user!r} in tenant {tenant!r}{hint}", EXIT_NOT_FOUND)


def require_user(rp: Rapport, user: str, tenant: str) -> None:
    """Exit 1 naming the user when the server has no memory of them (the list routes answer an empty page)."""
    from rapport import NotFoundError

    try:
        rp.users.get(user, tenant=tenant)
    except NotFoundError:
        no_such_user(rp, user, tenant)


def what_is_kept(rp: Rapport, user: str, tenant: str) -> str | None:
    """What Rapport holds of the user in a few words, for the forget question; None when nothing at all.

    Memory first (a profile is cheap), then any other store (RPM history, VAS weights...): a user with no
    memory can still be forgotten."""
    from rapport import NotFoundError

    try:
        profile = rp.users.get(user, tenant=tenant)
    except NotFoundError:
        pass
    else:
        versions = sum(s.versions for s in profile.summaries)
        return f"{profile.items} memories, {versions} summary versions, {profile.pending_jobs} pending jobs"
    try:
        document = rp.users.export(user, tenant=tenant)
    except NotFoundError:
        return None
    parts = sorted(name for name, section in document.get("parts", {}).items() if section)
    return "data in " + ", ".join(parts) if parts else "some data"
