"""The subcommands of the ``gpupool`` command line, one module each (see :mod:`gpupool.cli`)."""
