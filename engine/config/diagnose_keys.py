"""The diagnose keys: the thresholds of the notes' rules (engine.diagnosis), each with the runs it was tuned on."""

from __future__ import annotations



from .fields import F, Strict


class Diagnose(Strict):
    """诊断 diagnosis: thresholds of the rules in engine.diagnosis.rulebook (all live).

    The loss-curve thresholds are tuned on real runs from bench/diagnosis.py (small model on the synthetic
    set, 12 steps per epoch, an eval per epoch, seeds 0-2, run twice: before and after the vectorised
    MinIoURandomCrop changed the augmentation stream): healthy (base_lr 0.003 / 0.01), too-large lr
    (0.3 / 1 / 3) and a val set from another distribution; probes at lr 0.001, 0.03 and 0.1. The numbers
    quoted per field are from those runs (a shifted-val run's train side is its healthy twin's). The
    rest still come from one demo run (batch 16, 32 steps per epoch): per-step raw loss ±20% around its
    epoch median, largest loss over the previous-20 median 1.29, largest gradient norm over its
    previous-20 median 2.97.
    """
    enabled: bool = F(True, "Run the diagnostic rules during training.", zh="诊断", live=True)
    check_every: int = F(50, "Also check every N logged train lines between evaluations (0 = only at evals).",
                         ge=0, le=100000, live=True)
    keep_lines: int = F(2000, "Recent train lines the watcher keeps for windowed rules (older ones survive only "
                        "as per-epoch medians), so a check never rescans the whole run.", ge=100, le=1000000,
                        live=True)
    refire_change: float = F(0.25, "A rule already reported fires again only when its key evidence changed by "
                             "more than this fraction, or its remedy changed.", gt=0, le=10, live=True)
    flat_epochs: int = F(3, "Complete epochs, counted from the 2nd, before the flat-loss rule may judge "
                         "(12 healthy real runs: from the 2nd to the 3rd epoch the loss fell only 4.1-16%, at or "
                         "under flat_min_drop; from the 2nd to the 4th 7.2-21%). The check at the 4th epoch's eval "
                         "judges it.", zh="从第二个epoch开始",
                         ge=2, le=1000, live=True)
    flat_min_drop: float = F(0.05, "Flat loss: the epoch-median raw train loss fell less than this fraction from "
                             "the first half of the epochs since the 2nd to the last half (12 healthy runs: ≥ 7.2% "
                             "from the 2nd to the 4th epoch; a bouncing lr on the 6-step tiny set: 1-4.6%).",
                             gt=0, lt=1, live=True)
    flat_min_progress: float = F(0.2, "Flat loss, no progress: the raw train loss of the later epochs is less "
                                 "than this fraction below the loss of the first logged step. At the 4th epoch "
                                 "12 healthy runs (lr 0.003, 0.01) are 26-41% below it, lr 0.03 and 0.1 27-41%; lr 0.3 "
                                 "runs 3.5-15% below, lr 1 and 3 runs 3-24× above (the first steps blow the loss "
                                 "up). lr 0.001 (16% below) is slow, not hot: flat_blowup keeps it quiet.", ge=0, lt=1,
                                 live=True)
    flat_blowup: float = F(1.2, "Flat loss, no progress: only after a blow-up — some epoch-median raw train loss "
                           "above this many times the first step's (healthy runs at lr 0.001-0.1: ≤ 1.05×; lr 0.3: "
                           "1.34-3.1×, lr 1 and 3: 16-350×).", gt=1, le=1e6, live=True)
    flat_severe_blowup: float = F(3.0, "Flat loss, no progress, after a severe blow-up: an epoch-median raw train "
                                  "loss above this many times the first step's… (BCCD at 100× its lr: 3.3-23×, "
                                  "crawling back 20-40% below the start)", gt=1, le=1e6, live=True)
    flat_severe_progress: float = F(0.5, "…needs the later epochs this fraction below the first step's loss, not "
                                    "flat_min_progress: BCCD at 100× its lr blew up 5.3× and crawled back to 38% "
                                    "below, where it stayed (mAP 0.017 against the healthy run's 0.306; healthy "
                                    "BCCD: 56-68% below by the 4th-10th epoch, and never above the start).",
                                    ge=0, lt=1, live=True)
    gap_min_evals: int = F(4, "Evaluations needed before the 'far' test of the train/val gap (val lags early: on "
                           "healthy runs it stays flat for the first 3-4 evals while train falls 25%); it "
                           "compares the first half of all evals with the last half.",
                           ge=2, le=1000, live=True)
    gap_ratio: float = F(1.5, "Train/val gap: latest val raw loss at least this many times the train raw loss.",
                         gt=1, le=100, live=True)
    gap_train_min_drop: float = F(0.10, "Train/val gap: train raw loss must have fallen at least this fraction "
                                  "from the first half of the evals to the last.", gt=0, lt=1, live=True)
    gap_val_rise: float = F(0.05, "Train/val gap, rising: each of the last two val raw losses at least this "
                            "fraction above the best val loss before them while the train loss fell (healthy runs: "
                            "≤ +1.2% after their val started falling; shifted val: +6% to +20% within one eval "
                            "of rising ≥ 5% over its first evals).", gt=0, le=10,
                            live=True)
    gap_val_frac: float = F(0.25, "Train/val gap: val loss fell less than this fraction of the train loss's "
                            "relative fall (flat, oscillating or rising val loss).", ge=0, lt=1, live=True)
    shape_epochs: int = F(5, "Complete epochs (from the 2nd) before the shape-loss rule judges; it compares the "
                          "first half of all epochs since the 2nd with the last half (per-step loss_shape "
                          "varies ±20%; a healthy loss_shape can pause for 3 epochs: a 3-epoch window misfired "
                          "on 3 of 6 healthy runs, a 4-epoch one on a healthy demo run whose shape loss "
                          "paused in epochs 2–4 and fell 17% in the 5th).",
                          ge=2, le=1000, live=True)
    shape_max_drop: float = F(0.08, "Shape loss stuck: loss_shape fell less than this fraction over the window "
                              "and since the 2nd epoch (healthy runs: ≥ 15% since the 2nd epoch by the 6th).",
                              gt=0, lt=1, live=True)
    shape_others_min_drop: float = F(0.15, "…while loss_map and loss_offset fell at least this fraction on "
                                     "average (healthy demo: 22% from the 2nd to the 4th epoch).", gt=0, lt=1, live=True)
    rsr_min: int = F(3000, "Fewest random train samples for a stable RSR metric.", zh="RANDOM_SAMPLE_NUM",
                     note="3000: below that the metric was very unstable", ge=1, live=True)
    headroom_max_used: float = F(0.5, "Batch-size headroom: peak memory used below this fraction of the device "
                                 "means at least twice the batch fits.", gt=0, lt=1, live=True)
    headroom_fill: float = F(0.8, "Target memory fill when proposing a larger batch (room for fragmentation).",
                             gt=0, lt=1, live=True)
    budget_min_lines: int = F(20, "Train lines needed before projecting the run's duration (first steps are "
                              "slow: warm caches, data loading).", ge=2, le=100000, live=True)
    negative_tol: float = F(1e-6, "A branch loss below −tol counts as negative (float rounding below).",
                            ge=0, le=1, live=True)
    explode_ratio: float = F(10.0, "Exploding gradient: the median gradient norm of the last explode_window "
                             "lines exceeds this many times the lowest epoch median (healthy demo: 1.4×).",
                             gt=1, le=1e6, live=True)
    explode_window: int = F(50, "Train lines in the exploding-gradient window.", ge=5, le=100000, live=True)
    spike_factor: float = F(2.0, "Loss spike: a raw train loss above this many times the median of the "
                            "previous spike_ref lines (healthy demo max: 1.29×).", gt=1, le=1000, live=True)
    spike_ref: int = F(20, "Lines in the causal median a spike is measured against.", ge=5, le=10000,
                       live=True)
    spike_window: int = F(200, "Recent train lines in which spikes are counted.", ge=10, le=100000, live=True)
    spike_min_count: int = F(3, "Spikes in the window before the rule fires (one spike is a bad batch).",
                             ge=1, le=10000, live=True)
    dead_max: float = F(0.5, "Dead activations: a layer with more than this fraction of units never active on "
                        "a batch.", gt=0, le=1, live=True)
    plateau_evals: int = F(5, "Val plateau: evaluations without a new best mAP.", ge=2, le=1000, live=True)
    errors_from: float = F(0.5, "Rules that read the detector's errors (TIDE kinds) judge evaluations from this "
                           "fraction of the run on: early evaluations are loose by nature.", gt=0, le=1, live=True)
    errors_evals: int = F(3, "…and fire when this many evaluations in a row show the error…", ge=2, le=100,
                          live=True)
    errors_min_gain: float = F(0.02, "…while AP50 rose less than this fraction over them (still climbing: the "
                               "error is being learned away; healthy demo: +2.5% over its last three).", ge=0,
                               le=1, live=True)
    error_min_delta: float = F(0.03, "An error kind counts when fixing it would gain at least this much AP50 and "
                               "it is the largest kind.", gt=0, lt=1, live=True)
    loc_ap75_ratio: float = F(0.45, "Localisation-bound: AP75 / AP50 below this (boxes found but loosely fitted; a "
                              "15-minute run on a set of few large objects: 0.27; BCCD, healthy: 0.7).", gt=0,
                              lt=1, live=True)
    loc_min_ap50: float = F(0.2, "Localisation-bound: only once AP50 reaches this (the boxes are found). Below it the "
                            "run has not learned to find the objects and its loose boxes say nothing of the shape "
                            "branch (BCCD at 100× its lr: AP50 0.06, AP75 0.003).", ge=0, lt=1, live=True)
    plateau_min_delta: float = F(0.005, "Val plateau: a new best must beat the old by this much mAP "
                                 "(64-image demo evals move by ~0.002 from noise).", ge=0, le=1, live=True)
    ema_drift_ratio: float = F(3.0, "EMA drift: epoch-median ema_l2 (EMA↔online weight distance, the notes' "
                               "retention metric) above this many times its lowest epoch median since the 2nd "
                               "epoch, counting only epochs after the EMA decay ramp settled (890 steps at 0.99): "
                               "while it ramps, ema_l2 grows by design (real runs: up to 3.6× at lr 0.001, 3.0× "
                               "at lr 0.01).", gt=1, le=1e6, live=True)
