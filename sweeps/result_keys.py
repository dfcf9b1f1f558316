"""The keys of the results a trial reports to Tune beyond its metrics: sweeps.worker writes them, the Tune callbacks
(sweeps.callbacks) and the driver (sweeps.runner) read them. A trial's last report is its final one only when it
carries DONE; a trial that recorded its own user error ends without one.
"""

DONE = "hdmap_done"  # the trial finished and its rows are in the store
TRIAL_ID = "hdmap_trial_id"  # with DONE: the trial's id in the store (Tune's own trial ids change between runs)
DISK_FULL = "hdmap_disk_full"  # instead of DONE: the disk is full, the line that names it; the driver stops the run
