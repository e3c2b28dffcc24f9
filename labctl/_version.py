"""labctl's version, in one place: the package, the CLI and provenance read it here (and
pyproject.toml's dynamic version), so none of them needs the package root."""

__version__ = "0.1.0"
