"""trainkit's own commands (beside the Lightning stages in :mod:`trainkit.runner`).

One module per ``trainkit <command>``, each with ``main(argv) -> exit code``. A command module
imports the core (runner, data, models, ...) and :mod:`trainkit.commands.common`, never another
command, so each reads on its own. :mod:`trainkit.cli` imports a command only when it runs.
"""

# command name -> module below trainkit.commands
COMMANDS = {
    "list": "list",
    "launch": "launch",
    "lr-find": "lr_find",
    "doctor": "doctor",
    "preview-data": "preview_data",
    "lottery": "lottery",
    "sweep": "sweep",
    "pack": "pack",
}
