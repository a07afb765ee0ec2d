"""purer: data-free meta-learning (PURER, Hu et al., CVPR 2023) as a reproducible pipeline.

ECI (episode curriculum inversion) meta-learns an initialisation from a pool of pre-trained
classifiers without their training data; ICFIL calibrates the adapted model at meta-test time.
"""

__version__ = "0.1.0"

# The Python API (purer/api.py, README "Python API"), imported on first use: `import purer` stays
# light for the command line and the workflow, which never need it.
_API = ("AdaptedModel", "MetaModel", "load_meta_model")
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module("purer.api"), name)
    raise AttributeError(f"module 'purer' has no attribute {name!r}")
