"""Studies of the trainer: scaling sweeps and their report, the communication model,
benchmarks against the hardware's floor, and their plots.

Nothing on the training path imports from here; these modules start training runs as
separate jobs (launch.run_job) and read what the runs wrote (result.Result, history.csv).
"""
