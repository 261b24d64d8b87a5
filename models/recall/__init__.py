"""Code shared by the recall models (Item2vec, YouTubeNet, two-tower).

  data        in-memory examples and the item catalogue; user / item feature lists
  negatives   vectorized unigram^alpha sampling, optionally within attribute groups
  towers      FeatureTower (raw features -> vector) and AttentionPooling
  training    minibatching and batched prediction helpers
  artifacts   item-embedding artifact and user-tower SavedModel export
  metrics     exact top-K with exclusions; HR / Recall / NDCG / coverage / position
  protocols   time split and leave-last-out evaluation
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
