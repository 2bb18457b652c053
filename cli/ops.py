"""Operations: ``doctor`` (checks every dependency) and ``config`` (the effective settings)."""

from __future__ import annotations

import json
import sys

import click

from audioset_batch.settings import Settings
from cli.common import json_option, main


@main.command()
@click.option(
    "--store",
    "scheme",
    type=click.Choice(["auto", "cos", "file"]),
    default="auto",
    show_default=True,
    help="Which object store to check; auto = COS when AUDIOSET_COS_ENDPOINT is set, else the local folders.",
)
@click.pass_obj
def doctor(settings: Settings, scheme: str) -> None:
    """Check broker, job store, object store, buckets, results write access and the model."""
    from cli.doctor import run_checks

    if scheme == "auto":
        scheme = settings.store_scheme
    checks = run_checks(settings, scheme)
    for check in checks:
        click.echo(f"{'PASS' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
        if not check.ok and check.hint:
            click.echo(f"      fix: {check.hint}")
    failed = sum(not c.ok for c in checks)
    click.echo(f"{len(checks) - failed} of {len(checks)} checks passed")
    sys.exit(1 if failed else 0)


@main.command("config")
@json_option
@click.pass_obj
def show_config(settings: Settings, as_json: bool) -> None:
    """Print the effective settings (secrets masked) and exit non-zero if they are invalid."""
    from audioset_batch.settings import MASK, mask_url

    def shown(name: str, value: object) -> object:
        if "Secret" in type(value).__name__:
            return MASK
        urls = {"broker_url", "state_url", "cos_endpoint", "cos_auth_endpoint"}
        return mask_url(value) if name in urls and isinstance(value, str) else value

    values = {f"AUDIOSET_{name.upper()}": shown(name, value) for name, value in settings}
    if as_json:
        click.echo(json.dumps(values, default=str, indent=2))
    else:
        for name, value in values.items():
            click.echo(f"{name}={'' if value is None else value}")
