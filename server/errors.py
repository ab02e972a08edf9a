"""The exception tree of lockgate, as the server imports it.

The tree itself, drawn in its docstring, is ``lockgate.plugins.errors``: plugins raise the
same errors, and ``lockgate.plugins`` may not import the server. Every name here is that
module's.
"""

from __future__ import annotations

from lockgate.plugins.errors import *  # noqa: F403 - the one tree, re-exported whole
from lockgate.plugins.errors import __all__ as __all__
