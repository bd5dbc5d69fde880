"""The notes' method as jobs: studies on Optuna (study, its owner, worker and results; the seven-stars sweep and
its report; trials and pruners), remedy trials, mean/std after augmentation (normalization), the largest batch
(autobatch), post-processing tuning (tune_post), the notes' tuning schedule and every run's record."""
