"""Facts about this machine that every shell layer may read (``/proc``), and the
one way they write a whole file (``files.atomic_file``).

Below the pool, the journal and ``run_process`` in the import contract, above
the pure core: reading ``/proc`` and writing files is I/O, which the core does not do.
"""
