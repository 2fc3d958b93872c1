"""The commands of `python -m trainer`, one module per command or family of commands.

Each module has `add_parsers(sub, common)`, which adds its subcommands' parsers
(`common` carries the --config every command takes after its name), and
`COMMANDS`, each command's name and its `run(config, args) -> exit code`.
trainer/__main__.py puts them together and handles the expected errors.
"""
