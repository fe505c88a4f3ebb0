"""JSON Schema files: the contract for batch input (``batch_job.schema.json``)."""
