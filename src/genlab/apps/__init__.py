"""Generative models put to work, one command each (docs/applications.md):

- `genlab.apps.augment` (make augment): synthetic labelled digits as extra training data for a
  classifier that has few real labels;
- `genlab.apps.anomaly` (make anomaly): a family trained without one class scores that class as
  unlikely; AUROC next to a nearest-neighbour baseline;
- `genlab.apps.detect` (make detect): a small CNN told to tell real digits from each family's samples.

Each writes one JSON report and prints a table. They reuse the families (`genlab.train`, `genlab.sample`),
the metrics' classifier (`nets.ConvClassifier` trained by `metrics.train_classifier`) and nearest-neighbour
distance (`metrics.nearest_distance`), and scikit-learn's AUROC.
"""
