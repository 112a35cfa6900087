"""Facts about this machine that every shell layer may read (``/proc``).

Below the pool, the journal and ``run_process`` in the import contract, above
the pure core: reading ``/proc`` is I/O, which the core does not do.
"""
