"""Training engine: tasks own their step, the loop owns everything else."""
