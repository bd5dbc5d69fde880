"""The run folder and its record: paths (rundir), private or group access, typed events, the one writer
(recorder), checkpoints, ownership and the control channel (runctl), detached jobs, the journal, devices and
data-parallel groups."""
