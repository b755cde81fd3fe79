"""The admin CLI (`rapport users|memories|summaries|export|import|forget|jobs`) against a real Rapport server.

It reaches the server only over HTTP (the SDK), like an operator's terminal on another machine would.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from typer.testing import CliRunner, Result

from proxy.cli import app
from rapport import Rapport
from tests.support.upstream import Reply

TENANT = "acme"


def cli(h: Any, *args: str, key: str | None = None, stdin: str | None = None) -> Result:
    # No COLUMNS: output goes to a pipe, as in a script, at the CLI's own width.
    env = {"RAPPORT_URL": h.url, "RAPPORT_ADMIN_KEY": key or h.admin_key, "RAPPORT_TENANT": None, "COLUMNS": None}
    return CliRunner().invoke(app, list(args), env=env, input=stdin)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result.stdout


def as_json(result: Result) -> Any:
    return json.loads(ok(result))


def test_cli_admin_over_a_real_server(make_rapport: Any, scripted_upstream: Any) -> None:
    h = make_rapport(memory={"summary_every": 1000})
    t = ("--tenant", TENANT)

    # add prints the id alone, for `id=$(rapport memories add ...)`.
    cat = ok(cli(h, "memories", "add", "maria", "My cat is called Miso.", *t)).strip()
    tea = ok(cli(h, "memories", "add", "maria", "I drink green tea every morning.", *t, "--task", "general")).strip()
    listed = as_json(cli(h, "memories", "list", "maria", *t, "--json"))
    assert {m["id"] for m in listed["data"]} == {cat, tea} and listed["total"] == 2
    assert listed["data"][0]["text"] == "I drink green tea every morning."  # newest first
    assert {"id", "tenant", "user", "text", "role", "ts", "task", "source"} <= set(listed["data"][0])
    table = ok(cli(h, "memories", "list", "maria", *t))
    assert cat in table and "Miso" in table
    assert [m["id"] for m in as_json(cli(h, "memories", "list", "maria", *t, "--task", "general", "--json"))["data"]] == [tea]

    assert as_json(cli(h, "memories", "search", "maria", "pets", *t, "-n", "1", "--json"))[0]["id"] == cat
    # An edit is re-embedded: the new meaning is what search finds.
    edited = as_json(cli(h, "memories", "edit", "maria", cat, "I play the cello in an orchestra.", *t, "--json"))
    assert edited["text"] == "I play the cello in an orchestra."
    assert as_json(cli(h, "memories", "search", "maria", "music instrument", *t, "-n", "1", "--json"))[0]["id"] == cat
    assert "cello" in ok(cli(h, "memories", "search", "maria", "music", *t))

    users = as_json(cli(h, "users", "--json"))
    assert [(u["tenant"], u["user"], u["items"]) for u in users["data"]] == [(TENANT, "maria", 2)]
    assert as_json(cli(h, "users", "--search", "MAR", "--json"))["total"] == 1
    assert as_json(cli(h, "users", "--search", "nobody", "--json"))["total"] == 0
    assert "maria" in ok(cli(h, "users", "--tenant", TENANT))

    # Two summary versions: listed newest first, and diffed sentence by sentence.
    rp = Rapport(h.url, admin_key=h.admin_key, tenant=TENANT)
    for text in ("Maria has a cat. She drinks green tea.", "Maria plays the cello. She drinks green tea."):
        scripted_upstream.script(Reply(content=text))
        [job_id] = rp.summaries.regenerate("maria", task="general")
        assert rp.jobs.wait(job_id, timeout=60, interval=0.05).status == "succeeded"
    versions = as_json(cli(h, "summaries", "maria", *t, "--json"))["data"]
    assert [v["version"] for v in versions] == [2, 1]
    assert "cello" in ok(cli(h, "summaries", "maria", *t, "--task", "general"))
    diff = as_json(cli(h, "summaries", "maria", *t, "--diff", "1", "2", "--json"))["diff"]
    assert "-Maria has a cat." in diff and "+Maria plays the cello." in diff and " She drinks green tea." in diff
    assert "+Maria plays the cello." in ok(cli(h, "summaries", "maria", *t, "--diff", "1", "2"))
    missing = cli(h, "summaries", "maria", *t, "--diff", "1", "7")
    assert missing.exit_code == 1 and "no summary version 7" in missing.stderr

    summary_jobs = as_json(cli(h, "jobs", "--user", "maria", "--kind", "memory.summary", "--json"))
    assert summary_jobs["total"] == 2 and {j["status"] for j in summary_jobs["data"]} == {"succeeded"}
    assert as_json(cli(h, "jobs", "--user", "someone-else", "--json"))["total"] == 0
    assert "memory.summary" in ok(cli(h, "jobs", "--status", "succeeded"))

    # Export, then import into another user: the same memories and summaries.
    exported = as_json(cli(h, "export", "maria", *t))
    assert exported["format"] == "rapport.user.v2"
    path = h.settings.data_dir / "maria.json"
    path.write_text(json.dumps(exported))
    imported = as_json(cli(h, "import", "maria2", str(path), *t, "--json"))
    assert imported["items"] == 2 and imported["summaries"] == 2
    copied = as_json(cli(h, "memories", "list", "maria2", *t, "--json"))
    assert sorted(m["text"] for m in copied["data"]) == ["I drink green tea every morning.", "I play the cello in an orchestra."]
    assert len(as_json(cli(h, "summaries", "maria2", *t, "--json"))["data"]) == 2
    assert "memory" in ok(cli(h, "import", "maria3", "-", *t, stdin=json.dumps(exported)))
    garbage = h.settings.data_dir / "garbage.json"
    garbage.write_text("{not json")
    bad = cli(h, "import", "maria4", str(garbage), *t)
    assert bad.exit_code == 1 and "is not JSON" in bad.stderr

    # rm one memory; a second rm of it is a clear 404.
    copy_id = copied["data"][0]["id"]
    assert as_json(cli(h, "memories", "rm", "maria2", copy_id, *t, "--json")) == {"deleted": [copy_id]}
    assert as_json(cli(h, "memories", "list", "maria2", *t, "--json"))["total"] == 1
    again = cli(h, "memories", "rm", "maria2", copy_id, *t)
    assert again.exit_code == 1 and copy_id in again.stderr

    # forget asks; "n" (or no answer at all) keeps the user, --yes does not ask.
    kept = cli(h, "forget", "maria", *t, stdin="n\n")
    assert kept.exit_code == 1 and "nothing was forgotten" in kept.stderr
    no_answer = cli(h, "forget", "maria", *t, stdin="")
    assert no_answer.exit_code != 0
    assert as_json(cli(h, "memories", "list", "maria", *t, "--json"))["total"] == 2
    asked = cli(h, "forget", "maria", *t, stdin="y\n")
    assert asked.exit_code == 0 and "Forget user 'maria' of tenant 'acme' everywhere (2 memories, 2 summary versions" in asked.stderr
    assert "maria" not in {u["user"] for u in as_json(cli(h, "users", "--json"))["data"]}
    forgotten = as_json(cli(h, "forget", "maria2", *t, "--yes", "--json"))
    assert forgotten["removed"]["memory"]["items"] == 1
    assert {u["user"] for u in as_json(cli(h, "users", "--json"))["data"]} == {"maria3"}

    # A user who is not there: exit 1 naming them, on every command; the default tenant hints where they are.
    for args in (
        ("memories", "list", "maria"),
        ("memories", "search", "maria", "tea"),
        ("memories", "edit", "maria", cat, "x"),
        ("memories", "rm", "maria", cat),
        ("summaries", "maria"),
        ("export", "maria"),
        ("forget", "maria", "--yes"),
    ):
        gone = cli(h, *args, *t)
        assert gone.exit_code == 1 and "no user 'maria' in tenant 'acme'" in gone.stderr, (args, gone.stderr)
        assert "Traceback" not in gone.stderr + gone.stdout
    elsewhere = cli(h, "memories", "list", "maria3")
    assert elsewhere.exit_code == 1
    assert "no user 'maria3' in tenant 'default'; tenants that have it: acme" in elsewhere.stderr
    rp.close()


def test_cli_admin_wrong_key_and_server_down(make_rapport: Any) -> None:
    h = make_rapport(plugins=("proxy.stages.memory_plugin:build",))
    Rapport(h.url, admin_key=h.admin_key, tenant=TENANT).memories.add("ines", "I live in Porto.")

    wrong = cli(h, "users", key="not-the-admin-key")
    assert wrong.exit_code == 3 and wrong.stdout == ""
    assert "the admin key was refused" in wrong.stderr and "Incorrect admin key" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1 and "ines" not in wrong.stderr
    proxy_key = cli(h, "memories", "list", "ines", "--tenant", TENANT, key=h.api_key)
    assert proxy_key.exit_code == 3 and "proxy key" in proxy_key.stderr and "Porto" not in proxy_key.stdout

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    down = CliRunner().invoke(app, ["users", "--url", f"http://127.0.0.1:{free_port}"], env={"RAPPORT_ADMIN_KEY": "k"})
    assert down.exit_code == 4 and "cannot reach Rapport" in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1 and "Traceback" not in down.stderr
