"""Training: the loop, its budget, planning for the data and the machine, distributed runs."""
