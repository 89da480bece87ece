"""`python -m localrun` is the `localrun` command, and the frozen binary's entry point.

A child started from the binary (`localrun __localrun_module__ <module> ...`, see
localrun.host.selfexec) runs here as that module, before the CLI is imported: a runner starts as
fast from the binary as from pip. Anything else is the CLI.
"""

import sys

from localrun.host.selfexec import CHILD_MODULES, MODULE_FLAG


def main() -> None:
    """The `localrun` program: a child module when started as one, else the CLI."""
    argv = sys.argv
    if len(argv) >= 3 and argv[1] == MODULE_FLAG and argv[2] in CHILD_MODULES:
        import runpy

        module = argv[2]
        sys.argv = [module, *argv[3:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    # Imported here, not above: a child module must not pay for typer and every command.
    from localrun.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
