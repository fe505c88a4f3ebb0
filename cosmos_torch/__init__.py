"""The torch side of cosmos that any backend can import: model-agnostic engines.

* :mod:`cosmos_torch.placement`: where a model's weights live while it runs (resident, swapped, on the host,
  streamed block by block from pinned host memory).
* :mod:`cosmos_torch.dist`: joining a torchrun run, process groups with timeouts, rank 0's results broadcast.
* :mod:`cosmos_torch.seqattn`: ring and Ulysses self-attention over a token range per rank.

The core (``cosmos_cli``) never imports this package at module level (it stays torch-free at import); the
backends do, lazily, when they build a pipeline or join a run.
"""
