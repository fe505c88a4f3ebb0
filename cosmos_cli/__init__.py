"""cosmos: run Cosmos-Predict1 Video2World world models from one command.

The package is model-agnostic: model backends register through the ``cosmos`` entry-point group
(see :mod:`cosmos_cli.registry`). Importing it has no side effects and does not import torch.
"""

__version__ = "0.1.0"
