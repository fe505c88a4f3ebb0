"""The bundled demo Video2World checkpoint (package data only, no code): a checkpoint folder in the original
layout, written by ``python -m tools.demo.train``. See ``cosmos_plugins.predict1.specs.PREDICT1_DEMO``."""
