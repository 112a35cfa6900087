"""Facts about this machine that every shell layer may read (``/proc``): below the pool, the journal and ``run_process``, above the pure core."""
