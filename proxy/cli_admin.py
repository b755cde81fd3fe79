"""`rapport users|memories|summaries|export|import|forget|jobs`: the admin API from a terminal.

Every command goes through the Rapport SDK over HTTP (never a store), so it works the same against a server on
this machine or a remote one. The admin key comes from RAPPORT_ADMIN_KEY (a flag would land in shell history).

A user id is only unique inside its tenant, so a command on a user always acts on one tenant: `--tenant`, else
RAPPORT_TENANT, else "default" (the tenant of the open mode and of the admin API's own default). The CLI never
guesses a tenant from what the server holds: a guess that depends on other tenants' data would make the same
`forget` act on a different user tomorrow. When the user is not in that tenant, the error names the tenants that
do hold that id.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from proxy.cli_admin_client import (
    DEFAULT_TENANT,
    DEFAULT_URL,
    AdminKeyOption,
    FullOption,
    JsonOption,
    LimitOption,
    OffsetOption,
    TenantOption,
    UrlOption,
    UserArg,
    admin,
    all_users,
    no_such_user,
    require_user,
    what_is_kept,
)
from proxy.cli_admin_output import (
    counts_table,
    emit_json,
    fail,
    jobs_table,
    memories_table,
    note,
    page_footer,
    print_diff,
    show,
    summaries_table,
    summary_diff,
    users_table,
)

memories_app = typer.Typer(
    help="A user's memories: list, semantic search, add, edit (re-embedded) and remove.", no_args_is_help=True
)


# -- users -----------------------------------------------------------------------------------------------------


def users(
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant (all when absent).")] = None,
    search: Annotated[str | None, typer.Option("--search", "-s", help="Only user ids containing this text.")] = None,
    limit: LimitOption = 50,
    offset: OffsetOption = 0,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """Users with memory, most recently seen first."""
    from rapport.types import UserList

    with admin(url, admin_key) as rp:
        if search is None:
            page = rp.users.list(tenant=tenant, limit=limit, offset=offset)
        else:
            # The admin API pages users without a filter: the CLI reads the list through and filters here.
            needle = search.casefold()
            found = [u for u in all_users(rp, tenant) if needle in u.user.casefold()]
            page = UserList(data=found[offset : offset + limit], total=len(found), limit=limit, offset=offset)
    if as_json:
        emit_json(page)
        return
    if not page.data:
        note("no users" + (f" matching {search!r}" if search else ""))
        return
    show(users_table(page.data))
    page_footer(len(page.data), page.total, offset)


# -- memories --------------------------------------------------------------------------------------------------


@memories_app.command("list")
def memories_list(
    user: UserArg,
    tenant: TenantOption = DEFAULT_TENANT,
    role: Annotated[str | None, typer.Option(help="Only this role (user, assistant...).")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    conversation: Annotated[str | None, typer.Option("--conversation", help="Only this conversation id.")] = None,
    limit: LimitOption = 50,
    offset: OffsetOption = 0,
    full: FullOption = False,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """A user's memories, newest first."""
    filters = {k: v for k, v in {"role": role, "task": task, "conversation_id": conversation}.items() if v}
    with admin(url, admin_key, tenant) as rp:
        page = rp.memories.list(user, tenant=tenant, limit=limit, offset=offset, **filters)
        if page.total == 0:
            require_user(rp, user, tenant)
    if as_json:
        emit_json(page)
        return
    if not page.data:
        note("no memories" + (" with these filters" if filters else ""))
        return
    show(memories_table(page.data, scored=False, full=full))
    page_footer(len(page.data), page.total, offset)


@memories_app.command("search")
def memories_search(
    user: UserArg,
    query: Annotated[str, typer.Argument(help="What to look for (semantic search).", show_default=False)],
    tenant: TenantOption = DEFAULT_TENANT,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="At most this many hits.")] = 10,
    full: FullOption = False,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """A user's memories closest in meaning to QUERY, best first."""
    with admin(url, admin_key, tenant) as rp:
        hits = rp.memories.search(user, query, tenant=tenant, limit=limit)
        if not hits:
            require_user(rp, user, tenant)
    if as_json:
        emit_json(hits)
        return
    if not hits:
        note("no memories")
        return
    show(memories_table(hits, scored=True, full=full))


@memories_app.command("add")
def memories_add(
    user: UserArg,
    text: Annotated[str, typer.Argument(help="The memory's text.", show_default=False)],
    tenant: TenantOption = DEFAULT_TENANT,
    role: Annotated[str, typer.Option(help="Whose words: user, assistant or system.")] = "user",
    task: Annotated[str | None, typer.Option(help="The task it belongs to.")] = None,
    conversation: Annotated[str | None, typer.Option("--conversation", help="Its conversation id.")] = None,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """Add a memory (a new user id starts that user); prints the new memory's id."""
    with admin(url, admin_key, tenant) as rp:
        added = rp.memories.add(user, text, tenant=tenant, role=role, task=task, conversation_id=conversation)
    if as_json:
        emit_json(added)
        return
    # The id alone on stdout, so `id=$(rapport memories add ...)` works.
    sys.stdout.write(added.id + "\n")


@memories_app.command("edit")
def memories_edit(
    user: UserArg,
    memory_id: Annotated[str, typer.Argument(help="The memory's id.", show_default=False)],
    text: Annotated[str | None, typer.Argument(help="Its new text (re-embedded).", show_default=False)] = None,
    tenant: TenantOption = DEFAULT_TENANT,
    role: Annotated[str | None, typer.Option(help="A new role.")] = None,
    task: Annotated[str | None, typer.Option(help="A new task.")] = None,
    conversation: Annotated[str | None, typer.Option("--conversation", help="A new conversation id.")] = None,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """Change a memory's text (searched by its new meaning from then on), role, task or conversation."""
    if text is None and role is None and task is None and conversation is None:
        raise typer.BadParameter("give a new TEXT or one of --role, --task, --conversation", param_hint="TEXT")
    from rapport import NotFoundError

    with admin(url, admin_key, tenant) as rp:
        try:
            edited = rp.memories.update(
                user, memory_id, tenant=tenant, text=text, role=role, task=task, conversation_id=conversation
            )
        except NotFoundError as exc:
            require_user(rp, user, tenant)
            fail(exc.message)
    if as_json:
        emit_json(edited)
        return
    show(memories_table([edited], scored=False, full=True))


@memories_app.command("rm")
def memories_rm(
    user: UserArg,
    memory_ids: Annotated[list[str], typer.Argument(help="The ids of the memories to remove.", show_default=False)],
    tenant: TenantOption = DEFAULT_TENANT,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """Remove memories by id (each named on the command line, so no confirmation)."""
    from rapport import NotFoundError

    removed: list[str] = []
    with admin(url, admin_key, tenant) as rp:
        for memory_id in memory_ids:
            try:
                rp.memories.delete(user, memory_id, tenant=tenant)
            except NotFoundError as exc:
                require_user(rp, user, tenant)
                if as_json:
                    emit_json({"deleted": removed, "missing": memory_id})
                fail(exc.message)
            removed.append(memory_id)
    if as_json:
        emit_json({"deleted": removed})
        return
    for memory_id in removed:
        note(f"removed {memory_id}")


# -- summaries, export, import, forget, jobs ------------------------------------------------------------------


def summaries(
    user: UserArg,
    tenant: TenantOption = DEFAULT_TENANT,
    task: Annotated[str | None, typer.Option(help="Only this task's versions.")] = None,
    diff: Annotated[
        tuple[int, int] | None,
        typer.Option("--diff", metavar="V1 V2", show_default=False, help="Diff version V1 to version V2."),
    ] = None,
    full: Annotated[bool, typer.Option("--full/--short", help="Whole texts (default) or one line each.")] = True,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """A user's summary versions, newest first (what memory injects is the newest of each task)."""
    with admin(url, admin_key, tenant) as rp:
        found = rp.summaries.list(user, tenant=tenant, task=task)
        if not found:
            require_user(rp, user, tenant)
    if diff is not None:
        _diff(found, diff, task, as_json)
        return
    if as_json:
        emit_json({"data": [s.model_dump(mode="json") for s in found]})
        return
    if not found:
        note("no summaries yet" + (f" for task {task!r}" if task else ""))
        return
    show(summaries_table(found, full=full))


def _diff(found: list[Any], versions: tuple[int, int], task: str | None, as_json: bool) -> None:
    tasks = sorted({s.task for s in found if s.version in versions})
    if len(tasks) > 1:
        fail(f"tasks {', '.join(tasks)} all have these versions: pass --task", 2)
    picked = {s.version: s for s in found if s.task in tasks}
    for version in versions:
        if version not in picked:
            have = sorted({s.version for s in found if task is None or s.task == task})
            fail(f"no summary version {version}{f' of task {task!r}' if task else ''}; versions: {have or 'none'}")
    old, new = picked[versions[0]], picked[versions[1]]
    lines = summary_diff(old, new)
    if as_json:
        emit_json({"task": old.task, "from": old.model_dump(mode="json"), "to": new.model_dump(mode="json"), "diff": lines})
        return
    print_diff(lines)


def export(
    user: UserArg,
    tenant: TenantOption = DEFAULT_TENANT,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """Everything Rapport keeps of a user as one JSON document (rapport.user.v2) on stdout."""
    from rapport import NotFoundError

    with admin(url, admin_key, tenant) as rp:
        try:
            document = rp.users.export(user, tenant=tenant)
        except NotFoundError:
            no_such_user(rp, user, tenant)
    emit_json(document)


def import_user(
    user: UserArg,
    file: Annotated[str, typer.Argument(help="An export (`rapport export`), or - for stdin.", show_default=False)],
    tenant: TenantOption = DEFAULT_TENANT,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """Import an export into USER (another user id or tenant than it came from is fine)."""
    document = _read_document(file)
    with admin(url, admin_key, tenant) as rp:
        result = rp.users.import_(user, document, tenant=tenant)
    if as_json:
        emit_json(result)
        return
    parts = result.parts or {"memory": {"items": result.items, "duplicates": result.duplicates, "summaries": result.summaries}}
    show(counts_table(f"imported into {user} ({tenant})", sorted(parts.items())))
    for part, why in sorted(result.errors.items()):
        note(f"{part} not imported: {why}")


def _read_document(file: str) -> dict[str, Any]:
    try:
        raw = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"{file} is not JSON: {exc.msg} at line {exc.lineno}")
    if not isinstance(document, dict):
        fail(f"{file} is not an export: expected a JSON object")
    return document


def forget(
    user: UserArg,
    tenant: TenantOption = DEFAULT_TENANT,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """Forget a user everywhere (memories, summaries, RPM, VAS, jobs...); asks first unless --yes."""
    with admin(url, admin_key, tenant) as rp:
        kept = what_is_kept(rp, user, tenant)
        if kept is None:
            no_such_user(rp, user, tenant)
        if not yes:
            question = f"Forget user {user!r} of tenant {tenant!r} everywhere ({kept})? This cannot be undone"
            # Declining, or no terminal to answer on (EOF), forgets nothing and exits 1.
            if not typer.confirm(question, default=False, err=True):
                fail("nothing was forgotten")
        forgotten = rp.users.forget(user, tenant=tenant)
    if as_json:
        emit_json(forgotten)
        return
    rows = [(part, counts if isinstance(counts, dict) else {"removed": counts}) for part, counts in forgotten.removed.items()]
    show(counts_table(f"forgot {user} ({tenant})", sorted(rows)))


def jobs(
    status: Annotated[
        str | None, typer.Option(help="Only jobs in this state: pending, running, succeeded or failed.")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's jobs.")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant's jobs.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind (e.g. memory.summary).")] = None,
    limit: LimitOption = 50,
    offset: OffsetOption = 0,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """Background jobs (summaries, RPM builds, forgets), newest first, with the queue's counts."""
    with admin(url, admin_key) as rp:
        page = rp.jobs.list(status=status, kind=kind, tenant=tenant, user=user, limit=limit, offset=offset)
    if as_json:
        emit_json(page)
        return
    if page.data:
        show(jobs_table(page.data))
        page_footer(len(page.data), page.total, offset)
    else:
        note("no jobs")
    if page.counts:
        note("queue: " + ", ".join(f"{name} {count}" for name, count in sorted(page.counts.items())))


def register(app: typer.Typer) -> None:
    """Mount the admin commands on the `rapport` command line."""
    app.command(rich_help_panel="Admin (over the API)")(users)
    app.add_typer(memories_app, name="memories", rich_help_panel="Admin (over the API)")
    app.command(rich_help_panel="Admin (over the API)")(summaries)
    app.command(rich_help_panel="Admin (over the API)")(export)
    app.command("import", rich_help_panel="Admin (over the API)")(import_user)
    app.command(rich_help_panel="Admin (over the API)")(forget)
    app.command(rich_help_panel="Admin (over the API)")(jobs)
