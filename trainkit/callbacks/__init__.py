"""Lightning callbacks trainkit adds to every run (preemption, resume checks, ...)."""
