"""The engine: the one epoch/step loop (:mod:`nas.engine.loop`), the classification objective
and its callbacks (:mod:`nas.engine.trainer`), the run prologue every stage shares
(:mod:`nas.engine.session`), optimizers, evaluation and the PNG reports."""
