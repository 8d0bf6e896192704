"""The contract between the dashboard (app/) and the training side (worker/): what both must agree on.

The job config schema, the event protocol, the run-directory layout, the model/dataset catalog, the memory
estimate, dataset validation and the task files. Torch-free and database-free: it imports neither app/ nor
worker/, and both import it (ruff's banned-api rules in each folder's ruff.toml keep it that way).
"""
