"""Hyperparameter search over how supernets are trained: ``raynas tune``.

``space`` reads the job's ``hparams:`` section, ``probes`` picks the subnets that judge a
trial's supernet, ``trial`` is the Ray Tune trainable (a Ray Train run inside each trial) and
``study`` runs the study: the Tuner, its scheduler, MLflow runs and the outputs.
"""
