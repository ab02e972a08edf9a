"""``python -m lockgate.server.cli``: the ``lockgate`` command."""

from .main import main

main()
