"""The ``attnlab`` command line: one module per command."""
