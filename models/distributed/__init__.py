"""Multi-worker training: ParameterServerStrategy with embedding tables sharded over PS tasks.

cluster.py starts worker / PS server processes (locally, or reads TF_CONFIG on
a real cluster); train.py trains a ranking model on such a cluster and
two_tower.py the two-tower recall model; both export the single-process
SavedModel signatures.
"""
