"""purer: data-free meta-learning (PURER, Hu et al., CVPR 2023) as a reproducible pipeline.

ECI (episode curriculum inversion) meta-learns an initialisation from a pool of pre-trained
classifiers without their training data; ICFIL calibrates the adapted model at meta-test time.
"""

__version__ = "0.1.0"
