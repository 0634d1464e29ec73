"""The event-driven job pipeline: provisioning, compute callbacks, outputs, the sweeper.

Every step is idempotent: it re-reads the job, acts only if the job is still where the step
expects it (status and attempt), and writes with a version check.
"""
