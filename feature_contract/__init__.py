"""The feature contract: the ground floor every layer reads.

`feature_contract.feature_config` names columns, fields and example keys of a
dataset. It imports nothing of feedrec, so the Beam jobs, models, serving,
components and pipelines can all depend on it without depending on each other.
"""
