"""The image-quality metrics every image family uses (FID, KID, precision/recall/density/coverage,
memorisation, per-label accuracy), offline, in one feature space.

The API (what a family, a callback or a script calls):

    from genlab.metrics import image_metrics, digits_features, make_features

    feats = make_features(datamodule)        # the data's classifier (digits: 98% test accuracy), cached
                                             # under data/; or InceptionFeatures when a weights path is given
    scores = image_metrics(samples, real_train, real_test, labels=None, features=feats, seed=0)
    # {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage",
    #  "nn_dist", "nn_dist_ratio", "near_copies", "near_copy_threshold", "n", "seed",
    #  "real_test/<same>" (the held-out images' own figures: the floor at their N),
    #  "accuracy", "accuracy/<label>" (with labels: the class each sample was generated for; only
    #  with a classifier head, `has_classifier_head(feats)`: Inception's features skip it with a note)}

- images are `(N, C, H, W)` in [-1, 1] (the family contract); `split_tensors(datamodule, "train")`
  gives a data module's split as tensors.
- `digits_features(image_size=8)` / `classifier_features(datamodule)`: a `ConvClassifier` trained
  once on the training split (seconds on one thread), its 64 penultimate features the space;
  usable directly as torchmetrics' `FrechetInceptionDistance(feature=...)` (it has `num_features`).
- `InceptionFeatures(path)`: the standard 2048-d Inception-v3 features from a local weights file
  (`feature_extractor_weights_path`), never downloaded; figures then compare with papers at equal N.
- Fewer than `MIN_SAMPLES` (100) samples are refused with a `DataError`: FID is biased in N, so
  record N (returned as `n`) and compare only at equal N. Real features are cached per data set.
- `SampleMetrics`: the same figures as a validation callback (`callbacks.sample_metrics`), logged as
  `val/fid`, `val/kid`, ... every N epochs, so sweeps can optimise FID.
"""

from genlab.metrics.callback import SampleMetrics
from genlab.metrics.features import (
    ClassifierFeatures,
    InceptionFeatures,
    classifier_accuracy,
    classifier_features,
    digits_features,
    make_features,
    split_tensors,
    train_classifier,
)
from genlab.metrics.image import (
    MIN_SAMPLES,
    check_count,
    extract,
    fid_kid,
    has_classifier_head,
    image_metrics,
    label_accuracy,
    memorisation,
    nearest_distance,
)
from genlab.metrics.prdc import prdc

__all__ = [
    "MIN_SAMPLES",
    "ClassifierFeatures",
    "InceptionFeatures",
    "SampleMetrics",
    "check_count",
    "classifier_accuracy",
    "classifier_features",
    "digits_features",
    "extract",
    "fid_kid",
    "has_classifier_head",
    "image_metrics",
    "label_accuracy",
    "make_features",
    "memorisation",
    "nearest_distance",
    "prdc",
    "split_tensors",
    "train_classifier",
]
