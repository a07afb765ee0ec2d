"""Model zoo (backbones) and the pre-trained pool (partition, training, manifest)."""
