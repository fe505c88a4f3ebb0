"""The bundled demo model's world: procedural clips (:mod:`.scenes`), quality metrics (:mod:`.metrics`) and the
example inputs under ``assets/examples/`` (:mod:`.make_examples`). Development tools, not part of the package."""
