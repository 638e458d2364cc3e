"""Sample-quality metrics for generative models, on features from any network.

- `frechet`: the Frechet distance between two Gaussians fitted to feature sets
  (the formula behind FID, Heusel et al. 2017), with streaming moments.
- `coverage`: entropy of predicted-label histograms (a mode-coverage signal).

These are pure numpy (float64): they never touch a model. Which network supplies
the features is the caller's choice; normlab's GAN trainer uses a classifier it
trains itself (`normlab.train.gan.feature_classifier`), so its numbers are *not*
Inception FID and are comparable only between runs that share that classifier.
"""

from normlab.metrics.coverage import label_entropy
from normlab.metrics.frechet import FeatureMoments, frechet_distance

__all__ = ['FeatureMoments', 'frechet_distance', 'label_entropy']
