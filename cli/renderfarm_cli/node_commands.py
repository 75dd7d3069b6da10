"""`farm node add|list|revoke`: enroll render nodes, see them, and take their credentials away."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from renderfarm_cli.console import age, note, out, print_json

NameArg = Annotated[str, typer.Argument(help="The node's name: letters, digits, '_' and '-'.", show_default=False)]


def add(
    name: NameArg,
    site: Annotated[str, typer.Option(help="The site it is at (a [sites.NAME] of farm.toml).")] = "local",
    pool: Annotated[str, typer.Option(help="The pool it serves.")] = "default",
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="A capability jobs may require; repeat for several.")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Where to write its credentials file (default: ./NAME.farm-node).")] = None,
    address: Annotated[Optional[str], typer.Option(help="The address nodes reach the farm's Redis and S3 at, when not this machine's (the local farm's --listen address by default).")] = None,
) -> None:
    """Enroll a render node: write its credentials file (0600), to copy to the node and start
    `farm-worker --credentials FILE` with. Enrolling a node again gives it new credentials; its
    old ones stop working. With the local farm's storage the node gets an S3 identity of its own;
    with other storage, put the keys of one you made for it in FARM_NODE_S3_ACCESS_KEY and
    FARM_NODE_S3_SECRET_KEY."""
    from renderfarm.capabilities import check_tags
    from renderfarm.config import load_settings, read_local_file
    from renderfarm.enrollment import enroll, write_credentials

    settings = load_settings()
    settings.site(site)  # a site farm.toml does not name is refused here
    listen = read_local_file(settings.state_dir).get("listen")
    where = address or (listen if listen and not listen.startswith("127.") else None)
    import os

    given = (os.environ.get("FARM_NODE_S3_ACCESS_KEY"), os.environ.get("FARM_NODE_S3_SECRET_KEY"))
    credentials = enroll(settings, name, site=site, pool=pool, tags=check_tags(tag), address=where,
                         s3_keys=given if all(given) else None)
    path = write_credentials(Path(output or f"{name}.farm-node"), credentials)
    out().print(f"node [bold]{name}[/] enrolled ({credentials.node_id}); its credentials are in {path} (0600)")
    note(f"copy {path.name} to the node (keep it 0600) and start `farm-worker --credentials {path.name}` there")


def revoke(name: NameArg) -> None:
    """Revoke a render node: its credentials stop working at once and its unfinished work renders
    elsewhere."""
    from renderfarm.config import load_settings
    from renderfarm.enrollment import revoke as revoke_node
    from renderfarm.errors import InputError

    if not revoke_node(load_settings(), name):
        raise InputError(f"node {name} is revoked already; nothing to revoke")
    out().print(f"node [bold]{name}[/] revoked: its credentials no longer work")


def list_(json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """List enrolled nodes: site, pool, tags, when enrolled or revoked, and how much of what each
    sent was refused."""
    from sqlalchemy import select

    from renderfarm.config import load_settings
    from renderfarm.db import session_scope
    from renderfarm.models import Node
    from renderfarm.status import reader_engine

    engine = reader_engine(load_settings())
    rows = []
    if engine is not None:
        try:
            with session_scope(engine) as session:
                rows = [{"name": n.name, "node_id": n.node_id, "site": n.site, "pool": n.pool,
                         "tags": n.tags.split(",") if n.tags else [], "enrolled_at": n.created_at,
                         "revoked_at": n.revoked_at, "refused": n.refused, "hold": n.hold}
                        for n in session.scalars(select(Node).order_by(Node.name))]
        finally:
            engine.dispose()
    if json_:
        print_json(rows)
        return
    if not rows:
        out().print("no nodes enrolled (`farm node add NAME`)")
        return
    from rich.table import Table

    from renderfarm.states import HELD

    table = Table(box=None, header_style="bold")
    for col in ("NODE", "ID", "SITE", "POOL", "TAGS", "ENROLLED", "STATE", "REFUSED"):
        table.add_column(col, justify="right" if col == "REFUSED" else "left")
    for n in rows:
        state = f"revoked {age(n['revoked_at'])}" if n["revoked_at"] else HELD.get(n["hold"], "enrolled")
        table.add_row(n["name"], n["node_id"], n["site"], n["pool"], ",".join(n["tags"]) or "-",
                      age(n["enrolled_at"]), state, str(n["refused"]))
    out().print(table)
