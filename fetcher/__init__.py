"""model-fetcher: fill a PVC with LLM weights from MinIO/S3, verified, then hand off."""

__version__ = "0.1.0"
