"""Which trainer a config runs: classifiers, or GANs (configs with a `generator`)."""

from __future__ import annotations


def trainer_for(config):
    if 'generator' in config:
        from normlab.train import gan

        return gan.train_and_evaluate
    from normlab.train import classifier

    return classifier.train_and_evaluate
