"""``osiris-flight keys create NAME``: a CurveZMQ keypair for the control plane (cluster/curve.py);
``osiris-flight keys tls DIR``: a cluster CA and worker certificate for Flight TLS (data/tls.py)."""

from __future__ import annotations

import json
import sys

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
    """Write NAME.key (public: give it to the coordinator's authorized keys, or to workers and
    clients when NAME is the coordinator) and NAME.key_secret (readable by its owner only)."""
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


@keys.command("tls")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--days", type=click.IntRange(min=1), default=1825, show_default=True, help="validity")
@click.option("--json", "as_json", is_flag=True)
def tls(directory: str, days: int, as_json: bool) -> None:
    """Write a cluster CA (ca.pem, ca.key) and a worker certificate signed by it (worker.pem,
    worker.key) into DIRECTORY for the workers' Flight TLS. Give every worker worker.pem, worker.key
    and ca.pem (--tls-cert/--tls-key/--tls-ca); keep ca.key off the workers."""
    from osiris_flight.data.tls import create_cluster_tls

    try:
        paths = create_cluster_tls(directory, days)
    except InvalidInput as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(json.dumps({name: str(path) for name, path in paths.items()}))
    else:
        click.echo(
            f"cluster CA: {paths['ca.pem']} (its key {paths['ca.key']}: keep it off the workers)\n"
            f"worker certificate: {paths['worker.pem']}, key: {paths['worker.key']}\n"
            f"on every worker: --tls-cert {paths['worker.pem']} --tls-key {paths['worker.key']} "
            f"--tls-ca {paths['ca.pem']}"
        )
