"""The command line shared by every stage script.

Each top-level script is a few lines: its docstring (what it reads and writes) becomes its
``--help``, and it hands a resolved configuration to one function of this package.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from emotion_classifier.config import Config, ConfigError, load_config
from emotion_classifier.errors import PipelineError

DEFAULT_CONFIG = Path("config") / "default.toml"


def build_parser(description: str, section: str | None) -> argparse.ArgumentParser:
    """The stage's command line; ``section`` is the one a bare KEY=VALUE sets (None: a stage with no
    settings of its own, whose overrides always name their section)."""
    own = f"KEY=VALUE sets [{section}] KEY, " if section else ""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"Overrides: {own}SECTION.KEY=VALUE any section; VALUE is read as TOML (2, 0.5, true, "
            "\"text\", [1, 2]) or else taken as text.\n"
            f"Example: --config config/sample.toml {section or 'paths'}.<key>=<value>"
        ),
    )
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        help=f"TOML configuration file (default: {DEFAULT_CONFIG}); keys it leaves out keep their defaults",
    )
    parser.add_argument(
        "--force", action="store_true", help="redo the stage even if its outputs are up to date"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="per-run configuration overrides")
    return parser


def add_command_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--force`` and overrides of a console command (``emotion-predict``, ...).

    Unlike the stage scripts, the console commands run from any folder: without --config they
    read config/default.toml when the current folder has one, else the built-in defaults.
    """
    parser.add_argument(
        "--config", default=None,
        help=f"TOML configuration file (default: {DEFAULT_CONFIG} when it exists, else built-in defaults)",
    )
    parser.add_argument("--force", action="store_true", help="redo even if the outputs are up to date")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="per-run configuration overrides")


def command_config_path(arguments: argparse.Namespace) -> Path | str | None:
    """The configuration file a console command reads (see ``add_command_arguments``)."""
    return arguments.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)


def main(
    run: Callable[[Config, bool], int | None],
    description: str,
    section: str | None,
    argv: list[str] | None = None,
) -> int:
    """Parse the command line, load the configuration and run one stage; return the exit status."""
    parser = build_parser(description, section)
    arguments = parser.parse_args(argv)
    return run_configured(run, arguments.config, arguments.overrides, section, arguments.force)


def run_configured(
    run: Callable[[Config, bool], int | None],
    config_path: str | Path | None,
    overrides: list[str],
    section: str | None,
    force: bool,
    adjust: Callable[[Config], None] | None = None,
) -> int:
    """Load the configuration, let ``adjust`` apply command-line options, run; return the exit status.

    Shared by the stage scripts and the console commands, so every entry point reports a bad
    configuration or a user-fixable problem in one line (status 2) and an interruption as 130.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(config_path, overrides, default_section=section)
        if adjust is not None:
            adjust(config)
        status = run(config, force)
    except (ConfigError, PipelineError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: outputs already written are complete; re-run to continue", file=sys.stderr)
        return 130
    return int(status or 0)
