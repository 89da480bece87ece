"""The pages of docs/reference/, each rendered from the code that declares what it lists
(scripts/maintenance/make_reference.py writes them; tests/unit/scripts/test_reference_docs.py
checks them).

Modules (each imports only ``markdown`` of its siblings):

* ``markdown`` - the tables and text every page is written in, and MissingText: a page refuses
  to render what the code does not describe, naming where to write it;
* ``cli`` - cli.md: every command of the typer app (typer.main.get_command), its help,
  arguments and options in the order `localrun --help` lists them; the chat's commands;
* ``settings`` - settings.md: every LOCALRUN_* setting (settings.config.SETTINGS: help, default,
  the parser's docstring for the value it takes) and the keys of upstreams.toml;
* ``modelfile`` - modelfile-parameters.md: the instructions (recipes.modelfile.INSTRUCTION_HELP
  and the grammar in its docstring), the PARAMETERs (recipes.params.SPECS; defaults from
  engine.types.SamplingOptions where the engine holds them) and the request fields of each API
  that set them, read by calling each dialect's `options_of`;
* ``errors`` - errors.md: the tree under errors.LocalrunError, each class's code, docstring and
  HTTP status (server.errors), and an error as the command line and each dialect show it.
"""
