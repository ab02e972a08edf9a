"""The built-in audit log plugin (entry point ``audit``): an append-only, hash-chained log of
every control action and every inference request, with signed checkpoints outside the
database. ``AuditLog`` is the store; ``Sequencer`` its writer; options in ``AuditOptions``.
"""

from __future__ import annotations

from ..errors import PruneRefused, SequencerStopped
from ._chain import GENESIS, canonical, checkpoint_mac, load_or_create_key, record_hash
from ._log import AuditLog, CheckpointSink, VerifyReport
from ._plugin import LOCKGATE_PLUGIN_API, AuditOptions, AuditPlugin, plugin
from ._sequencer import Sequencer

__all__ = [
    "GENESIS",
    "LOCKGATE_PLUGIN_API",
    "AuditLog",
    "AuditOptions",
    "AuditPlugin",
    "CheckpointSink",
    "PruneRefused",
    "Sequencer",
    "SequencerStopped",
    "VerifyReport",
    "canonical",
    "checkpoint_mac",
    "load_or_create_key",
    "plugin",
    "record_hash",
]
