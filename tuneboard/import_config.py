"""`tuneboard import-config FILE`: a LLaMA-Factory or Axolotl training YAML as a Tuneboard job config.

The conversion is contract/config_import.py; this prints its account of every key on stderr and the
config on stdout (or into --output). Failures are one "error: ..." line, like every other command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def import_config_command(
    file: Annotated[Path, typer.Argument(help="A LLaMA-Factory or Axolotl LoRA/QLoRA training YAML.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the Tuneboard config here (default: stdout).")
    ] = None,
) -> None:
    """Convert a LLaMA-Factory or Axolotl config into a Tuneboard job config; list what it could not map."""
    from contract.config import ConfigError
    from contract.config_import import import_config_text

    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(f"cannot read {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise _fail(f"cannot read {file}: it is not UTF-8 text") from None
    try:
        result = import_config_text(text, filename=file.name)
    except ConfigError as exc:
        problems = "; ".join(f"{k or '(config)'}: {v}" for k, v in exc.problems.items())
        raise _fail(f"cannot import {file}: {problems}") from None
    for line in result.report_lines():
        typer.echo(line, err=True)
    if output is None:
        typer.echo(result.yaml_text(), nl=False)
        return
    try:
        output.write_text(result.yaml_text(), encoding="utf-8")
    except OSError as exc:
        raise _fail(f"cannot write {output}: {exc.strerror}") from None
    typer.echo(f"wrote {output}; train it with: tuneboard train {output}", err=True)
