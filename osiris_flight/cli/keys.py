"""``osiris-flight keys``: CurveZMQ keypairs for the control plane (cluster/curve.py).

``keys create NAME`` writes one keypair; ``keys cluster DIR`` a whole cluster's keys in one step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from osiris_flight.errors import InvalidInput


@click.group()
def keys() -> None:
    """CurveZMQ keypairs that encrypt and authenticate coordinator, worker and client links."""


@keys.command("create")
@click.argument("name")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def create(name: str, directory: str, as_json: bool) -> None:
    """Write NAME.key (public: put it in the coordinator's authorized keys under workers/, clients/ or
    admins/ for the role it gets, or give it to workers and clients when NAME is the coordinator) and
    NAME.key_secret (readable by its owner only)."""
    from osiris_flight.cluster.curve import create_keypair

    if not name or "/" in name or name.startswith("."):
        raise click.BadParameter("a plain file name such as worker-a", param_hint="NAME")
    try:
        public, secret = create_keypair(directory, name)
    except InvalidInput as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(json.dumps({"public_key_file": str(public), "secret_key_file": str(secret)}))
    else:
        click.echo(f"public key: {public}\nsecret key: {secret} (keep it on this host only)")


def cluster_key_files(directory: Path) -> list[tuple[Path, str]]:
    """Every key file of a new cluster in ``directory``, with where it goes. The control plane's
    CURVE keys; other key material (e.g. Flight TLS) is added here by calling its own module."""
    from osiris_flight.cluster.curve import create_cluster_keys

    return create_cluster_keys(directory)


@keys.command("cluster")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def cluster(directory: str, as_json: bool) -> None:
    """Create a whole cluster's keys in DIRECTORY (which must not hold keys yet): the coordinator's
    keypair, one keypair each for a worker, a client and an admin, and authorized/ with each public
    key in its role's subdirectory. Secret files are 0600, public ones 0644. Prints which file goes
    where (the systemd units expect them in /etc/osiris-flight/keys/)."""
    try:
        placed = cluster_key_files(Path(directory))
    except InvalidInput as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(json.dumps([{"file": str(path), "goes_to": where} for path, where in placed]))
        return
    for path, where in placed:
        click.echo(f"{path}\n    -> {where}")
    click.echo("Secret files stay on their hosts; copy more worker or client keys into authorized/<role>/.")
