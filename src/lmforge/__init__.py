"""lmforge: from raw text to a served, measured language model.

Components live in the lifecycle folders (``data``, ``tokenizer``, ``models``, ``training``,
``eval``, ``export``, ``serve``); the stages a user runs live in ``recipes`` and are reached
through the ``lmforge`` command (``lmforge <recipe> CONFIG.yaml key.sub=value ...``).
"""

__version__ = "0.1.0"
