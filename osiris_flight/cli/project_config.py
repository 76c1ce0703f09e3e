"""osiris.yaml as the ``osiris-flight`` commands load it: an Osiris project's file included.

Loading applies ``filesystem.base_path`` to this process (and so to the embedded cluster it starts)
and prints, once, the warning that names the Osiris settings with no effect here.
``osiris-flight validate`` gives one note per setting instead, with the reason.
"""

from __future__ import annotations

import click

from osiris_flight.config import Config, load_config
from osiris_flight.osiris_settings import ignored_notes, ignored_warning


def project_config(config_path: str | None, *, warn: bool = True) -> Config:
    """``load_config`` (raises InvalidInput), then base_path applied and the warning printed."""
    config = load_config(config_path)
    config.osiris.apply_base_path()
    warning = ignored_warning(config.source or "osiris.yaml", config.osiris.ignored) if warn else None
    if warning:
        click.echo(f"warning: {warning}", err=True)
    return config


def config_notes(config: Config) -> list[str]:
    """The notes ``osiris-flight validate`` gives for the Osiris settings that have no effect."""
    return ignored_notes(config.source or "osiris.yaml", config.osiris.ignored)
