"""The gpupool launcher for Hydra: ``hydra/launcher=gpupool`` (docs/hydra.md).

Hydra finds plugins by importing every module of the ``hydra_plugins``
namespace package; this one registers the launcher's config (config.py) and
defines the launcher (gpupool_launcher.py). Both import only Hydra, so that
every Hydra app on a machine with gpupool installed starts as fast as before;
gpupool itself is imported when a sweep is launched.
"""
