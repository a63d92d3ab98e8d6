"""Demo-weight trainers, one module per model (phantoms in, weights and a training record out),
and the loop they share (``loop``). ``python -m export train-demo <model>`` runs the registry
entry's trainer."""
