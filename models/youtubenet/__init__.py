"""YouTube DNN candidate generation (Covington et al. 2016)."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
