"""The job runtime inside the algorithm's container: S3 → /input → run → /output → S3.

Entry point: ``python -m batch_runner invoke --file s3://bucket/key``; see README.md.
"""

__version__ = "0.1.0"
