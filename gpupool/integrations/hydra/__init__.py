"""gpupool as a Hydra launcher: ``python train.py -m hydra/launcher=gpupool ...``.

The plugin Hydra discovers is ``hydra_plugins.gpupool_launcher`` (at the
repository's root, in the wheel beside ``gpupool``); it is Hydra's glue, and
what it runs lives here: the settings (options.py), the journal key of a job
(keys.py), the jobs as composed before they run (jobs.py), the files that
carry a job to its process and its result back (payload.py), the job's
process (child.py), Hydra's ``JobReturn`` for every way a job ends
(returns.py) and the launch itself (launch.py). docs/hydra.md is the user's
page. Needs the ``hydra`` extra (``pip install 'gpupool[hydra]'``).
"""
