"""``run_process`` and the ``/proc`` scanning that ends every process a job started."""
