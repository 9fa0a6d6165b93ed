"""The ``trl-edge`` command line: one module per subcommand, dispatched by ``main``."""
