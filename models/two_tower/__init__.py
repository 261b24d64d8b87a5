"""Two-tower DNN recall with in-batch softmax, logQ correction and hard negatives (58.com)."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
