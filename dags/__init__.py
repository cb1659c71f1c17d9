"""The pipeline's orchestration files, importable as a package for their helper modules."""
